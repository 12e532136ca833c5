"""`deepbandit evaluate` end to end on a simulated dataset: report files, true values, config checks."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

import deepbandit.cli.evaluate as cli
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    world = WorldConfig(n_members=400, n_titles=40, n_genres=6, n_themes=8, n_cast=60, embedding_dim=8,
                        countries=["US", "BR", "FR", "JP"], unpersonalised_samples=128)  # fmt: skip
    simulate(SimulateConfig(world=world, n_impressions=20_000, progress=False), out)
    return out


def config(*overrides):
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def test_report_files_and_truth(dataset, tmp_path):
    cfg = config(f"dataset={dataset}", f"out_dir={tmp_path}", "interval=normal")
    result = cli.run(cfg)
    for name in ("report.md", "report.json", "policy_values.png", "profile_scores.png", "segment_lift.png",
                 "per_image.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert (
        saved["policies"]["random"]["estimates"]["snips"]["value"]
        == result["policies"]["random"]["estimates"]["snips"]["value"]
    )
    pol = saved["policies"]
    for name in ("random", "unpersonalised"):
        e, truth = pol[name]["estimates"]["snips"], pol[name]["true_value"]
        assert abs(e["value"] - truth) < 4 * e["se"], (name, e["value"], truth)
    assert pol["oracle"]["true_value"] > pol["unpersonalised"]["true_value"] > pol["random"]["true_value"]
    assert set(saved["segments"]) == {"prior_interaction", "device", "country"}
    assert "Policy values" in (tmp_path / "report.md").read_text()


def test_config_typo_and_bad_values_fail(dataset, tmp_path):
    with pytest.raises(ConfigCompositionException):
        config(f"dataset={dataset}", "n_bootstrapp=3")
    with pytest.raises(ValueError, match="unknown estimator"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", "estimators=[ipz,snips]"))
    with pytest.raises(ValueError, match="segment column 'nope'"):
        cli.run(config(f"dataset={dataset}", f"out_dir={tmp_path}", "segments=[nope]", "interval=normal"))


def make_bundle(dataset, path, kind: str):
    """An untrained scorer saved as a bundle: enough to check the model path end to end."""
    from deepbandit.data.io import read_images, read_titles
    from deepbandit.data.tensors import ImageTable, title_genre_matrix
    from deepbandit.data.vocab import FeatureVocabs
    from deepbandit.models.bundle import ModelBundle
    from deepbandit.models.encoders import ModelConfig
    from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer

    images, titles = read_images(dataset / "images.parquet"), read_titles(dataset / "titles.parquet")
    vocabs = FeatureVocabs.build(dataset / "impressions", images=images, titles=titles)
    genres = title_genre_matrix(titles, vocabs)
    emb = ImageTable.from_table(images, vocabs.image).embedding
    v = vocabs
    cfg = ModelConfig(n_titles=len(v.title) - 2, n_countries=len(v.country) - 2, n_languages=len(v.language) - 2,
                      n_devices=len(v.device) - 2, n_images=len(v.image) - 2, n_genres=genres.shape[1],
                      embedding_dim=emb.shape[1], id_dim=4, tower_dim=8, hidden_dim=8, head_dim=8)  # fmt: skip
    unc = UncertaintyConfig(kind=kind, n_members=3)
    torch.manual_seed(0)
    model = build_scorer(cfg, unc, genres)
    return ModelBundle.from_model(model, cfg, unc, vocabs, emb, genres).save(path)


@pytest.mark.parametrize(("kind", "policy"), [("none", "greedy"), ("ensemble", "thompson")])
def test_model_bundle_policy(dataset, tmp_path, kind, policy):
    bundle = make_bundle(dataset, tmp_path / "model.pt", kind)
    cfg = config(f"dataset={dataset}", f"out_dir={tmp_path}", f"bundle={bundle}", f"model_policy={policy}",
                 "interval=normal", "segments=[prior_interaction]", "plots=false")  # fmt: skip
    result = cli.run(cfg)
    model = result["policies"]["model"]
    assert model["policy"] == policy and model["true_value"] is not None
    assert "model" in result["per_image"]["agreement_with_unpersonalised"]
    assert "model" in result["segments"]["prior_interaction"]["True"]["policies"]
    assert result["notes"]["reward_model"].startswith("model")
    for name, e in model["estimates"].items():
        assert "value" in e, (name, e)
    assert not (tmp_path / "policy_values.png").exists()


def test_model_scores_narrower_than_the_dataset_are_padded_to_its_width():
    # A scorer pads the evaluated rows to their own widest row; the widest rows may all lie in the
    # training part (a crash on small datasets before).
    import numpy as np

    from deepbandit.evaluation.evaluate import ModelScores, _to_width

    scores = ModelScores(np.full((2, 3), 0.5), np.ones((2, 4, 3)))
    wide = _to_width(scores, 5)
    assert wide.expected_reward.shape == (2, 5) and wide.posterior_samples.shape == (2, 4, 5)
    assert (wide.expected_reward[:, 3:] == 0).all() and (wide.expected_reward[:, :3] == 0.5).all()
    assert _to_width(scores, 3) is scores
