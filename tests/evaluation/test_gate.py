"""`deepbandit gate` on simulated logs with known truth: it passes a truly better policy, refuses a truly worse
one and one whose support the logs lack, and its paired lift agrees with the two values."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from test_report import dataset  # noqa: F401  (the module's simulated dataset fixture)

import deepbandit.cli.gate as cli
from deepbandit.data.logs import contexts_from_impressions
from deepbandit.errors import ConfigError
from deepbandit.evaluation.baselines import logged_rows, one_hot, uniform_action_dist
from deepbandit.evaluation.estimators import IPS, SNIPS, estimate_all, estimate_lift
from deepbandit.evaluation.evaluate import read_dataset
from deepbandit.evaluation.gate import GateSettings, run_gate
from deepbandit.evaluation.targets import TargetPolicy


def config(*overrides):
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        return compose("gate", overrides=list(overrides))


def _write_policy(table: pa.Table, dist: np.ndarray, path):
    lengths = [len(c) for c in table.column("candidate_image_ids").to_pylist()]
    rows = [d[:k].tolist() for d, k in zip(dist, lengths, strict=True)]
    pq.write_table(pa.table({"request_id": table.column("request_id"), "action_dist": rows}), path)
    return path


@pytest.fixture(scope="module")
def policies(dataset, tmp_path_factory):  # noqa: F811
    """Parquet files of the oracle (truly better than the softmax logging policy: 0.217 vs 0.184 on these
    logs) and of the uniform policy (truly worse: 0.149)."""
    out = tmp_path_factory.mktemp("policies")
    table, _, _, world = read_dataset(dataset)
    rows = logged_rows(table)
    oracle = world.oracle_action(contexts_from_impressions(table), rows.candidate_ids)
    return {
        "oracle": _write_policy(table, one_hot(oracle, rows.candidate_ids.shape[1]), out / "oracle.parquet"),
        "uniform": _write_policy(table, uniform_action_dist(rows.candidate_mask), out / "uniform.parquet"),
    }


@pytest.mark.parametrize("estimator", ["snips", "ips", "dr"])
def test_the_gate_passes_a_truly_better_policy(dataset, policies, tmp_path, estimator):  # noqa: F811
    result = cli.run(config(f"dataset={dataset}", f"candidate={policies['oracle']}", f"out_dir={tmp_path}",
                            f"estimator={estimator}", "n_bootstrap=300"))  # fmt: skip
    assert result["passed"], result["checks"]
    assert result["lift"]["lower"] > 0 and result["lift"]["lift"] > result["lift"]["lower"]
    saved = json.loads((tmp_path / "gate.json").read_text())
    assert saved["passed"] and "PASS" in (tmp_path / "gate.md").read_text()


def test_the_gate_refuses_a_truly_worse_policy_and_says_why(dataset, policies, tmp_path):  # noqa: F811
    result = cli.run(config(f"dataset={dataset}", f"candidate={policies['uniform']}", f"out_dir={tmp_path}",
                            "n_bootstrap=300"))  # fmt: skip
    assert not result["passed"]
    lift = next(c for c in result["checks"] if c["check"] == "lift")
    assert not lift["passed"] and "not above" in lift["detail"]
    assert result["lift"]["lift"] < 0
    md = (tmp_path / "gate.md").read_text()
    assert "FAIL" in md and "not above" in md


def test_the_gate_against_a_named_incumbent_and_a_margin(dataset, policies, tmp_path):  # noqa: F811
    # oracle against uniform: true lift 0.068; a margin of 0.5 cannot be cleared
    base = [f"dataset={dataset}", f"candidate={policies['oracle']}", f"incumbent={policies['uniform']}",
            f"out_dir={tmp_path}", "n_bootstrap=300"]  # fmt: skip
    assert cli.run(config(*base))["passed"]
    refused = cli.run(config(*base, "min_lift=0.5"))
    assert not refused["passed"] and "incumbent diagnostics" in [c["check"] for c in refused["checks"]]


def test_the_command_exits_1_on_refusal(dataset, policies, tmp_path, monkeypatch):  # noqa: F811
    import sys

    monkeypatch.setattr(sys, "argv", ["deepbandit gate", f"dataset={dataset}", f"candidate={policies['uniform']}",
                                      f"out_dir={tmp_path}", "n_bootstrap=100", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1


def _without_one_candidate(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The logs as if the logging policy had never shown one non-chosen candidate of every row with three or
    more (its probability moved pro rata onto the others, the propensities adjusted to match); returns the
    table and the position of the candidate never shown (-1 where none)."""
    rows = logged_rows(table)
    dist = rows.logging_action_dist.copy()
    n, width = dist.shape
    k = rows.candidate_mask.sum(axis=1)
    hidden = np.where(k >= 3, (rows.action + 1) % k, -1)
    has = hidden >= 0
    dist[np.flatnonzero(has), hidden[has]] = 0.0
    dist /= dist.sum(axis=1, keepdims=True)
    action_dist = [d[:m].tolist() for d, m in zip(dist, k, strict=True)]
    table = table.set_column(table.schema.get_field_index("action_dist"), "action_dist",
                             pa.array(action_dist, pa.list_(pa.float64())))  # fmt: skip
    pscore = dist[np.arange(n), rows.action]
    return table.set_column(
        table.schema.get_field_index("propensity"), "propensity", pa.array(pscore)
    ), hidden


