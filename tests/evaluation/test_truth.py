"""Estimators against the simulator's exact ground truth (tiny world, uniform and epsilon-greedy logs)."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from deepbandit.data.logs import contexts_from_impressions
from deepbandit.evaluation.baselines import logged_rows, one_hot
from deepbandit.evaluation.estimators import DR, IPS, SNDR, SNIPS, Replay, estimate_all
from deepbandit.sim.simulator import ImpressionGenerator, TruthAccumulator, build

SEEDS = range(6)
N_ROWS = 4000


def simulated(logging: str, seed: int, n: int = N_ROWS):
    """(world, rows, contexts) of a tiny-world log."""
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose("simulate", overrides=["world=tiny", f"logging_policy={logging}", f"seed={seed}",
                                             "out_dir=unused", "progress=false"])  # fmt: skip
    world, _, generator = build(OmegaConf.to_object(cfg))
    table = generator.table(n, TruthAccumulator())
    return world, logged_rows(table), contexts_from_impressions(table)


def targets(world, rows, ctx) -> dict[str, np.ndarray]:
    q = world.expected_reward(ctx, rows.candidate_ids)
    a = rows.candidate_ids.shape[1]
    logits = np.where(rows.candidate_mask, q / 0.05, -np.inf)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {
        "unpersonalised": one_hot(world.best_unpersonalised_action(ctx, rows.candidate_ids), a),
        "oracle": one_hot(world.oracle_action(ctx, rows.candidate_ids), a),
        "softmax_truth": soft / soft.sum(axis=1, keepdims=True),
    }


@pytest.fixture(scope="module", params=["uniform", "epsilon_greedy"])
def runs(request):
    """Per seed and target: truth, and estimates (IPS, SNIPS, DR, SNDR with q + small noise)."""
    out = []
    for seed in SEEDS:
        world, rows, ctx = simulated(request.param, seed)
        q = world.expected_reward(ctx, rows.candidate_ids)
        noisy = np.clip(q + np.random.default_rng(seed).normal(0, 0.01, q.shape), 0, 1) * rows.candidate_mask
        for name, dist in targets(world, rows, ctx).items():
            est = estimate_all(
                [IPS(), SNIPS(), DR(), SNDR()], reward=rows.reward, action=rows.action, pscore=rows.pscore,
                action_dist=dist, candidate_mask=rows.candidate_mask, estimated_rewards=noisy,
                logging_action_dist=rows.logging_action_dist, interval="normal",
            )  # fmt: skip
            out.append((name, world.policy_value(ctx, rows.candidate_ids, dist), est))
    return request.param, out


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr", "sndr"])
def test_mean_relative_error_within_se_threshold(runs, estimator):
    logging, out = runs
    for target in ("unpersonalised", "oracle", "softmax_truth"):
        errs = np.array([e[estimator].value - t for n, t, e in out if n == target])
        ses = np.array([e[estimator].se for n, _, e in out if n == target])
        truth = np.mean([t for n, t, _ in out if n == target])
        # the mean of K independent errors has sd sqrt(sum se^2) / K; 4 sd leaves ~1e-4 false alarms
        threshold = 4 * np.sqrt((ses**2).sum()) / len(ses) / truth
        assert abs(errs.mean()) / truth < threshold, (logging, target, estimator, errs, ses)


def test_dr_beats_ips_with_a_good_reward_model(runs):
    _, out = runs
    ips_se = np.mean([e["ips"].se for *_, e in out])
    dr_se = np.mean([e["dr"].se for *_, e in out])
    ips_sq = sum((e["ips"].value - t) ** 2 for _, t, e in out)
    dr_sq = sum((e["dr"].value - t) ** 2 for _, t, e in out)
    assert dr_se < ips_se  # Bernoulli rewards with q ~ 0.1: the noise left after a perfect model is large
    assert dr_sq < ips_sq


def test_snips_stays_within_reward_range(runs):
    _, out = runs
    assert all(0.0 <= e["snips"].value <= 1.0 for *_, e in out)


@pytest.mark.parametrize("method", ["normal", pytest.param("bootstrap", marks=pytest.mark.slow)])
def test_interval_coverage_near_nominal(method):
    logs = 100 if method == "normal" else 60
    hits = {"ips": 0, "snips": 0, "dr": 0}
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(
            "simulate", overrides=["world=tiny", "logging_policy=uniform", "out_dir=u", "progress=false"]
        )
    world, policy, _ = build(OmegaConf.to_object(cfg))
    for i in range(logs):  # one world, independent logs drawn from it
        table = ImpressionGenerator(world, policy, 1000 + i).table(2000, TruthAccumulator())
        rows, ctx = logged_rows(table), contexts_from_impressions(table)
        q = world.expected_reward(ctx, rows.candidate_ids)
        dist = one_hot(world.oracle_action(ctx, rows.candidate_ids), q.shape[1])
        truth = world.policy_value(ctx, rows.candidate_ids, dist)
        res = estimate_all(
            [IPS(), SNIPS(), DR()], reward=rows.reward, action=rows.action, pscore=rows.pscore, action_dist=dist,
            candidate_mask=rows.candidate_mask, estimated_rewards=0.5 * q, interval=method, n_bootstrap=200,
            seed=i,
        )  # fmt: skip
        for k in hits:
            hits[k] += res[k].lower <= truth <= res[k].upper
    tol = 3 * np.sqrt(0.95 * 0.05 / logs) + (0.02 if method == "bootstrap" else 0.0)
    for k, h in hits.items():
        assert abs(h / logs - 0.95) <= tol, (k, h, logs)


def test_replay_equals_ips_for_deterministic_policies_on_uniform_logs():
    world, rows, ctx = simulated("uniform", 3, 20_000)
    k = np.bincount(rows.candidate_mask.sum(axis=1)).argmax()
    keep = rows.candidate_mask.sum(axis=1) == k  # Replay's identity holds with K candidates on every row
    rows, ctx = rows.take(keep), ctx.take(keep)
    for dist in targets(world, rows, ctx).values():
        if not np.isin(dist, (0.0, 1.0)).all():
            continue
        arrays = dict(reward=rows.reward, action=rows.action, pscore=rows.pscore, action_dist=dist,
                      candidate_mask=rows.candidate_mask)  # fmt: skip
        res = estimate_all([IPS(), SNIPS(), Replay()], **arrays)
        match = res["replay"].diagnostics.match_rate
        assert res["replay"].value == pytest.approx(res["snips"].value, abs=1e-12)
        assert res["ips"].value == pytest.approx(res["replay"].value * k * match, abs=1e-12)
