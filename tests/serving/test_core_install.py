"""`pip install deepbandit` (no extras) serves an exported model: a fresh virtual environment with the core
alone (numpy, pyarrow, onnxruntime; no torch, Lightning or Hydra) loads the committed tiny export and decides
for the committed requests. It installs from the package index, as a serving image would."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_EXPORT = Path(__file__).resolve().parent / "tiny_export"  # deepbandit export of a 1-epoch tiny model

SERVE = """
import importlib.util, sys
import numpy as np, pyarrow.parquet as pq
from deepbandit.serving import ArtworkService

export = sys.argv[1]
requests = pq.read_table(f"{export}/requests.parquet")
service = ArtworkService.from_dir(export, providers=["CPUExecutionProvider"])
decisions = service.decide(requests, rng=np.random.default_rng(0))
logged = service.to_impressions(decisions)
missing = [m for m in ("torch", "lightning", "hydra") if importlib.util.find_spec(m) is None]
print(int(decisions.ok.sum()), requests.num_rows, float(np.min(decisions.propensity)), logged.num_rows, missing)
"""


@pytest.mark.slow
def test_the_core_install_alone_serves_the_committed_export(tmp_path):
    env = tmp_path / "core"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    # pip builds in the source folder: build a copy, so that the test writes nothing into the checkout
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "deepbandit", "conf"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(
            REPO / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    done = subprocess.run([python, "-c", SERVE, str(TINY_EXPORT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ok, rows, min_propensity, logged, missing = done.stdout.strip().split(" ", 4)
    assert ok == rows == logged == "64", done.stdout
    assert 0 < float(min_propensity) <= 1, done.stdout
    assert missing == "['torch', 'lightning', 'hydra']", "the core install pulled in a training dependency"
    # the console script says which extra a training command needs, in two lines, exit code 2
    cli = subprocess.run([env / "bin" / "deepbandit", "train"], capture_output=True, text=True)
    assert cli.returncode == 2 and "pip install 'deepbandit[train]'" in cli.stderr, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 2, cli.stderr
