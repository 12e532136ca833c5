"""Policy values keep their significant digits at any scale, with the baselines beside them."""

from __future__ import annotations

import math

from rich.console import Console

from deepbandit.cli.train import metrics_table
from deepbandit.formatting import decimals_for, fmt


def test_decimals_follow_the_scale_of_the_largest_value():
    assert decimals_for([0.3145, 0.2531]) == 4
    assert decimals_for([0.0018, 0.0021, None, math.nan]) == 6  # click rates: 0.001800, not 0.0018
    assert decimals_for([12.5]) == 2
    assert decimals_for([None, 0.0]) == 4
    assert fmt(0.00183, decimals_for([0.00183])) == "0.001830"
    assert fmt(None, 4) == "—" and fmt(math.nan, 4) == "—"


def test_train_table_prints_click_rates_with_digits_and_the_logging_baseline():
    # OBD-like: no truth, click rates near 0.002
    metrics = {
        "rows": {"val": 12_000},
        "val": {"val/snips_greedy": 0.00241, "val/snips_greedy_lower": 0.0012, "val/snips_greedy_upper": 0.0036,
                "val/dr_greedy": 0.00233, "val/calibration_mean_reward": 0.00183},
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(metrics_table(metrics, policy="greedy"))
    text = console.export_text()
    assert "0.002410 [0.001200, 0.003600]" in text and "0.002330" in text
    assert "logging policy (observed)" in text and "0.001830" in text
    assert "0.0000" not in text
