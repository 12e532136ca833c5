"""The Vowpal Wabbit ``cb_explore_adf`` agent: its pmf is a logged distribution with the exploration floor,
it learns a separable problem, it runs in the loop with valid logs, and it is skipped without VW."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from tiny import blobs, tiny_world

from deepbandit.data.validation import validate_table
from deepbandit.loop import loop as loop_module
from deepbandit.loop.environments import ArtworkEnvironment
from deepbandit.loop.loop import LoopConfig, run_loop
from deepbandit.loop.vw_agent import VWConfig


def make_agent(env, cfg: VWConfig, first):
    from deepbandit.loop.vw_agent import VowpalWabbitAgent

    return VowpalWabbitAgent(env, sorted(set(first.table.column("device").to_pylist())), cfg, seed=0)


@pytest.mark.parametrize("exploration", ["epsilon", "squarecb"])
def test_pmf_is_the_logged_distribution(exploration: str) -> None:
    pytest.importorskip("vowpalwabbit")
    env = ArtworkEnvironment(tiny_world(), 3000, seed=1)
    cfg = VWConfig(exploration=exploration, epsilon=0.2)
    first = env.next_requests(1500)
    agent = make_agent(env, cfg, first)
    d0 = agent.act(first, np.random.default_rng(0))
    agent.learn(first, d0, env.sample_rewards(first, d0.action))
    r = env.next_requests(1500)
    d = agent.act(r, np.random.default_rng(1))
    rows = np.arange(len(r))
    assert d.propensity_kind == "exact"
    assert np.allclose(d.action_dist.sum(axis=1), 1.0, atol=1e-12)
    assert (d.action_dist[~r.mask] == 0).all() and r.mask[rows, d.action].all()
    assert (d.propensity == d.action_dist[rows, d.action]).all()
    n_valid = r.mask.sum(axis=1)
    if exploration == "epsilon":
        # epsilon-greedy: every candidate keeps epsilon / n; the k tied greedy ones share 1 - epsilon
        floor = (cfg.epsilon / n_valid)[:, None]
        greedy = r.mask & ~np.isclose(d.action_dist, floor, rtol=1e-5, atol=0)
        k = greedy.sum(axis=1)
        assert (k >= 1).all()
        want = np.where(greedy, floor + (1 - cfg.epsilon) / np.maximum(k, 1)[:, None], floor)
        assert np.allclose(d.action_dist[r.mask], want[r.mask], rtol=1e-5, atol=0)
    # after one round of learning the pmf depends on the request, not only on the number of candidates
    assert not all(
        np.allclose(d.action_dist[n_valid == k], d.action_dist[n_valid == k][0]) for k in np.unique(n_valid)
    )


def test_learns_a_separable_problem() -> None:
    pytest.importorskip("vowpalwabbit")
    env = blobs()
    first = env.next_requests(400)
    agent = make_agent(env, VWConfig(epsilon=0.05), first)
    r = first
    for round_ in range(4):
        d = agent.act(r, np.random.default_rng(round_))
        agent.learn(r, d, env.sample_rewards(r, d.action))
        r = env.next_requests(400)
    d = agent.act(r, np.random.default_rng(9))
    # take rate of the last round vs 1/4 for a policy that learned nothing: 6 standard errors of the
    # Bernoulli(1/4) mean above it, and at most what epsilon-greedy can reach
    take = env.sample_rewards(r, d.action).mean()
    assert take > 0.25 + 6 * np.sqrt(0.25 * 0.75 / len(r)), take
    p_right = (d.action_dist * env.expected_rewards(r)).sum(axis=1)
    assert (p_right <= 1 - 0.05 + 0.05 / 4 + 1e-6).all()


def test_loop_runs_vw_with_valid_logs(tmp_path: Path) -> None:
    pytest.importorskip("vowpalwabbit")
    cfg = LoopConfig(
        world=tiny_world(),
        n_rounds=3,
        requests_per_round=1000,
        agents=["random", "vw"],
        plots=False,
        progress=False,
    )
    result = run_loop(cfg, out_dir=tmp_path)
    assert set(result["agents"]) == {"random", "vw"}
    table = result["logs"]["vw"]
    report = validate_table(table, "impressions", file="vw log")
    assert report.rows_quarantined == 0 and report.rows_kept == table.num_rows == 3000
    assert set(table.column("propensity_kind").to_pylist()) == {"exact"}
    dist = table.column("action_dist").combine_chunks()
    sums = pc.list_value_length(dist).to_numpy()
    assert (sums == pc.list_value_length(table.column("candidate_image_ids")).to_numpy()).all()
    # the logged propensity is the pmf's entry at the chosen image, and every pmf sums to 1
    cand = table.column("candidate_image_ids").to_pylist()
    picked = table.column("chosen_image_id").to_pylist()
    pmfs = dist.to_pylist()
    logged = [pmf[c.index(i)] for pmf, c, i in zip(pmfs, cand, picked, strict=True)]
    assert np.allclose(logged, table.column("propensity").to_numpy(), rtol=0, atol=1e-12)
    assert np.allclose([sum(p) for p in pmfs], 1.0, atol=1e-9)
    assert (tmp_path / "logs" / "vw.parquet").is_file()


def test_vw_skipped_with_a_note_when_missing(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(loop_module, "vw_available", lambda: False)
    cfg = LoopConfig(
        world=tiny_world(),
        n_rounds=1,
        requests_per_round=200,
        agents=["random", "vw"],
        keep_logs=False,
        plots=False,
        progress=False,
    )
    with caplog.at_level(logging.WARNING, logger=loop_module.__name__):
        result = run_loop(cfg, out_dir=tmp_path)
    assert set(result["agents"]) == {"random"}
    assert any("vw" in m and "vowpalwabbit" in m for m in caplog.messages)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (VWConfig(exploration="softmax"), "exploration must be"),
        (VWConfig(epsilon=1.5), "epsilon must lie"),
        (VWConfig(exploration="squarecb", gamma_scale=0.0), "gamma_scale must be"),
        (VWConfig(interactions=["UX"]), "interactions must be pairs"),
    ],
)
def test_bad_config_is_refused(cfg: VWConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cfg.arguments(seed=0)


def test_cli_composes_vw_options() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(config_name="loop", overrides=["vw.exploration=squarecb", "vw.gamma_scale=20"])
        assert "vw" in cfg.agents and cfg.vw.exploration == "squarecb" and cfg.vw.gamma_scale == 20
        with pytest.raises(Exception, match="no_such_key"):
            compose(config_name="loop", overrides=["vw.no_such_key=1"])
