"""The export manifest: everything serving needs to turn raw requests into graph inputs, in one JSON file.

The same keys (all but ``files``, whose hashes would include the graph itself) are stored as JSON strings
in the ONNX file's ``metadata_props``, so a lone ``model.onnx`` still says what it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepbandit.atomic import write_text_atomic
from deepbandit.data.features import FEATURE_TRANSFORMS
from deepbandit.data.schema import MAX_CANDIDATES, MAX_HISTORY, SCHEMA_VERSION
from deepbandit.errors import ConfigError
from deepbandit.export.graph import OPSET, input_specs, noise_spec, output_specs
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import PAD_LOGIT

MANIFEST_VERSION = 1


def build_manifest(
    bundle: ModelBundle,
    files: dict[str, Path],
    policy: dict[str, Any],
    parity: list[dict[str, Any]],
    *,
    max_history: int | None = None,
    model_name: str = "artwork_scorer",
) -> dict[str, Any]:
    """The manifest dict (JSON-serialisable); ``files`` is filled with hashes by the exporter."""
    import deepbandit

    meta = bundle.meta
    if max_history is None:
        max_history = int(meta.get("max_history", MAX_HISTORY))
    if not 1 <= max_history <= MAX_HISTORY:
        raise ConfigError(f"max_history must be in 1..{MAX_HISTORY}, got {max_history}")
    return {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": SCHEMA_VERSION,
        "package_version": deepbandit.__version__,
        "model_name": model_name,
        "opset": OPSET,
        "inputs": input_specs(bundle),
        # model_precomputed.onnx (when exported): the image tower's outputs stored, image indices taken
        "precomputed_inputs": input_specs(bundle, precomputed=True) if "model_precomputed" in files else None,
        "outputs": output_specs(bundle),
        # neural-linear: the graph's extra input of standard-normal noise, one row per posterior draw
        "posterior_noise": noise_spec(bundle),
        "pad_logit": PAD_LOGIT,
        "max_history": max_history,
        "max_candidates": MAX_CANDIDATES,
        "embedding_dim": bundle.model_cfg.embedding_dim,
        "member_features_dim": bundle.model_cfg.member_features_dim,
        "vocabularies": bundle.vocabs.to_dict(),
        "feature_transforms": FEATURE_TRANSFORMS,
        "model_config": asdict(bundle.model_cfg),
        "uncertainty_config": asdict(bundle.uncertainty_cfg),
        "policy": policy,
        "train_window": meta.get("train_window"),
        "metrics": meta.get("metrics", {}),
        "bundle_meta": meta,
        "parity": parity,
        "files": {k: {"path": p.name} for k, p in files.items()},
    }


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically as indented JSON."""
    return write_text_atomic(path, json.dumps(manifest, indent=1))
