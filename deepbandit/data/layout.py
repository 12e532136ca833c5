"""File names of a dataset folder and of an export folder: defined once, here, with no dependency (serving
names its files without importing pyarrow), and the checks on names and paths that come from configs and
manifests (stdlib only)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from deepbandit.errors import ConfigError, DataError

# Dataset directory layout: <root>/impressions/ (a file or hive-partitioned folder of Parquet files),
# <root>/images.parquet, <root>/titles.parquet, and for simulated data <root>/world.npz + truth.json.
IMPRESSIONS_DIR = "impressions"
IMAGES_FILE = "images.parquet"
TITLES_FILE = "titles.parquet"
WORLD_FILE = "world.npz"  # simulated datasets: the world's ground truth (deepbandit.sim.world.World)
TRUTH_FILE = "truth.json"  # simulated datasets: the true value of each reference policy
# Written by deepbandit's dataset writers: "complete": false while they run, then the files they wrote
# (rows, bytes, sha256). Its leading '_' keeps readers from taking it for data.
DATASET_RECORD_FILE = "_deepbandit_dataset.json"

# Export folder layout: written by deepbandit.export, read by deepbandit.serving (the manifest lists the files).
MANIFEST_FILE = "manifest.json"
EXPORT_MODEL_FILE = "model.onnx"
EXPORT_MODEL_FP16_FILE = "model_fp16.onnx"
EXPORT_MODEL_PRECOMPUTED_FILE = "model_precomputed.onnx"  # the image tower's outputs for the catalogue stored
EXPORT_IMAGES_FILE = "images.npy"  # not the dataset's images.parquet: the embeddings the graph reads


# Bounds of the log contract that serving checks too (here, so that serving needs no pyarrow):
# The smallest propensity accepted. Below it an importance weight exceeds 1e9: one row would outweigh a
# billion others, and squared weights (variances, the IPS loss) overflow float32. Such values are almost
# always a floor written for a zero Monte Carlo count; the row is refused (quarantine keeps it aside).
MIN_PROPENSITY = 1e-9
# Timestamps accepted: from the Unix epoch up to (excluding) 2262-01-01, where nanosecond clocks (pandas,
# numpy datetime64[ns]) end; anything outside is a unit mix-up (seconds read as microseconds) or a typo.
MIN_TIMESTAMP_US = 0
MAX_TIMESTAMP_US = 9_214_646_400_000_000  # 2262-01-01T00:00:00Z, exclusive


# --- names and paths that come from configs, manifests or data ----------------------------------------
# A path named by a file (a manifest's file list) or by an option that names one folder (a Triton model
# name) must stay where it belongs: these checks are the one place that says so.

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def checked_name(name: object, what: str) -> str:
    """``name`` if it is one plain path component (letters, digits, '.', '_', '-'; not starting with '.' or
    '-'; at most 128 characters), else ConfigError naming ``what``: it becomes a folder or file name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what}={name!r}: must be one plain name (letters, digits, '.', '_', '-'; no '/' or '..', "
            "not starting with '.' or '-', at most 128 characters), since it names a folder or file"
        )
    return name


def inside(root: str | os.PathLike, relative: object, what: str) -> Path:
    """``root / relative`` if it resolves (symlinks followed) to a path inside ``root``, else DataError
    naming ``what``: a file list from a manifest or config must not reach outside its folder."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise DataError(f"{what}: {relative!r} is not a relative path inside {root}")
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or path == base:
        raise DataError(f"{what}: {relative!r} points outside {root}; refused")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
