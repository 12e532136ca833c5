"""Tiny worlds and environments several test modules build (plain functions: parametrize lists need them at
collection time, before fixtures exist). ``tests/`` is on the path through pytest's ``pythonpath``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from deepbandit.loop.environments import ClassificationEnvironment
from deepbandit.sim.world import WorldConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny_world() -> WorldConfig:
    """conf/world/tiny.yaml as a WorldConfig."""
    return WorldConfig(**yaml.safe_load((CONF / "world" / "tiny.yaml").read_text()))


def blobs(seed: int = 0, n: int = 600, classes: int = 4, dim: int = 6) -> ClassificationEnvironment:
    """A classification environment of Gaussian blobs: one arm per class, reward 1 for the right one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(0.0, 3.0, (classes, dim))
    return ClassificationEnvironment(centres[labels] + rng.normal(size=(n, dim)), labels, name="blobs")
