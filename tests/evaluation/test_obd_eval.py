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
