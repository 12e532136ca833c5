"""``export_bundle``: a trained ``ModelBundle`` -> the ONNX graph (``export.graph``), the image table, the
manifest (``export.manifest``) after the parity check (``export.parity``), an fp16 variant, a Triton
repository (``export.triton``). docs/export-and-serving.md describes the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepbandit.atomic import atomic_file
from deepbandit.data.layout import checked_name, file_sha256
from deepbandit.data.schema import (
    EXPORT_IMAGES_FILE,
    EXPORT_MODEL_FILE,
    EXPORT_MODEL_FP16_FILE,
    EXPORT_MODEL_PRECOMPUTED_FILE,
    MANIFEST_FILE,
)
from deepbandit.errors import ConfigError
from deepbandit.export.graph import embed_metadata, export_graph, noise_spec
from deepbandit.export.manifest import build_manifest, write_manifest
from deepbandit.export.parity import FP16_ATOL, FP32_ATOL, check_parity
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.uncertainty import capabilities
from deepbandit.policies.config import PolicyConfig


def serving_policy(
    bundle: ModelBundle, policy: PolicyConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``make_policy`` spec to serve: ``policy`` (a PolicyConfig, or a spec dict as the manifest stores
    it), else the training run's (``bundle.meta["policy"]``), else greedy. Thompson becomes the model's
    posterior kind over every member (all K members give exact propensities; ``n_samples`` is not used).

    Raises ConfigError for Thompson on a model whose posterior is not exported (not an ensemble).
    """
    if policy is None:
        policy = PolicyConfig.from_spec(bundle.meta.get("policy") or {"name": "greedy"})
    offers = capabilities(bundle.uncertainty_cfg)
    if isinstance(policy, PolicyConfig):
        spec = policy.spec(offers.thompson_kind)
    else:  # a spec as make_policy takes it: missing fields keep the policy's own defaults
        spec = dict(policy)
        if spec.get("name") == "thompson":
            spec.setdefault("kind", offers.thompson_kind)
    if spec.get("name") == "thompson" and not offers.exported_posterior:
        raise ConfigError(
            f"policy thompson is served for ensembles and neural-linear models only; this model's uncertainty is "
            f"{bundle.uncertainty_cfg.kind!r} (see deepbandit/export/graph.py): export with "
            "policy=greedy, epsilon_greedy or softmax"
        )
    from deepbandit.policies import make_policy

    fields = dict(spec)
    make_policy(fields.pop("name"), **fields)  # fail now, not in the serving process
    return spec


@dataclass
class ExportResult:
    """Paths written by :func:`export_bundle` and the parity report (see ``export.parity``)."""

    out_dir: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    parity: list[dict[str, Any]] = field(default_factory=list)


def export_bundle(
    bundle: ModelBundle,
    out_dir: str | os.PathLike,
    *,
    policy: PolicyConfig | dict[str, Any] | None = None,
    fp16: bool = False,
    triton: bool = False,
    model_name: str = "artwork_scorer",
    max_batch_size: int = 16384,
    parity_batch_sizes: tuple[int, ...] = (1, 7, 512),
    parity_candidates: tuple[int, ...] = (1, 25, 64),
    max_history: int | None = None,
    fold_constants: bool = True,
    precomputed: bool = True,
) -> ExportResult:
    """Export ``bundle`` to ``out_dir``: model.onnx (+ model_fp16.onnx), model_precomputed.onnx (the image
    tower's outputs for the catalogue stored in the graph; ``precomputed``), images.npy, manifest.json,
    optionally the Triton repository ``triton/<model_name>/``. Runs the parity check first and refuses
    to write a manifest for a graph that disagrees with torch (``parity.check_parity`` raises).

    policy: the serving policy, a PolicyConfig or its spec {"name": ..., **fields};
    None: the training run's (``bundle.meta["policy"]``, see :func:`serving_policy`), else greedy.
    max_history: history entries kept per request (default: bundle.meta or the contract's MAX_HISTORY).
    fold_constants: see ``export_graph`` (False: the weights stay replaceable in a serving session).
    """
    checked_name(model_name, "model_name")  # triton/<model_name>/ must stay inside out_dir
    if triton and noise_spec(bundle):
        raise ConfigError(
            f"triton=true: Triton's dynamic batching needs every input to lead with the batch axis, and this "
            f"{bundle.uncertainty_cfg.kind} model's posterior_noise input (samples, P) does not; serve it "
            "through deepbandit.serving.ArtworkService, or export without triton"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = serving_policy(bundle, policy)
    # an older manifest must not describe the files about to be replaced (nor survive a failed parity)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    files = {"model": export_graph(bundle, out / EXPORT_MODEL_FILE, fold_constants=fold_constants)}
    images = out / EXPORT_IMAGES_FILE
    with atomic_file(images) as sink:
        np.save(sink, bundle.image_embedding.numpy().astype(np.float32))
    files["images"] = images
    model = bundle.build_model()
    parity = check_parity(
        model, bundle, files["model"], parity_batch_sizes, parity_candidates, atol=FP32_ATOL, label="fp32"
    )
    if precomputed:
        path = out / EXPORT_MODEL_PRECOMPUTED_FILE
        files["model_precomputed"] = export_graph(bundle, path, precomputed=True)
        parity += check_parity(model, bundle, path, parity_batch_sizes, parity_candidates, atol=FP32_ATOL,
                               label="fp32 precomputed", precomputed=True)  # fmt: skip
    if fp16:
        files["model_fp16"] = export_graph(bundle, out / EXPORT_MODEL_FP16_FILE, fp16=True)
        parity += check_parity(
            model,
            bundle,
            files["model_fp16"],
            (1, 7),
            (1, 25),
            atol=FP16_ATOL,
            label="fp16",
            same_choice=False,
        )
    manifest = build_manifest(bundle, files, policy, parity, max_history=max_history, model_name=model_name)
    for key in ("model", "model_fp16", "model_precomputed"):
        if key in files:
            embed_metadata(files[key], {k: v for k, v in manifest.items() if k != "files"})
    manifest["files"] = {k: {"path": p.name, "sha256": file_sha256(p)} for k, p in files.items()}
    write_manifest(manifest, out / MANIFEST_FILE)
    files["manifest"] = out / MANIFEST_FILE
    if triton:
        from deepbandit.export.triton import write_triton_repository

        files["triton"] = write_triton_repository(
            files["model"], manifest, out / "triton", model_name, max_batch_size=max_batch_size
        )
    return ExportResult(out, manifest, files, parity)
