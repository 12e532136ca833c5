"""The quickstart's first command, `deepbandit pipeline`, runs every step end to end (tiny sizes)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module

from deepbandit.cli import pipeline


@pytest.mark.slow
def test_pipeline_runs_every_step_and_writes_every_artefact(tmp_path):
    overrides = [
        "n_impressions=6000",
        "serve_requests=500",
        f"out_dir={tmp_path}",
        'simulate=["world=tiny","logging_policy=epsilon_greedy","progress=false"]',
        'train=["model=small","uncertainty=ensemble","uncertainty.n_members=2","policy=thompson",'
        '"trainer.max_epochs=1","trainer.logger=none","trainer.progress=false"]',
        'evaluate=["plots=false","n_bootstrap=20","train_fraction=0.8"]',
    ]
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        result = pipeline.run(compose("pipeline", overrides=overrides))

    assert result["validate"]["rows_quarantined"] == 0
    assert (tmp_path / "train" / "model.pt").is_file()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report  # the evaluation wrote its machine-readable report
    assert (tmp_path / "export" / "model.onnx").is_file() and (
        tmp_path / "export" / "manifest.json"
    ).is_file()
    served = result["serve"]
    assert served["requests"] == 500 and served["decided"] + served["errors"] == 500
    assert served["errors"] == 0
    assert 0 < served["mean_propensity"] <= 1
    assert served["propensity_kind"] == "exact"  # Thompson over ensemble members: exact shares
