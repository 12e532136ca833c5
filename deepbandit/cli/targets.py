"""Target policies from paths, for `deepbandit evaluate` and `deepbandit gate`: a model bundle, an ONNX export
folder served as in production, a Parquet table of action distributions, or the word ``uniform``.

Here, in the command layer, because an export is run through ``deepbandit.serving`` (which sits above
evaluation); the evaluation layer sees only ``TargetPolicy``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.data.layout import MANIFEST_FILE
from deepbandit.errors import ConfigError, DataError
from deepbandit.evaluation.targets import Target, TargetOutput, TargetPolicy, table_policy


def export_policy(export_dir: str | os.PathLike, policy: dict | None = None, seed: int = 0) -> Target:
    """An ONNX export folder served as in production (``ArtworkService``: the manifest's policy unless
    ``policy``): its action distribution and its predicted reward probabilities."""
    from deepbandit.serving import ArtworkService

    service = ArtworkService.from_dir(export_dir, policy=policy)
    where = str(export_dir)

    def run(table: pa.Table) -> TargetOutput:
        rng = np.random.default_rng(seed)
        dists, rewards = [], []
        width = int(pc.max(pc.list_value_length(table.column("candidate_image_ids"))).as_py())
        for start in range(0, table.num_rows, 8192):
            out = service.decide(table.slice(start, 8192), rng=rng)
            if out.errors:
                pos, why = min(out.errors.items())
                raise DataError(
                    f"{where}: the export cannot decide evaluated row {start + pos} ({len(out.errors)} such "
                    f"rows in this batch): {why}"
                )
            pad = ((0, 0), (0, width - out.action_dist.shape[1]))
            dists.append(np.pad(out.action_dist, pad))
            real = (
                np.isfinite(out.scores)
                & (out.action_dist >= 0)
                & (np.arange(out.scores.shape[1]) < out.batch.n_candidates[:, None])
            )
            prob = np.zeros(out.scores.shape)
            prob[real] = 1 / (1 + np.exp(-out.scores[real].astype(np.float64)))
            rewards.append(np.pad(prob, pad))
        return TargetOutput(np.concatenate(dists), np.concatenate(rewards))

    return run


UNIFORM = "uniform"


def target_from_path(path: str, images: pa.Table | None, seed: int = 0) -> TargetPolicy:
    """A bundle (``*.pt``), an export folder (holding manifest.json) or a Parquet table of action
    distributions, told apart by what the path holds; the word ``uniform`` is the uniformly random policy
    (a logging policy that is often one of several, see ``logging_policies``)."""
    if path == UNIFORM:
        from deepbandit.data.logs import candidates_from_impressions
        from deepbandit.evaluation.baselines import uniform_action_dist

        def uniform(table: pa.Table) -> np.ndarray:
            return uniform_action_dist(candidates_from_impressions(table)[1])

        return TargetPolicy(uniform, "uniform over each row's candidates")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"target policy {path}: no such file or folder")
    if p.is_dir() and (p / MANIFEST_FILE).is_file():
        return TargetPolicy(export_policy(p, seed=seed), f"export {path}")
    if p.is_file() and p.suffix == ".pt":
        from deepbandit.evaluation.model_policy import BundleScorer

        scorer = BundleScorer.from_path(p, images, seed=seed)

        def greedy(table: pa.Table) -> TargetOutput:
            from deepbandit.data.logs import candidates_from_impressions
            from deepbandit.policies import make_policy

            _, mask = candidates_from_impressions(table)
            q = scorer(table).expected_reward[:, : mask.shape[1]]
            return TargetOutput(make_policy("greedy").action_dist(q, mask), q)

        return TargetPolicy(greedy, f"bundle {path} (greedy)")
    if p.suffix == ".parquet" or p.is_dir():
        return TargetPolicy(table_policy(p), f"action distributions {path}")
    raise ConfigError(
        f"target policy {path}: expected a model bundle (.pt), an export folder (with {MANIFEST_FILE}) or a "
        "Parquet table of request_id and action_dist"
    )
