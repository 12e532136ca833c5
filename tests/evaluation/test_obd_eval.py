"""Open Bandit Dataset sample end to end: the uniform policy's value from the Bernoulli-TS logs vs the
on-policy take rate of the uniform-random logs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deepbandit.data.io import open_impressions
from deepbandit.data.obd import import_obd
from deepbandit.evaluation.baselines import logged_rows, on_policy_value, uniform_action_dist
from deepbandit.evaluation.estimators import IPS, SNIPS, estimate_all

SOURCE = Path(os.environ.get("DEEPBANDIT_OBD_DIR", Path(__file__).parents[3] / "shared" / "data" / "obd"))


@pytest.mark.skipif(not (SOURCE / "bts" / "all").exists(), reason=f"OBD sample not found at {SOURCE}")
def test_uniform_policy_from_bts_logs_matches_random_logs(tmp_path):
    for policy in ("bts", "random"):
        import_obd(SOURCE, policy, "all", tmp_path / policy)
    bts = logged_rows(open_impressions(tmp_path / "bts" / "impressions").to_table())
    rnd = logged_rows(open_impressions(tmp_path / "random" / "impressions").to_table())
    assert (bts.candidate_mask.sum(axis=1) == 80).all()  # every item is a candidate on every row
    res = estimate_all(
        [IPS(), SNIPS()], reward=bts.reward, action=bts.action, pscore=bts.pscore,
        action_dist=uniform_action_dist(bts.candidate_mask), candidate_mask=bts.candidate_mask, interval="normal",
    )  # fmt: skip
    on = on_policy_value(rnd.reward)
    for e in res.values():
        assert e.lower < e.value < e.upper
        z = abs(e.value - on["value"]) / np.hypot(e.se, on["se"])
        assert z < 3, (e.estimator, e.value, e.se, on)


# OBP's IPW and SNIPW of the uniform-random policy on the Bernoulli-TS logs of each campaign (OBP's
# published 4-digit values: IPW 0.002360 / 0.003009 / 0.007438, SNIPW 0.002334 / 0.003189 / 0.002373), in
# full from OBP's formula: mean(click * (1 / n_items) / propensity_score) over the raw CSV's 10,000 rows.
OBP_UNIFORM_FROM_BTS = {
    "all": (0.0023596395168460037, 0.0023337138931618065),
    "men": (0.003008626327256482, 0.003189423162277403),
    "women": (0.00743757754192316, 0.0023730461434477677),
}


@pytest.mark.skipif(not (SOURCE / "bts" / "all").exists(), reason=f"OBD sample not found at {SOURCE}")
@pytest.mark.parametrize("campaign", sorted(OBP_UNIFORM_FROM_BTS))
def test_uniform_policy_values_equal_obps_for_every_campaign(tmp_path, campaign):
    import pyarrow.csv as csv
    from hydra import compose, initialize_config_module

    import deepbandit.cli.evaluate as cli

    raw = csv.read_csv(SOURCE / "bts" / campaign / f"{campaign}.csv")
    n_items = csv.read_csv(SOURCE / "bts" / campaign / "item_context.csv").num_rows
    click, pscore = raw.column("click").to_numpy().astype(float), raw.column("propensity_score").to_numpy()
    w = 1 / n_items / pscore
    ipw, snipw = OBP_UNIFORM_FROM_BTS[campaign]
    assert np.mean(click * w) == pytest.approx(ipw, abs=1e-15)  # the pins are OBP's formula on the raw file
    assert np.sum(click * w) / np.sum(w) == pytest.approx(snipw, abs=1e-15)

    import_obd(SOURCE, "bts", campaign, tmp_path / "data")
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"dataset={tmp_path / 'data'}", f"out_dir={tmp_path / 'report'}",
                                             "estimators=[ips,snips]", "segments=[]", "plots=false"])  # fmt: skip
    result = cli.run(cfg)
    assert result["n_eval_rows"] == 10_000 and result["reward_name"] == "click"
    uniform = result["policies"]["random"]["estimates"]
    assert uniform["ips"]["value"] == pytest.approx(ipw, abs=1e-12)
    assert uniform["snips"]["value"] == pytest.approx(snipw, abs=1e-12)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "clicks per impression" in report or "click" in report
    if campaign == "women":
        # one row carries propensity 1e-6 (a floor for a zero Monte Carlo count) and most of the weight
        weights = result["policies"]["random"]["weights"]
        assert weights["ess_fraction"] < 0.01 and weights["top_weight_share"] > 0.5
        assert any("effective sample size" in w for w in result["warnings"]), result["warnings"]
        assert weights["heaviest_rows"][0]["request_id"] in report
