"""Batched decisions from an export folder: raw requests -> features -> onnxruntime -> policy -> decisions.

    service = ArtworkService.from_dir("export/")                 # policy from the manifest
    out = service.decide(requests, rng=np.random.default_rng(0))  # list of dicts or a pyarrow Table
    out.chosen_image_id, out.propensity, out.errors               # errors: {request position: message}
    impressions = service.to_impressions(out)                     # log-contract table (reward null)

Needs numpy and onnxruntime only (pyarrow is imported lazily, for Arrow input and ``to_impressions``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepbandit.data.layout import MANIFEST_FILE, MIN_PROPENSITY, inside
from deepbandit.data.vocab import Vocab
from deepbandit.errors import DataError
from deepbandit.policies import Policy, Thompson, make_policy
from deepbandit.serving.features import (
    ImageIndex,
    RequestBatch,
    build_inputs,
    from_arrow,
    from_dicts,
    validate,
)
from deepbandit.serving.session import OnnxSession


@dataclass
class ServingDecisions:
    """Decisions for a batch of B requests (A = widest good request); rows in ``errors`` hold
    action/chosen_image_id -1, propensity NaN, scores NaN and an all-zero action_dist.

    ok (B,) bool; action (B,) int64 position in the request's candidate_image_ids; chosen_image_id (B,)
    int64; propensity (B,) float64; action_dist (B, A) float64 aligned with candidate_image_ids;
    scores (B, A) float32 point logits (PAD_LOGIT on padding); propensity_kind str; errors
    {position: message}; timestamp_us (B,) int64 (request time, or the decision time where absent);
    batch: the parsed requests (for ``to_impressions``).
    """

    ok: np.ndarray
    action: np.ndarray
    chosen_image_id: np.ndarray
    propensity: np.ndarray
    action_dist: np.ndarray
    scores: np.ndarray
    propensity_kind: str
    errors: dict[int, str]
    timestamp_us: np.ndarray
    batch: RequestBatch

    def __len__(self) -> int:
        return len(self.ok)


class ArtworkService:
    """Scores and decides batches of requests with an exported model (see module docstring).

    Built from ``from_dir``; ``add_images(ids, embeddings)`` makes images launched after the export
    scoreable (content only: they get the "unknown" image index for the hashed id embedding).
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        session: OnnxSession,
        embeddings: np.ndarray,
        policy: Policy,
        precomputed_session: OnnxSession | None = None,
    ):
        self.manifest = manifest
        self.session = session
        # model_precomputed.onnx: the image tower's outputs for the export's catalogue stored in the graph;
        # batches of catalogue images only go to it (the same scores, less work per candidate)
        self.precomputed_session = precomputed_session
        self.precomputed_names = list(manifest["precomputed_inputs"]) if precomputed_session else None
        self.catalogue_rows = len(embeddings)
        self.policy = policy
        self.vocabs = {n: Vocab.from_dict(v) for n, v in manifest["vocabularies"].items()}
        self.images = ImageIndex(self.vocabs["image"])
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.input_names = list(manifest["inputs"])
        self.max_history = int(manifest["max_history"])
        self.max_candidates = int(manifest["max_candidates"])
        self.member_features_dim = int(manifest["member_features_dim"])
        if isinstance(policy, Thompson) and "winners" not in manifest["outputs"]:
            raise ValueError(
                f"Thompson sampling needs the posterior's winners (an ensemble or neural-linear export); this "
                f"export ({manifest['uncertainty_config']['kind']}) has outputs {list(manifest['outputs'])}"
            )
        self.outputs = ["scores", "winners"] if isinstance(policy, Thompson) else ["scores"]
        # neural-linear: S rows of standard-normal noise per call drive the graph's S posterior draws
        self.noise = manifest.get("posterior_noise") if isinstance(policy, Thompson) else None
        self.n_draws = int(manifest["uncertainty_config"].get("n_samples", 16))
        if self.noise and policy.sticky:
            raise ValueError(
                "a sticky Thompson policy keys its draws by member and time window, but this neural-linear "
                "export draws its posterior noise per call; serve it without sticky_window_seconds"
            )

    @classmethod
    def from_dir(
        cls,
        export_dir: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        policy: Policy | dict[str, Any] | None = None,
        fp16: bool = False,
        intra_op_threads: int = 0,
        precomputed: bool = True,
    ) -> ArtworkService:
        """Load manifest.json, images.npy and model.onnx (model_fp16.onnx with ``fp16``) from
        ``export_dir``, and model_precomputed.onnx where the export has it (fp32, ``precomputed``).
        policy: a Policy, a {"name", **fields} dict, or None for the manifest's."""
        root = Path(export_dir)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_FILE} in {root} (write one with `deepbandit export`)")
        manifest = json.loads(path.read_text())
        key = "model_fp16" if fp16 else "model"
        if key not in manifest["files"]:
            raise FileNotFoundError(f"{path}: the export has no {key} file (export with fp16=true)")
        session = OnnxSession(_verified_bytes(root, manifest, key), providers, intra_op_threads)
        embeddings = np.load(io.BytesIO(_verified_bytes(root, manifest, "images")), allow_pickle=False)
        tower = None
        if precomputed and not fp16 and "model_precomputed" in manifest["files"]:
            tower = OnnxSession(
                _verified_bytes(root, manifest, "model_precomputed"), providers, intra_op_threads
            )
        if not isinstance(policy, Policy):
            spec = dict(policy if policy is not None else manifest["policy"])
            policy = make_policy(spec.pop("name"), **spec)
        return cls(manifest, session, embeddings, policy, tower)

    def add_images(self, ids: Any, embeddings: Any) -> None:
        """Make images scoreable that were not in the export: ids (N,) int64, embeddings (N, D) float32.

        Raises ValueError for ids already known (trained or added), repeated ids, a wrong width or
        non-finite values.
        """
        ids = np.asarray(ids, np.int64).ravel()
        emb = np.asarray(embeddings, np.float32)
        d = self.embeddings.shape[1]
        if emb.shape != (len(ids), d):
            raise ValueError(f"add_images: embeddings must have shape ({len(ids)}, {d}), got {emb.shape}")
        if not np.isfinite(emb).all():
            row = int(np.flatnonzero(~np.isfinite(emb).all(1))[0])
            raise ValueError(f"add_images: embedding of image {ids[row]} (row {row}) is not finite")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"add_images: image {uniq[counts > 1][0]} appears more than once")
        known = self.images.known(ids)
        if known.any():
            raise ValueError(f"add_images: image {ids[known][0]} already has an embedding")
        self.images.add(ids, len(self.embeddings))
        self.embeddings = np.concatenate([self.embeddings, emb])

    def parse(self, requests: Any) -> RequestBatch:
        """A list of dicts, a pyarrow Table/RecordBatch or a RequestBatch -> validated RequestBatch."""
        if isinstance(requests, RequestBatch):
            batch = requests
        elif isinstance(requests, list | tuple):
            batch = from_dicts(list(requests), self.member_features_dim)
        elif type(requests).__module__.startswith("pyarrow"):
            batch = from_arrow(requests, self.member_features_dim)
        else:
            raise TypeError(
                f"requests must be a list of dicts or a pyarrow Table, got {type(requests).__name__}"
            )
        validate(batch, self.max_candidates)
        return batch

    def decide(self, requests: Any, *, rng: np.random.Generator | None = None) -> ServingDecisions:
        """Decide every well-formed request of the batch; malformed ones get a message in ``errors``.

        rng: the generator of a non-sticky policy (default: a fresh unseeded one); sticky policies key
        their draws by (member_id, title_id, timestamp) and take none.
        """
        batch = self.parse(requests)
        now_us = time.time_ns() // 1000
        timestamp = batch.timestamp_us if batch.timestamp_us is not None else np.full(len(batch), now_us)
        graph = build_inputs(
            batch, self.vocabs, self.images, self.embeddings, self.input_names, self.max_history,
            precomputed_names=self.precomputed_names, catalogue_rows=self.catalogue_rows,
        )  # fmt: skip
        b, rows = len(batch), graph.rows
        a = graph.feeds["candidate_mask"].shape[1]
        action = np.full(b, -1, np.int64)
        chosen = np.full(b, -1, np.int64)
        propensity = np.full(b, np.nan)
        dist = np.zeros((b, a))
        scores = np.full((b, a), np.nan, np.float32)
        kind = (
            self.policy.propensity_kind(np.zeros((0, 1, 1))) if isinstance(self.policy, Thompson) else "exact"
        )
        if len(rows):
            rng = rng if rng is not None else np.random.default_rng()
            feeds = graph.feeds
            if self.noise:
                width = self.noise["shape"][1]
                feeds = {**feeds, "posterior_noise": rng.standard_normal((self.n_draws, width), np.float32)}
            session = self.precomputed_session if graph.precomputed else self.session
            out = session.run(feeds, self.outputs)
            mask = graph.feeds["candidate_mask"]
            x = out["winners"] if "winners" in out else out["scores"]
            if self.policy.sticky:
                d = self.policy.decide(
                    x,
                    mask,
                    member_id=batch.member_id[rows],
                    title_id=batch.title_id[rows],
                    timestamp=timestamp[rows] // 1_000_000,
                )
            else:
                d = self.policy.decide(x, mask, rng=rng)
            action[rows], propensity[rows], dist[rows] = d.action, d.propensity, d.action_dist
            chosen[rows] = batch.candidate_ids[batch.candidate_offsets[rows] + d.action]
            scores[rows] = out["scores"]
            kind = d.propensity_kind
        ok = np.zeros(b, bool)
        ok[rows] = True
        return ServingDecisions(
            ok, action, chosen, propensity, dist, scores, kind, dict(batch.errors), timestamp, batch
        )

    def to_impressions(
        self, decisions: ServingDecisions, request_ids: Any = None, logging_policy: str | None = None
    ) -> Any:
        """The decided requests (errors left out) as an impressions table of the log contract
        (``IMPRESSIONS_SCHEMA`` plus action_dist, propensity_kind and member_features when the model
        has them), reward null. request_ids (B,) str, else the requests' request_id, else fresh ids
        ``<uuid4>-<position>``. ``logging_policy``: a name for this policy, written on every row, for logs
        that several policies write in turn (balanced IPS/DR tell them apart by it)."""
        import pyarrow as pa

        from deepbandit.data.schema import IMPRESSIONS_SCHEMA, OPTIONAL_IMPRESSION_FIELDS

        batch, rows = decisions.batch, np.flatnonzero(decisions.ok)
        fresh = np.char.add(f"{uuid.uuid4().hex}-", np.arange(len(batch)).astype(np.str_))
        if request_ids is None:
            request_ids = batch.request_id
        if request_ids is None:
            request_ids = fresh
        request_ids = np.asarray(request_ids, np.str_)
        if request_ids.shape != (len(batch),):
            raise ValueError(f"request_ids must have shape ({len(batch)},), got {request_ids.shape}")
        request_ids = np.where(request_ids == "", fresh, request_ids)  # requests that came without one
        logged = request_ids[rows]
        uniq, counts = np.unique(logged, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"to_impressions: request_id {uniq[counts > 1][0]!r} appears more than once")
        low = decisions.propensity[rows] < MIN_PROPENSITY
        if low.any():
            i = int(np.flatnonzero(low)[0])
            raise ValueError(
                f"to_impressions: request {logged[i]!r} was decided with propensity "
                f"{decisions.propensity[rows][i]:.3g}, below the log contract's floor {MIN_PROPENSITY:g} "
                f"({int(low.sum())} such requests); serve a policy with an exploration floor (epsilon_greedy, "
                "or a softmax at a higher temperature)"
            )

        def lists(values: np.ndarray, offsets: np.ndarray, dtype: pa.DataType) -> pa.Array:
            lengths = np.diff(offsets)[rows]
            starts = offsets[:-1][rows]
            take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(
                lengths.sum()
            )
            new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            return pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(values[take], dtype))

        n_cand = batch.n_candidates[rows]
        a = decisions.action_dist.shape[1]
        valid = np.arange(a) < n_cand[:, None]
        dist_offsets = np.concatenate([[0], np.cumsum(n_cand)]).astype(np.int32)
        columns = {
            "request_id": pa.array(request_ids[rows], pa.string()),
            "timestamp": pa.array(decisions.timestamp_us[rows], pa.timestamp("us", tz="UTC")),
            "member_id": pa.array(batch.member_id[rows], pa.int64()),
            "title_id": pa.array(batch.title_id[rows], pa.int64()),
            "candidate_image_ids": lists(batch.candidate_ids, batch.candidate_offsets, pa.int64()),
            "chosen_image_id": pa.array(decisions.chosen_image_id[rows], pa.int64()),
            "propensity": pa.array(decisions.propensity[rows], pa.float64()),
            "reward": pa.nulls(len(rows), pa.float64()),
            "played_title_ids": lists(batch.played_ids, batch.played_offsets, pa.int64()),
            "country": pa.array(batch.country[rows], pa.string()),
            "language": pa.array(batch.language[rows], pa.string()),
            "device": pa.array(batch.device[rows], pa.string()),
            "hour": pa.array(batch.hour[rows].astype(np.int8), pa.int8()),
            "weekday": pa.array(batch.weekday[rows].astype(np.int8), pa.int8()),
            "recommender_score": pa.array(batch.recommender_score[rows].astype(np.float32), pa.float32()),
            "prior_interaction": pa.array(batch.prior_interaction[rows] != 0, pa.bool_()),
            "action_dist": pa.ListArray.from_arrays(
                pa.array(dist_offsets), pa.array(decisions.action_dist[rows][valid], pa.float64())
            ),
            "propensity_kind": pa.array(np.full(len(rows), decisions.propensity_kind), pa.string()),
        }
        fields = list(IMPRESSIONS_SCHEMA) + [
            f for f in OPTIONAL_IMPRESSION_FIELDS if f.name not in ("member_features", "logging_policy")
        ]
        if logging_policy is not None:
            columns["logging_policy"] = pa.array(np.full(len(rows), logging_policy), pa.string())
            fields.append(next(f for f in OPTIONAL_IMPRESSION_FIELDS if f.name == "logging_policy"))
        if batch.member_features is not None:
            fmat = batch.member_features[rows]
            columns["member_features"] = pa.ListArray.from_arrays(
                pa.array(np.arange(len(rows) + 1, dtype=np.int32) * fmat.shape[1]),
                pa.array(fmat.ravel(), pa.float32()),
            )
            fields.append(next(f for f in OPTIONAL_IMPRESSION_FIELDS if f.name == "member_features"))
        schema = pa.schema(fields, metadata=IMPRESSIONS_SCHEMA.metadata)
        return pa.table([columns[f.name] for f in fields], schema=schema)


def _verified_bytes(root: Path, manifest: dict[str, Any], key: str) -> bytes:
    """The bytes of the manifest's file ``key``, read once: its path must stay inside the export folder and
    its SHA-256 must match the manifest's, so a tampered or swapped file is refused before it is used."""
    where = f"{root / MANIFEST_FILE} files.{key}"
    entry = manifest["files"].get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise DataError(f"{where}: no sha256 recorded; re-export the model with `deepbandit export`")
    path = inside(root, entry.get("path"), f"{where}.path")
    if not path.is_file():
        raise FileNotFoundError(f"{where}.path: {path} does not exist")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(
            f"{where}: {path.name} does not match the manifest's sha256 (changed or corrupted since export); "
            "re-export, or restore the exported file"
        )
    return data
