"""Training through real command lines in child processes: DDP over 2 CPU processes, and a Hydra sweep
ranked by sweep-report. Both need fresh interpreters (Lightning's DDP launcher re-runs its script in each
child; Hydra's multirun owns the process), so they run as subprocesses, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from deepbandit.sim.simulator import simulate
from deepbandit.training.ddp_check import TOLERANCE


@pytest.fixture(scope="module")
def tiny_logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(
            "simulate",
            overrides=["world=tiny", "logging_policy=epsilon_greedy", "n_impressions=6000", f"out_dir={out}",
                       "progress=false", "seed=1"],
        )  # fmt: skip
    simulate(OmegaConf.to_object(cfg))
    return out


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    # one thread per process: 2 DDP ranks on a 2-core machine must not oversubscribe it
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "250"}  # wide tables
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tiny_logs, tmp_path):
    result = _run(
        [sys.executable, "-m", "deepbandit.training.ddp_check", str(tiny_logs), str(tmp_path), "2"], tmp_path
    )
    line = next(json.loads(s) for s in result.stdout.splitlines() if s.startswith("{"))
    assert line["processes"] == 2
    assert line["global_step"][0] == line["global_step"][1] > 0, line
    assert line["max_abs_diff"] <= TOLERANCE, line
    # both runs really trained: the DDP run wrote its own checkpoint, not a copy of the single one
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "single" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_sweep_from_the_command_line_then_sweep_report_ranks_its_runs(tiny_logs, tmp_path):
    sweep_dir = tmp_path / "multirun"
    _run(
        [
            sys.executable, "-m", "deepbandit.cli.main", "train", "-m", f"data.path={tiny_logs}",
            "model=small", "model.hidden=8,16", "loss.clip=10,100", "trainer.max_epochs=1",
            "trainer.batch_size=512", "trainer.progress=false", "trainer.logger=csv",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )  # fmt: skip
    metrics = sorted(sweep_dir.rglob("metrics.json"))
    assert len(metrics) == 4, metrics
    # the default loss (unweighted regression) never reads loss.clip: every run's log says so
    logs = [(p.parent / "train.log").read_text() for p in metrics]
    assert all("loss.clip=10.0 has no effect" in t or "loss.clip=100.0 has no effect" in t for t in logs), (
        logs
    )
    overrides = set()
    for path in metrics:
        m = json.loads(path.read_text())
        assert (
            m["val"]["val/snips_greedy_lower"]
            <= m["val"]["val/snips_greedy"]
            <= m["val"]["val/snips_greedy_upper"]
        )
        assert (path.parent / "model.pt").is_file()
        overrides.add((path.parent / ".hydra" / "overrides.yaml").read_text())
    assert len(overrides) == 4  # every combination of the two swept options ran once

    report = _run([sys.executable, "-m", "deepbandit.cli.main", "sweep-report", str(sweep_dir)], tmp_path)
    values = [json.loads(p.read_text())["best_score"] for p in metrics]
    best = max(values)
    assert f"{best:.4f}" in report.stdout
    # the table lists runs best first: the best value's row comes before every other value's row
    rows = [line for line in report.stdout.splitlines() if "model.hidden=" in line]
    assert len(rows) == 4 and f"{best:.4f}" in rows[0], report.stdout


def _even_batches_on_two_ranks(tmp_path, rows: list[list[int]]) -> list[dict]:
    """Spawn two gloo ranks streaming batches of ``rows[r]`` rows through EvenBatches; their reports."""
    import torch.multiprocessing as mp

    from deepbandit.training.ddp_check import even_batches_worker

    context = mp.start_processes(
        even_batches_worker, args=(2, str(tmp_path / "init"), rows, str(tmp_path)), nprocs=2, join=False,
        start_method="spawn",
    )  # fmt: skip
    # No wall clock here: a rank left waiting in an all-reduce the other never joins fails by gloo's own
    # collective timeout (the worker's process group), and join() raises when a rank exits with an error.
    while not context.join():
        pass
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_streaming_ranks_with_unequal_shards_stop_at_the_same_step(tmp_path):
    out = _even_batches_on_two_ranks(tmp_path, [[64, 64, 64, 64, 10], [64, 64, 30]])
    assert out[0]["stepped"] == [64, 64, 64] and out[1]["stepped"] == [64, 64, 30]
    assert (out[0]["skipped_batches"], out[0]["skipped_rows"]) == (2, 74)
    assert (out[1]["skipped_batches"], out[1]["skipped_rows"]) == (0, 0)


def test_streaming_ddp_with_an_empty_shard_fails_clearly(tmp_path):
    import torch.multiprocessing as mp

    # one row group for two processes: rank 1 has nothing to stream
    with pytest.raises(
        mp.ProcessRaisedException, match="at least one rank's shard of the training split is empty"
    ):
        _even_batches_on_two_ranks(tmp_path, [[64, 64], []])