def test_the_gate_refuses_a_policy_whose_support_the_logs_lack(dataset):  # noqa: F811
    table, titles, images, _ = read_dataset(dataset)
    table, hidden = _without_one_candidate(table)
    rows = logged_rows(table)
    # half the mass on the logged image, half on the candidate the logs never show: the logged half alone
    # beats the logging policy's value on paper, but the other half is unseen
    dist = np.zeros(rows.candidate_ids.shape)
    dist[np.arange(len(rows)), rows.action] = 1.0
    has = hidden >= 0
    dist[np.flatnonzero(has), rows.action[has]] = 0.5
    dist[np.flatnonzero(has), hidden[has]] = 0.5
    candidate = TargetPolicy(lambda t: dist, "half on unshown candidates")
    with pytest.warns(UserWarning, match="never shows"):
        result = run_gate(table, candidate, GateSettings(n_bootstrap=100), titles=titles, images=images)
    assert not result["passed"]
    check = next(c for c in result["checks"] if c["check"] == "candidate diagnostics")
    assert not check["passed"] and "never show" in check["detail"]


def test_the_paired_lift_equals_the_difference_and_is_tighter(dataset, policies):  # noqa: F811
    table, *_ = read_dataset(dataset)
    rows = logged_rows(table)
    oracle = pq.read_table(policies["oracle"]).column("action_dist").to_pylist()
    width = rows.candidate_ids.shape[1]
    cand = np.array([d + [0.0] * (width - len(d)) for d in oracle])
    inc = uniform_action_dist(rows.candidate_mask)
    arrays = dict(
        reward=rows.reward, action=rows.action, pscore=rows.pscore, candidate_mask=rows.candidate_mask
    )
    lift = estimate_lift(SNIPS(), candidate_dist=cand, incumbent_dist=inc, interval="normal", one_sided=False,
                         **arrays)  # fmt: skip
    alone = {n: estimate_all([SNIPS()], action_dist=d, interval="normal", **arrays)["snips"]
             for n, d in (("cand", cand), ("inc", inc))}  # fmt: skip
    assert lift.lift == pytest.approx(alone["cand"].value - alone["inc"].value, abs=1e-15)
    # both values weigh the same rows: positively correlated, so the paired se is below the independent one
    assert lift.se < np.hypot(alone["cand"].se, alone["inc"].se)
    on_policy = estimate_lift(IPS(), candidate_dist=cand, interval="bootstrap", n_bootstrap=200, **arrays)
    assert on_policy.incumbent_value == pytest.approx(rows.reward.mean(), abs=1e-15)
    assert on_policy.upper == np.inf and on_policy.lower < on_policy.lift


def test_gate_settings_fail_clearly():
    with pytest.raises(ConfigError, match="estimator must be one of"):
        GateSettings(estimator="dm").check()
    with pytest.raises(ConfigError, match="snips is a ratio"):
        GateSettings(interval="bernstein").check()
    with pytest.raises(ConfigError, match="alpha must be in"):
        GateSettings(alpha=0.7).check()
