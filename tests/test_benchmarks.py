"""The benchmark scripts still run end to end (tiny sizes, as subprocesses) and record the machine.

Their numbers are measured by running them, not here: these tests only keep them from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, out: Path, *args: str) -> dict:
    cmd = [sys.executable, str(SCRIPTS / script), *args, "--out", str(out)]
    # no timeout: the work is bounded by the sizes passed, and a busy machine is only slower
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"], report["machine"]
    return report


@pytest.mark.slow
def test_bench_train_times_every_case_in_its_own_process(tmp_path):
    report = _run("bench_train.py", tmp_path / "t.json", "--rows", "1500", "--steps", "2", "--batch", "256",
                  "--precision", "32-true", "--repeats", "1")  # fmt: skip
    cases = {(r["model"], r["path"], r["packed"], r["batch"]) for r in report["results"]}
    k1, k10 = "K=1 (default model)", "K=10 ensemble"
    # 2 models x 2 loaders, the padded reference of each, Lightning beside the bare loop at 256 and 64
    assert cases == {(m, path, True, 256) for m in (k1, k10) for path in ("resident", "dataloader")} | {
        (k1, "resident", False, 256), (k10, "resident", False, 256), (k1, "lightning", True, 256),
        (k1, "resident", True, 64), (k1, "lightning", True, 64),
    }  # fmt: skip
    for r in report["results"]:
        assert r["impressions_per_s"] > 0 and r["impressions_per_cpu_s"] > 0 and r["steps"] == 2, r
        assert r["rows"] == (3 + 2) * r["batch"], r  # warm-up and timed steps, full batches only
        assert r["padded_candidates"] > r["mean_candidates"], r  # the default world's mix has padding
        if r["path"] != "lightning":
            assert r.get("peak_rss_growth_mb", r.get("peak_cuda_allocated_mb")) is not None, r
    assert set(report["ratios"]["packed_over_padded"]) == {k1, k10}
    assert set(report["ratios"]["lightning_over_bare"]) == {"batch 64", "batch 256"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "key"),
    [
        ("bench_data.py", ["--sizes", "1000"], "runs"),
        ("bench_evaluation.py", ["--rows", "5000", "--n-bootstrap", "3"], "results"),
        ("bench_evaluation.py", ["--rows", "5000", "--value-only", "--repeats", "1"], "value_over_numpy"),
        ("bench_serving.py", ["--sizes", "1", "16", "--seconds", "0.05", "--no-gpu"], "cpu"),
        (
            "bench_wheel.py",
            [
                "--n",
                "200",
                "--requests-per-round",
                "100",
                "--deltas",
                "0.5",
                "--seeds",
                "0",
                "--agents",
                "random",
                "linucb",
                "deep_greedy",
                "--steps-per-round",
                "2",
            ],
            "runs",
        ),
        (
            "bench_learning.py",
            ["--settings", "quickstart", "--n-impressions", "3000", "--train", "trainer.max_epochs=1"],
            "results",
        ),
    ],
)
def test_other_benchmarks_run_and_record_the_machine(tmp_path, script, args, key):
    extra = ["--work", str(tmp_path / "work")] if script in ("bench_wheel.py", "bench_learning.py") else []
    assert _run(script, tmp_path / "b.json", *args, *extra)[key]
