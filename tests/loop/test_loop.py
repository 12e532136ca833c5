"""The closed loop on tiny worlds: protocol conformance, common random numbers, valid logs, and the
deep Thompson agent beating the unpersonalised bandit and random on regret."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from tiny import blobs, tiny_world

from deepbandit.data.validation import validate_table
from deepbandit.loop.agents import DeepAgentsConfig
from deepbandit.loop.environments import ArtworkEnvironment, ClassificationEnvironment, Environment
from deepbandit.loop.loop import LoopConfig, run_loop
from deepbandit.models.uncertainty import UncertaintyConfig


def environments() -> list[Environment]:
    envs = [ArtworkEnvironment(tiny_world(), 3000, seed=1), blobs()]
    with contextlib.suppress(ImportError):
        envs.append(ClassificationEnvironment.digits())
    return envs


@pytest.mark.parametrize("env", environments(), ids=lambda e: e.name)
def test_protocol_conformance(env: Environment) -> None:
    assert isinstance(env, Environment)
    env.reset(3)
    r = env.next_requests(500)
    b, a = r.candidates.shape
    assert b == 500 == r.table.num_rows and r.mask.shape == (b, a)
    assert (r.mask == (r.candidates >= 0)).all() and r.mask[:, 0].all()
    assert np.unique(r.row_key).size == b and (np.diff(r.timestamp_us) >= 0).all()
    q = env.expected_rewards(r)
    assert q.shape == (b, a) and (q[~r.mask] == 0).all() and ((q >= 0) & (q <= 1)).all()
    # catalogue: every candidate has an embedding row and belongs to its title
    images = env.images_table()
    ids = images.column("image_id").to_numpy()
    assert np.isin(r.candidates[r.mask], ids).all()
    title_of = dict(zip(ids.tolist(), images.column("title_id").to_pylist(), strict=True))
    titles = r.table.column("title_id").to_numpy()
    rows, cols = np.nonzero(r.mask)
    assert all(
        title_of[i] == t for i, t in zip(r.candidates[rows, cols][:50], titles[rows][:50], strict=True)
    )
    assert set(env.titles_table().column("title_id").to_pylist()) >= set(titles.tolist())
    # the same seed replays the same stream; the next batch is a new one
    env.reset(3)
    again = env.next_requests(500)
    assert again.table.equals(r.table)
    assert not env.next_requests(500).table.equals(r.table)


def test_classification_rewards_are_the_labels() -> None:
    env = blobs()
    r = env.next_requests(400)
    q = env.expected_rewards(r)
    assert (q.sum(axis=1) == 1).all()
    best = q.argmax(axis=1)
    assert (env.sample_rewards(r, best) == 1).all()
    assert (env.sample_rewards(r, (best + 1) % q.shape[1]) == 0).all()


def test_common_random_numbers() -> None:
    env = ArtworkEnvironment(tiny_world(), 20_000, seed=2)
    r = env.next_requests(20_000)
    q = env.expected_rewards(r)
    rng = np.random.default_rng(0)
    n = r.mask.sum(axis=1)
    a1 = (rng.random(len(r)) * n).astype(np.int64)
    a2 = (rng.random(len(r)) * n).astype(np.int64)
    same = a1 == a2
    r1, r2 = env.sample_rewards(r, a1), env.sample_rewards(r, a2)
    assert same.sum() > 1000 and (r1[same] == r2[same]).all()  # same request, same image: same reward
    assert (r1 == env.sample_rewards(r, a1)).all()  # and the draw is a function of them alone
    # the draws are Bernoulli(q): mean reward within 4 standard errors of the mean expected reward
    p = q[np.arange(len(r)), a1]
    assert abs(r1.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(r)
    # different images on a request: draws not identical (independent uniforms)
    assert (r1[~same] != r2[~same]).any()


@pytest.fixture(scope="module")
def artwork_run(tmp_path_factory) -> dict:
    cfg = LoopConfig(
        world=tiny_world(),
        n_rounds=5,
        requests_per_round=2000,
        agents=["random", "unpersonalised_ts", "linucb", "deep_thompson"],
        deep=DeepAgentsConfig(
            serve="torch",
            epochs=2,
            uncertainty=UncertaintyConfig(kind="ensemble", n_members=5, prior_scale=0.0),
        ),
        seed=0,
        progress=False,
    )
    return run_loop(cfg, out_dir=tmp_path_factory.mktemp("loop"))


@pytest.mark.slow
def test_deep_thompson_beats_unpersonalised_and_random(artwork_run: dict) -> None:
    agents = artwork_run["agents"]
    n = artwork_run["n_rounds"] * artwork_run["requests_per_round"]
    # per-request regrets lie in [0, 1]; the difference of two agents' totals over n requests has a
    # standard error below sqrt(n) * sd, with sd of the per-request regret difference <= ~0.1 here:
    # require a margin of 3 such standard errors (computed, not hard-coded)
    deep = np.array(agents["deep_thompson"]["regret"])
    for baseline in ("unpersonalised_ts", "random"):
        other = np.array(agents[baseline]["regret"])
        margin = 3 * 0.1 * np.sqrt(n)
        assert deep.sum() + margin < other.sum(), (baseline, deep.sum(), other.sum(), margin)
    # regret is measured against the oracle: every total is positive and below the oracle's take
    for a in agents.values():
        assert 0 < a["total_regret"] < sum(artwork_run["oracle"]) * artwork_run["requests_per_round"]


@pytest.mark.slow
def test_logs_validate_and_outputs_written(artwork_run: dict) -> None:
    out = Path(artwork_run["out_dir"])
    for name, table in artwork_run["logs"].items():
        report = validate_table(table, "impressions", file=f"{name} log")
        assert report.rows_quarantined == 0 and report.rows_kept == table.num_rows == 10_000
        dist = table.column("action_dist").to_pylist()
        assert np.allclose([sum(d) for d in dist], 1.0)
        assert (out / "logs" / f"{name}.parquet").is_file()
    for name in ("loop.json", "cumulative_regret.png", "take_rate.png"):
        assert (out / name).is_file()


def test_cli_composes_and_runs_digits(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from hydra import compose, initialize_config_module

    from deepbandit.cli.loop import run

    overrides = [
        "environment=digits",
        "n_rounds=2",
        "requests_per_round=300",
        "agents=[random,linucb,deep_greedy]",
        "deep.serve=torch",
        "deep.epochs=1",
        "progress=false",
        "plots=false",
        f"out_dir={tmp_path}",
    ]
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(config_name="loop", overrides=overrides)
        with pytest.raises(Exception, match="no_such_key"):
            compose(config_name="loop", overrides=["deep.no_such_key=1"])
    result = run(cfg)
    assert set(result["agents"]) == {"random", "linucb", "deep_greedy"}
    assert (tmp_path / "loop.json").is_file()
    # digits: the oracle always takes (expected reward 1), random takes one time in ten
    assert np.allclose(result["oracle"], 1.0) and np.allclose(result["random"], 0.1)


def test_python_defaults_are_the_cli_loop() -> None:
    """LoopConfig() in Python and `deepbandit loop` (conf/loop.yaml and the config groups it picks for the
    deep agents) run the same loop: the dataclass defaults cannot drift from the yaml."""
    from dataclasses import asdict

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(config_name="loop", overrides=["out_dir=loop"])
    composed = OmegaConf.to_object(cfg)
    assert asdict(composed.deep) == asdict(LoopConfig().deep)
    assert composed.agents == LoopConfig().agents


def test_deep_agents_are_checked_before_the_loop() -> None:
    from deepbandit.errors import ConfigError

    with pytest.raises(ConfigError, match="no policy deep.policies.boltzmann"):
        LoopConfig(agents=["deep_boltzmann"]).validate()
    with pytest.raises(ConfigError, match="thompson needs deep.uncertainty with a posterior"):
        LoopConfig(
            agents=["deep_thompson"], deep=DeepAgentsConfig(uncertainty=UncertaintyConfig())
        ).validate()
