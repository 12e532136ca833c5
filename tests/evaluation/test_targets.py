"""Target policies from a table, a callable, a bundle and an export folder; reward models; diagnostics;
every estimator through the command and its report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import config, dataset, make_bundle  # noqa: F401  (the module's simulated dataset fixture)

import deepbandit.cli.evaluate as cli
from deepbandit.data.logs import candidates_from_impressions
from deepbandit.errors import ConfigError, DataError
from deepbandit.evaluation.baselines import logged_rows, uniform_action_dist
from deepbandit.evaluation.diagnostics import DiagnosticThresholds, weight_diagnostics
from deepbandit.evaluation.evaluate import ESTIMATORS, EvaluationSettings, evaluate_rows, read_dataset
from deepbandit.evaluation.report import EXPLAIN


def _uniform_table(table: pa.Table, path, scale: float = 1.0):
    n_cand = [len(c) for c in table.column("candidate_image_ids").to_pylist()]
    dist = [[scale / k] * k for k in n_cand]
    pq.write_table(pa.table({"request_id": table.column("request_id"), "action_dist": dist}), path)
    return path


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_through_the_command_and_the_report(dataset, tmp_path, estimator):  # noqa: F811
    cfg = config(f"dataset={dataset}", f"out_dir={tmp_path}", f"estimators=[snips,{estimator}]" if estimator != "snips"
                 else "estimators=[snips]", "n_bootstrap=20", "segments=[prior_interaction]",
                 f"segment_estimator={estimator if estimator != 'replay' else 'snips'}")  # fmt: skip
    result = cli.run(cfg)
    report = (tmp_path / "report.md").read_text()
    assert estimator.upper() in report and EXPLAIN[estimator] in report
    for name in ("random", "unpersonalised"):
        assert estimator in result["policies"][name]["estimates"]
    segment = result["segments"]["prior_interaction"]["True"]["policies"]["random"]
    assert "value" in segment or "error" in segment
    for png in ("policy_values.png", "segment_lift.png", "per_image.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_a_table_of_action_distributions_is_a_target(dataset, tmp_path):  # noqa: F811
    table, *_ = read_dataset(dataset)
    path = _uniform_table(table, tmp_path / "uniform.parquet")
    result = cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"+targets.mine={path}",
                            "interval=normal", "plots=false", "segments=[]"))  # fmt: skip
    mine, rnd = result["policies"]["mine"], result["policies"]["random"]
    for name in ("ips", "snips", "dm", "dr", "sndr"):
        assert mine["estimates"][name]["value"] == pytest.approx(rnd["estimates"][name]["value"], abs=1e-12)
    assert mine["true_value"] == pytest.approx(rnd["true_value"], abs=1e-12)
    assert "mine" in (tmp_path / "report.md").read_text()


def test_a_bad_table_of_action_distributions_names_the_request(dataset, tmp_path):  # noqa: F811
    table, *_ = read_dataset(dataset)
    bad = _uniform_table(table, tmp_path / "bad.parquet", scale=0.9)
    with pytest.raises(
        DataError, match=r"bad.parquet: action_dist of request_id 'sim0-0' is not a probability"
    ):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"+targets.mine={bad}", "plots=false"))
    short = tmp_path / "short.parquet"
    pq.write_table(table.select(["request_id"]).slice(1).append_column(
        "action_dist", pa.array([[1.0]] * (table.num_rows - 1))), short)  # fmt: skip
    with pytest.raises(DataError, match=r"no action_dist for request_id 'sim0-0' \(1 of 20000"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"+targets.mine={short}", "plots=false"))
    with pytest.raises(ValueError, match="names a built-in policy"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"+targets.random={bad}", "plots=false"))


def test_a_callable_target_and_the_python_api(dataset):  # noqa: F811
    table, titles, images, world = read_dataset(dataset)
    rows = logged_rows(table)

    def first_candidate(t: pa.Table) -> np.ndarray:
        width = max(len(c) for c in t.column("candidate_image_ids").to_pylist())
        out = np.zeros((t.num_rows, width))
        out[:, 0] = 1.0
        return out

    settings = EvaluationSettings(estimators=("ips", "snips"), interval="normal", segments=())
    result = evaluate_rows(table, titles, settings, targets={"first": first_candidate}, world=world,
                           images=images)  # fmt: skip
    first = result["policies"]["first"]
    assert first["true_value"] is not None
    est = first["estimates"]["snips"]
    assert abs(est["value"] - first["true_value"]) < 4 * est["se"]
    assert result["n_eval_rows"] == len(rows)  # train_fraction 0: every row is evaluated


def test_bundle_and_export_folder_targets_agree_with_the_model_policy(dataset, tmp_path):  # noqa: F811
    from deepbandit.export.onnx_export import export_bundle
    from deepbandit.models.bundle import ModelBundle

    bundle = make_bundle(dataset, tmp_path / "model.pt", "none")
    export_bundle(ModelBundle.load(bundle), tmp_path / "export", triton=False, parity_batch_sizes=(3,),
                  parity_candidates=(4,))  # fmt: skip
    result = cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"bundle={bundle}",
                            f"+targets.as_bundle={bundle}", f"+targets.as_export={tmp_path / 'export'}",
                            "interval=normal", "plots=false", "segments=[]", "reward_model=logistic"))  # fmt: skip
    pol = result["policies"]
    for name in ("as_bundle", "as_export"):
        assert pol[name]["true_value"] == pytest.approx(pol["model"]["true_value"], abs=1e-6), name
        assert pol[name]["estimates"]["snips"]["value"] == pytest.approx(
            pol["model"]["estimates"]["snips"]["value"], abs=1e-6
        )
    assert result["reward_model"] == "logistic"


def test_the_logistic_reward_model_beats_take_rates_on_the_truth(dataset, tmp_path):  # noqa: F811
    # DM of the uniform and unpersonalised policies against their true values: the context-aware model is closer
    errors = {}
    for kind in ("logistic", "take_rates"):
        result = cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", f"reward_model={kind}",
                                "estimators=[dm,dr]", "plot_estimator=dm", "interval=normal", "plots=false", "segments=[]"))  # fmt: skip
        pol = result["policies"]
        errors[kind] = sum(
            abs(pol[p]["estimates"]["dm"]["value"] - pol[p]["true_value"])
            for p in ("random", "unpersonalised")
        )
        rnd = pol["random"]
        assert abs(rnd["estimates"]["dr"]["value"] - rnd["true_value"]) < 4 * rnd["estimates"]["dr"]["se"]
        assert result["notes"]["reward_model"].startswith(kind)
        assert "cross-fitted over 5 folds" in result["notes"]["reward_model"]
    assert errors["logistic"] < errors["take_rates"], errors
    assert any("take_rates reward model" in w for w in result["warnings"])


def test_the_window_is_applied_and_reported(dataset, tmp_path):  # noqa: F811
    result = cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", "window_start=2024-01-08",
                            "window_end=2024-01-10T12:00:00Z", "plots=false", "segments=[]",
                            "estimators=[snips]", "interval=normal"))  # fmt: skip
    assert result["window"]["first"] >= "2024-01-08" and result["window"]["last"] < "2024-01-10T12"
    assert 0 < result["n_eval_rows"] < 20_000
    assert "window [2024-01-08, 2024-01-10T12:00:00Z)" in result["notes"]["window"]
    with pytest.raises(DataError, match="no row in the window"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", "window_start=2030-01-01", "plots=false"))
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", "window_start=yesterday", "plots=false"))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["run"]["seconds"] > 0 and saved["reward_name"] == "quality play"


def test_weight_diagnostics_name_heavy_rows_and_floors():
    n = 1000
    pscore = np.full(n, 0.1)
    pscore[7] = 1e-6  # a floor: a zero Monte Carlo count
    pi = np.full(n, 0.1)
    ids = np.array([f"r{i}" for i in range(n)])
    diag = weight_diagnostics(pscore, pi, np.full(n, 10), ids, 0.0, DiagnosticThresholds())
    assert diag["heaviest_rows"][0]["request_id"] == "r7" and diag["top_weight_share"] > 0.98
    assert diag["ess"] < 2 and diag["floor_propensity_rows"] == 1
    text = " ".join(diag["warnings"])
    assert "effective sample size" in text and "r7 (99%)" in text and "look like floors" in text
    # the same floor, never picked by the policy, costs it nothing
    pi[7] = 0.0
    quiet = weight_diagnostics(pscore, pi, np.full(n, 10), ids, 0.0, DiagnosticThresholds())
    assert quiet["warnings"] == [] and quiet["ess"] == pytest.approx(n - 1)


def test_logging_policies_are_checked_against_the_logged_propensities(dataset, tmp_path):  # noqa: F811
    from deepbandit.evaluation.targets import TargetPolicy, table_policy

    table, titles, images, _ = read_dataset(dataset)
    table = table.append_column("logging_policy", pa.array(["softmax"] * table.num_rows))
    own = tmp_path / "own.parquet"  # the logging policy's own distributions, as its team would export them
    pq.write_table(table.select(["request_id", "action_dist"]), own)
    settings = EvaluationSettings(estimators=("ips", "balanced_ips", "balanced_dr"), interval="normal",
                                  segments=(), reward_model="take_rates")  # fmt: skip
    result = evaluate_rows(table, titles, settings, images=images,
                           logging_policies={"softmax": TargetPolicy(table_policy(own), "own")})  # fmt: skip
    est = result["policies"]["random"]["estimates"]
    # one logging policy: its mixture is itself, so balanced IPS is IPS
    assert est["balanced_ips"]["value"] == pytest.approx(est["ips"]["value"], abs=1e-12)
    assert "value" in est["balanced_dr"]
    wrong = {
        "softmax": TargetPolicy(lambda t: uniform_action_dist(candidates_from_impressions(t)[1]), "uniform")
    }
    with pytest.raises(
        DataError, match=r"row 0 \(request_id sim0-0\) was logged by 'softmax' with propensity"
    ):
        evaluate_rows(table, titles, settings, images=images, logging_policies=wrong)
    with pytest.raises(DataError, match="names 'softmax', which is not among logging_policies"):
        evaluate_rows(table, titles, settings, images=images, logging_policies={"other": wrong["softmax"]})


def test_estimators_outside_their_assumptions_are_warned_about(dataset):  # noqa: F811
    table, titles, images, _ = read_dataset(dataset)
    kinds = ["mc_estimate:64" if i % 4 == 0 else "exact" for i in range(table.num_rows)]
    table = table.set_column(
        table.schema.get_field_index("propensity_kind"), "propensity_kind", pa.array(kinds)
    )
    settings = EvaluationSettings(estimators=("snips", "mips"), interval="normal", segments=(),
                                  reward_model="take_rates")  # fmt: skip
    warned = evaluate_rows(table, titles, settings, images=images)["warnings"]
    assert any("5,000 of 20,000 rows log a Monte Carlo estimate" in w and "64 draws" in w for w in warned), (
        warned
    )
    assert any(w.startswith("mips on rows with") for w in warned), warned  # about 6 candidates a row here


def test_dm_intervals_can_include_the_reward_models_fitting_noise(dataset, tmp_path):  # noqa: F811
    base = [
        f"dataset={dataset}",
        f"out_dir={tmp_path}",
        "estimators=[snips,dm]",
        "plots=false",
        "segments=[]",
    ]
    fixed = cli.run(config(*base))["policies"]
    refit = cli.run(config(*base, "reward_model_bootstrap=8"))
    for name in ("random", "unpersonalised"):
        f, r = fixed[name]["estimates"]["dm"], refit["policies"][name]["estimates"]["dm"]
        assert r["value"] == f["value"] and r["method"] == "reward_model_refits"
        # refitting adds the model's own noise: measured 12x wider on these logs
        assert r["upper"] - r["lower"] > 3 * (f["upper"] - f["lower"]), (name, f, r)
    assert "refits of the reward model" in refit["notes"]["reward_model_uncertainty"]
    with pytest.raises(ConfigError, match="reward_model_bootstrap must be 0"):
        cli.run(config(*base, "reward_model_bootstrap=1"))
