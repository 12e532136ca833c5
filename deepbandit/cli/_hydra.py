"""Shared Hydra plumbing for the thin entry points.

Configs live in the top-level `conf/` folder, installed as the package `deepbandit.conf`, so that
`pkg://deepbandit.conf` finds them from an editable checkout and from an installed wheel alike.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig

CONFIG_PATH = "pkg://deepbandit.conf"
HYDRA_VERSION_BASE = "1.3"


def run_dir() -> Path:
    """The directory Hydra made for this run (outputs/<date>/<time> or the sweep's job folder)."""
    return Path(HydraConfig.get().runtime.output_dir)
