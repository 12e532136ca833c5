"""Off-policy estimators on arrays: agreement with the textbook formulas, statistical properties on tiny
bandit worlds with a known value, diagnostics, and a table of bad inputs."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import pytest
import torch

from deepbandit.evaluation.checks import (
    EstimationError,
    ReplayBiasWarning,
    SupportWarning,
    deterministic_action_dist,
)
from deepbandit.evaluation.estimators import (
    DM,
    DR,
    IPS,
    SNDR,
    SNIPS,
    Replay,
    SwitchDR,
    estimate_all,
)

# --- random arrays and the textbook formulas --------------------------------------------------------


def _softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    z = np.where(mask, scores, -np.inf)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of ``probs`` (n, A) by inverse CDF; the last candidate's CDF is pinned to 1."""
    cdf = probs.cumsum(axis=1)
    last = (probs > 0).shape[1] - 1 - np.argmax((probs > 0)[:, ::-1], axis=1)
    cdf[np.arange(len(probs)), last] = 1.0
    return np.argmax(cdf > rng.random((len(probs), 1)), axis=1)


def random_arrays(seed: int, n: int = 500, a: int = 6, deterministic: bool = False) -> dict:
    """Logged bandit arrays with padded candidate sets (2..a per row) and softmax logging."""
    rng = np.random.default_rng(seed)
    k = rng.integers(2, a + 1, n)
    mask = np.arange(a)[None, :] < k[:, None]
    logging = _softmax(rng.normal(size=(n, a)), mask)
    action = _sample(logging, rng)
    if deterministic:
        action_dist = deterministic_action_dist(np.argmax(np.where(mask, rng.random((n, a)), -1), axis=1), a)
    else:
        action_dist = _softmax(2 * rng.normal(size=(n, a)), mask)
    return dict(
        reward=rng.random(n),
        action=action,
        pscore=logging[np.arange(n), action],
        action_dist=action_dist,
        candidate_mask=mask,
        estimated_rewards=rng.random((n, a)),
        logging_action_dist=logging,
    )


def textbook(kw: dict, clip: float, tau: float) -> dict[str, float]:
    """The estimators as the literature writes them, in a few lines of plain numpy."""
    r, a, p, pi, q = (kw[k] for k in ("reward", "action", "pscore", "action_dist", "estimated_rewards"))
    rows = np.arange(len(r))
    w = pi[rows, a] / p
    q_pi, q_a = (pi * q).sum(axis=1), q[rows, a]
    return {
        "ips": np.mean(w * r),
        f"ips(clip={clip:g})": np.mean(np.minimum(w, clip) * r),
        "snips": np.sum(w * r) / np.sum(w),
        "dm": np.mean(q_pi),
        "dr": np.mean(q_pi + w * (r - q_a)),
        f"dr(clip={clip:g})": np.mean(q_pi + np.minimum(w, clip) * (r - q_a)),
        "sndr": np.mean(q_pi) + np.sum(w * (r - q_a)) / np.sum(w),
        f"switch_dr(tau={tau:g})": np.mean(q_pi + (w <= tau) * w * (r - q_a)),
    }


def all_estimators(clip: float = 2.0, tau: float = 3.0) -> list:
    return [IPS(), IPS(clip=clip), SNIPS(), DM(), DR(), DR(clip=clip), SNDR(), SwitchDR(tau=tau)]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_equal_textbook_formulas(seed: int, deterministic: bool) -> None:
    kw = random_arrays(seed, deterministic=deterministic)
    reference = textbook(kw, clip=2.0, tau=3.0)
    got = estimate_all(all_estimators(), **kw)
    assert set(got) == set(reference)
    for name, ref in reference.items():
        assert got[name].value == pytest.approx(ref, rel=1e-12, abs=1e-12), name


def test_clipping_and_switching_are_exercised_by_the_reference_test() -> None:
    # Guards the test above against comparing clipped with unclipped estimators that happen to agree.
    got = estimate_all(all_estimators(), **random_arrays(0))
    assert got["ips(clip=2)"].diagnostics.fraction_clipped > 0.05
    assert got["ips(clip=2)"].value < got["ips"].value
    assert got["switch_dr(tau=3)"].diagnostics.fraction_clipped > 0.02


def test_single_estimator_methods_match_estimate_all() -> None:
    kw = random_arrays(3)
    both = estimate_all([IPS(), DR()], **kw, interval="bootstrap", n_bootstrap=50, seed=7)
    assert IPS().estimate_policy_value(**kw) == both["ips"].value
    one = DR().estimate_interval(**kw, method="bootstrap", n_bootstrap=50, seed=7)
    # Same draws per row, so the same interval whether alone or beside IPS.
    assert (one["lower"], one["upper"]) == pytest.approx((both["dr"].lower, both["dr"].upper), rel=1e-12)
    assert one["value"] == both["dr"].value and one["diagnostics"]["n_rows"] == len(kw["reward"])


def test_normal_interval_is_value_plus_minus_z_se() -> None:
    kw = random_arrays(4)
    r, a, p, pi = kw["reward"], kw["action"], kw["pscore"], kw["action_dist"]
    w = pi[np.arange(len(r)), a] / p
    got = SNIPS().estimate_interval(**kw, method="normal", alpha=0.1)
    snips = np.sum(w * r) / np.sum(w)
    # Delta method for a ratio of means: se^2 = var(w (r - V)) / (n mean(w)^2).
    se = np.std(w * (r - snips), ddof=1) / np.mean(w) / math.sqrt(len(r))
    z = NormalDist().inv_cdf(0.95)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    assert (got["lower"], got["upper"]) == pytest.approx((snips - z * se, snips + z * se), rel=1e-9)


def test_values_without_standard_errors_are_the_same_values() -> None:
    kw = random_arrays(6)
    full = estimate_all(all_estimators(), **kw, chunk_size=41)
    bare = estimate_all(all_estimators(), **kw, chunk_size=41, standard_error=False)
    for name, est in full.items():
        assert bare[name].value == est.value and math.isnan(bare[name].se) and not math.isnan(est.se), name
        assert bare[name].diagnostics == est.diagnostics
    boot = estimate_all(all_estimators(), **kw, interval="bootstrap", n_bootstrap=20, standard_error=False)
    with_se = estimate_all(all_estimators(), **kw, interval="bootstrap", n_bootstrap=20)
    assert all((boot[n].lower, boot[n].upper) == (with_se[n].lower, with_se[n].upper) for n in boot)
    with pytest.raises(ValueError, match="needs standard_error=True"):
        estimate_all(all_estimators(), **kw, interval="normal", standard_error=False)


def test_inputs_as_tensors_chunks_and_float32_agree() -> None:
    kw = random_arrays(5)
    base = estimate_all(all_estimators(), **kw)
    tensors = {k: torch.from_numpy(v) for k, v in kw.items()}
    for other in (
        estimate_all(all_estimators(), **tensors),
        estimate_all(all_estimators(), **kw, chunk_size=37),
    ):
        for name, est in base.items():
            assert other[name].value == pytest.approx(est.value, rel=1e-12, abs=1e-12)
            assert other[name].se == pytest.approx(est.se, rel=1e-9)
            for field, value in asdict(est.diagnostics).items():
                got = getattr(other[name].diagnostics, field)
                assert got == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), field
    low = estimate_all(all_estimators(), **kw, dtype=torch.float32)
    for name, est in base.items():
        assert low[name].value == pytest.approx(est.value, rel=1e-5)


def test_memory_mapped_inputs_in_chunks(tmp_path) -> None:
    kw = random_arrays(6, n=300)
    mapped = {}
    for name, array in kw.items():
        np.save(tmp_path / f"{name}.npy", array)
        mapped[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only maps must not make torch warn
        got = estimate_all(all_estimators(), **mapped, chunk_size=64)
    for name, ref in textbook(kw, clip=2.0, tau=3.0).items():
        assert got[name].value == pytest.approx(ref, rel=1e-12)


def test_padding_values_of_estimated_rewards_are_ignored() -> None:
    kw = random_arrays(7)
    ref = DR().estimate_policy_value(**kw)
    kw["estimated_rewards"] = np.where(kw["candidate_mask"], kw["estimated_rewards"], np.nan)
    assert DR().estimate_policy_value(**kw) == ref


def test_deterministic_action_dist() -> None:
    dist = deterministic_action_dist(np.array([2, 0, 1]), 4)
    np.testing.assert_array_equal(dist, np.eye(4)[[2, 0, 1]])
    assert isinstance(deterministic_action_dist(torch.tensor([1]), 2), torch.Tensor)
    with pytest.raises(ValueError, match=re.escape("chosen[1] = 4 is outside [0, 4)")):
        deterministic_action_dist(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match=re.escape("chosen[0] = 3 points at padding")):
        deterministic_action_dist(np.array([3]), 4, np.array([[True, True, False, False]]))


# --- bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_is_seeded() -> None:
    kw = random_arrays(8)
    runs = [IPS().estimate_interval(**kw, n_bootstrap=100, seed=s) for s in (1, 1, 2)]
    assert (runs[0]["lower"], runs[0]["upper"]) == (runs[1]["lower"], runs[1]["upper"])
    assert runs[0]["lower"] != runs[2]["lower"]
    assert runs[0]["lower"] < runs[0]["value"] < runs[0]["upper"]


def test_ratio_bootstrap_resamples_numerator_and_denominator_together() -> None:
    # With a constant reward every resample of SNIPS (and Replay, and SNDR with a constant model) is exactly
    # that constant; resampling sum(w r) with a fixed sum(w) would scatter it as widely as IPS's.
    kw = random_arrays(9)
    kw["reward"] = np.full_like(kw["reward"], 0.7)
    kw["estimated_rewards"] = np.full_like(kw["estimated_rewards"], 0.2)
    got = estimate_all([IPS(), SNIPS(), SNDR()], **kw, interval="bootstrap", n_bootstrap=100)
    for name in ("snips", "sndr"):
        assert (got[name].lower, got[name].upper) == pytest.approx((0.7, 0.7), abs=1e-12)
    assert got["ips"].upper - got["ips"].lower > 0.05


def test_bootstrap_width_matches_the_delta_method() -> None:
    # Both estimate the same sampling distribution; with B = 400 resamples the bootstrap quantiles'
    # Monte Carlo error is about 5 %, so the two widths agree within 15 %.
    kw = random_arrays(10, n=20_000)
    names = ["ips", "snips", "dr", "sndr"]
    boot = estimate_all([IPS(), SNIPS(), DR(), SNDR()], **kw, interval="bootstrap", n_bootstrap=400)
    for name in names:
        width = boot[name].upper - boot[name].lower
        assert width / (2 * 1.959964 * boot[name].se) == pytest.approx(1.0, abs=0.15), name


# --- statistical properties on tiny worlds with a known value ---------------------------------------


@dataclass
class World:
    """A finite population of contexts with known expected rewards q (n_ctx, A) and policies."""

    q: np.ndarray  # true expected reward per context and candidate
    mask: np.ndarray
    logging: np.ndarray  # logging policy's distribution
    target: np.ndarray  # target policy's distribution
    q_good: np.ndarray  # reward model with small noise
    q_bad: np.ndarray  # reward model biased by +0.15

    @property
    def value(self) -> float:
        """Contexts are uniform over the population, so the value is exact."""
        return float(np.mean((self.target * self.q).sum(axis=1)))

    def logs(self, n: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
        """n logged rows and the reward models' predictions on them."""
        rng = np.random.default_rng(seed)
        ctx = rng.integers(0, len(self.q), n)
        logging = self.logging[ctx]
        action = _sample(logging, rng)
        reward = (rng.random(n) < self.q[ctx, action]).astype(np.float64)  # Bernoulli plays
        arrays = dict(
            reward=reward,
            action=action,
            pscore=logging[np.arange(n), action],
            action_dist=self.target[ctx],
            candidate_mask=self.mask[ctx],
        )
        models = {"perfect": self.q[ctx], "good": self.q_good[ctx], "bad": self.q_bad[ctx]}
        return arrays, models


def make_world(uniform_logging: bool, deterministic_target: bool, vary_candidates: bool) -> World:
    rng = np.random.default_rng(2024)
    n_ctx, a = 40, 6
    k = rng.integers(2, a + 1, n_ctx) if vary_candidates else np.full(n_ctx, a)
    mask = np.arange(a)[None, :] < k[:, None]
    q = np.where(mask, 1 / (1 + np.exp(-rng.normal(0.3, 1.2, (n_ctx, a)))), 0.0)
    logging = _softmax(np.zeros((n_ctx, a)) if uniform_logging else rng.normal(0, 0.8, (n_ctx, a)), mask)
    scores = q + rng.normal(0, 0.2, (n_ctx, a))  # a decent but imperfect policy
    if deterministic_target:
        target = np.eye(a)[np.argmax(np.where(mask, scores, -np.inf), axis=1)]
    else:
        target = _softmax(4 * scores, mask)
    noise = rng.normal(0, 0.03, (n_ctx, a))
    return World(q, mask, logging, target, np.where(mask, q + noise, 0), np.where(mask, q + 0.15 + noise, 0))


N_SEEDS, N_ROWS = 200, 2000
# Coverage over N_SEEDS logs is binomial: sd = sqrt(0.95 * 0.05 / N_SEEDS) = 0.015. The ~18 coverage checks
# share a 1 % family-wise error (Bonferroni: 3.3 sd each), and 200-resample percentile intervals at n = 2000
# run up to one point below nominal (measured over 1000 other seeds: 0.935-0.955 bootstrap, 0.94-0.96 normal).
COVERAGE_FLOOR = 0.95 - 3.3 * math.sqrt(0.95 * 0.05 / N_SEEDS) - 0.01


@pytest.fixture(scope="module", params=["uniform_deterministic", "softmax_stochastic"])
def world_runs(request) -> dict:
    """Estimates over N_SEEDS independent logs of N_ROWS rows from one world.

    uniform_deterministic: uniform logging over a constant 6 candidates, a deterministic target (Replay
    applies). softmax_stochastic: softmax logging over 2..6 candidates, a softmax target policy.
    """
    uniform = request.param == "uniform_deterministic"
    world = make_world(uniform_logging=uniform, deterministic_target=uniform, vary_candidates=not uniform)
    with_good = [IPS(), IPS(clip=1.0), SNIPS(), DR(), SNDR()] + ([Replay()] if uniform else [])
    calls = [
        (with_good, "good", "bootstrap"),
        ([DM(), SwitchDR(tau=4.0)], "perfect", None),
        ([DM(), DR()], "bad", None),
    ]
    runs: dict[str, list] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny calls: threads only add overhead (and contention)
    try:
        for seed in range(N_SEEDS):
            arrays, models = world.logs(N_ROWS, seed)
            for estimators, model, interval in calls:
                got = estimate_all(
                    estimators, **arrays, estimated_rewards=models[model], interval=interval, seed=seed
                )
                for name, est in got.items():
                    runs.setdefault(f"{name}[{model}]", []).append(est)
    finally:
        torch.set_num_threads(threads)
    return {"world": world, "runs": runs, "uniform": uniform}


def _values(runs: list) -> np.ndarray:
    return np.array([e.value for e in runs])


def test_unbiased_estimators_recover_the_true_value(world_runs: dict) -> None:
    # IPS, DR (with any model) and DM/Switch-DR with the true model are unbiased; SNIPS, SNDR, Replay are
    # biased O(1/n), far below the tolerance: 4 standard errors of the mean over seeds.
    truth = world_runs["world"].value
    names = ["ips[good]", "snips[good]", "dr[good]", "sndr[good]", "dm[perfect]", "switch_dr(tau=4)[perfect]"]
    names += ["dr[bad]"] + (["replay[good]"] if world_runs["uniform"] else [])
    for name in names:
        v = _values(world_runs["runs"][name])
        tolerance = 4 * v.std(ddof=1) / math.sqrt(len(v))
        assert abs(v.mean() - truth) <= tolerance, (name, v.mean(), truth, tolerance)


def test_biased_estimators_are_detected(world_runs: dict) -> None:
    # The same tolerance rejects a biased reward model under DM and heavy clipping under IPS.
    truth = world_runs["world"].value
    for name in ["dm[bad]", "ips(clip=1)[good]"]:
        v = _values(world_runs["runs"][name])
        assert abs(v.mean() - truth) > 4 * v.std(ddof=1) / math.sqrt(len(v)), name


def test_dr_with_a_good_reward_model_beats_ips(world_runs: dict) -> None:
    truth = world_runs["world"].value
    mse = {
        name: np.mean((_values(world_runs["runs"][name]) - truth) ** 2) for name in ("ips[good]", "dr[good]")
    }
    assert mse["dr[good]"] < 0.6 * mse["ips[good]"], mse


@pytest.mark.parametrize("method", ["normal", "bootstrap"])
def test_intervals_cover_at_the_nominal_rate(world_runs: dict, method: str) -> None:
    truth = world_runs["world"].value
    z = NormalDist().inv_cdf(0.975)
    names = ["ips[good]", "snips[good]", "dr[good]", "sndr[good]"]
    names += ["replay[good]"] if world_runs["uniform"] else []
    for name in names:
        runs = world_runs["runs"][name]
        if method == "normal":  # what interval="normal" returns (see test_normal_interval_...)
            bounds = np.array([(e.value - z * e.se, e.value + z * e.se) for e in runs])
        else:
            bounds = np.array([(e.lower, e.upper) for e in runs])
        coverage = np.mean((bounds[:, 0] <= truth) & (truth <= bounds[:, 1]))
        assert coverage >= COVERAGE_FLOOR, (name, coverage)
        # Not trivially wide either: the mean half-width matches 1.96 times the spread over seeds.
        ratio = np.mean(bounds[:, 1] - bounds[:, 0]) / 2 / (z * _values(runs).std(ddof=1))
        assert 0.8 < ratio < 1.25, (name, ratio)


def test_mean_weight_is_one_under_correct_propensities(world_runs: dict) -> None:
    means = np.array([e.diagnostics.mean_weight for e in world_runs["runs"]["ips[good]"]])
    ses = np.array([e.diagnostics.mean_weight_se for e in world_runs["runs"]["ips[good]"]])
    assert abs(means.mean() - 1) <= 4 * means.std(ddof=1) / math.sqrt(len(means))
    assert np.mean(ses) == pytest.approx(means.std(ddof=1), rel=0.15)  # the se is calibrated


def test_snips_stays_within_the_reward_range_where_ips_does_not() -> None:
    ips_outside = 0
    for seed in range(30):
        kw = random_arrays(seed, n=50)
        del kw["logging_action_dist"]
        kw["pscore"] = kw["pscore"] * 0.2  # claims rarer logging: larger weights, IPS overshoots
        got = estimate_all([IPS(), SNIPS()], **kw)
        assert kw["reward"].min() <= got["snips"].value <= kw["reward"].max()
        ips_outside += not kw["reward"].min() <= got["ips"].value <= kw["reward"].max()
    assert ips_outside > 0


# --- Replay -----------------------------------------------------------------------------------------


def uniform_deterministic(seed: int, n: int = 400, k: int = 5, vary: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, k + 1, n) if vary else np.full(n, k)
    mask = np.arange(k)[None, :] < counts[:, None]
    choice = (rng.random(n) * counts).astype(np.int64)
    return dict(
        reward=rng.random(n),
        action=(rng.random(n) * counts).astype(np.int64),
        pscore=1.0 / counts,
        action_dist=deterministic_action_dist(choice, k),
        candidate_mask=mask,
    )


def test_replay_identities_on_uniform_logs_with_constant_candidates() -> None:
    # With pscore = 1/K on every row and a one-hot target, w_i = K m_i (m_i = 1 on matched rows), so
    #   SNIPS = sum(K m r) / sum(K m) = sum(m r) / sum(m) = Replay       (exactly),
    #   IPS   = sum(K m r) / n = K * (sum(m) / n) * Replay = K * match_rate * Replay.
    kw = uniform_deterministic(11)
    got = estimate_all([Replay(), SNIPS(), IPS()], **kw)
    matched = kw["action_dist"][np.arange(400), kw["action"]] == 1
    assert got["replay"].value == pytest.approx(kw["reward"][matched].mean(), rel=1e-12)
    assert got["replay"].value == pytest.approx(got["snips"].value, rel=1e-12)
    d = got["replay"].diagnostics
    assert d.match_count == matched.sum() and d.match_rate == pytest.approx(matched.mean(), rel=1e-12)
    assert got["ips"].value == pytest.approx(5 * d.match_rate * got["replay"].value, rel=1e-12)


def test_replay_with_varying_candidate_counts_warns_and_differs_from_snips() -> None:
    kw = uniform_deterministic(12, vary=True)
    with pytest.warns(ReplayBiasWarning, match="between 2 and 5 candidates"):
        got = estimate_all([Replay(), SNIPS()], **kw)
    assert abs(got["replay"].value - got["snips"].value) > 1e-3


def test_replay_refuses_what_it_cannot_estimate() -> None:
    kw = uniform_deterministic(13)
    stochastic = dict(kw, action_dist=np.full((400, 5), 0.2))
    with pytest.raises(ValueError, match=r"Replay needs a deterministic target policy .*action_dist\[0\]"):
        Replay().estimate_policy_value(**stochastic)
    skewed = dict(kw, pscore=np.where(np.arange(400) == 3, 0.4, kw["pscore"]))
    with pytest.raises(ValueError, match=r"uniformly random logging policy, but pscore\[3\] = 0.4"):
        Replay().estimate_policy_value(**skewed)
    never = dict(kw, action_dist=deterministic_action_dist((kw["action"] + 1) % 5, 5))
    with pytest.raises(EstimationError, match="replay: 0 of 400 rows match"):
        Replay().estimate_policy_value(**never)
    with pytest.raises(EstimationError, match="ips: 0 of 400 rows match"):
        IPS().estimate_policy_value(**never)
    assert (
        DR().estimate_policy_value(**never, estimated_rewards=np.ones((400, 5))) == 1.0
    )  # = DM, said in docs


# --- diagnostics and support ------------------------------------------------------------------------


def test_diagnostics_match_their_definitions() -> None:
    kw = random_arrays(14)
    r, a, p, pi = kw["reward"], kw["action"], kw["pscore"], kw["action_dist"]
    w = pi[np.arange(len(r)), a] / p
    d = IPS(clip=2.0).estimate(**kw).diagnostics
    assert d.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert d.max_weight == pytest.approx(w.max(), rel=1e-12)
    assert d.mean_weight == pytest.approx(w.mean(), rel=1e-12)
    assert d.mean_weight_se == pytest.approx(w.std(ddof=1) / math.sqrt(len(w)), rel=1e-9)
    assert d.fraction_clipped == np.mean(w > 2.0)
    assert d.match_count == np.sum(w > 0) and d.match_rate == pytest.approx(np.mean(w * p), rel=1e-12)
    assert (d.support_check, d.support_warning, d.min_candidates, d.max_candidates) == ("exact", False, 2, 6)


def test_support_warning_with_the_full_logging_distribution() -> None:
    kw = random_arrays(15)
    logging = kw["logging_action_dist"].copy()
    # The logging policy never shows candidate 1 on even rows (unless it was logged there).
    hide = (np.arange(len(logging)) % 2 == 0) & (kw["action"] != 1)
    logging[hide, 1] = 0.0
    logging /= logging.sum(axis=1, keepdims=True)
    kw["logging_action_dist"] = logging
    kw["pscore"] = logging[np.arange(len(logging)), kw["action"]]
    with pytest.warns(SupportWarning, match="never shows"):
        d = IPS().estimate(**kw).diagnostics
    unsupported = np.where(logging == 0, kw["action_dist"], 0).sum(axis=1)
    assert d.support_warning and d.support_check == "exact"
    assert d.unsupported_rows == np.sum(unsupported > 0)
    assert d.unsupported_mass == pytest.approx(unsupported.mean(), rel=1e-12)


def test_support_warning_from_rows_with_pscore_one() -> None:
    kw = random_arrays(16)
    del kw["logging_action_dist"]
    kw["pscore"] = np.where(np.arange(len(kw["pscore"])) < 10, 1.0, kw["pscore"])
    with pytest.warns(SupportWarning, match=r"known only on rows with pscore == 1\): 10 of 500 rows"):
        d = SNIPS().estimate(**kw).diagnostics
    assert d.support_check == "pscore_one_rows" and d.unsupported_rows == 10


def test_deterministic_logging_is_an_error_unless_the_target_is_the_logging_policy() -> None:
    kw = random_arrays(17, deterministic=True)
    del kw["logging_action_dist"]
    kw["pscore"] = np.ones_like(kw["pscore"])
    with pytest.raises(
        EstimationError, match="pscore is 1 on every row: the logging policy was deterministic"
    ):
        SNIPS().estimate_policy_value(**kw)
    # Evaluating the logging policy on its own logs is on-policy: the mean reward, no warning.
    on_policy = dict(kw, action_dist=deterministic_action_dist(kw["action"], 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IPS().estimate_policy_value(**on_policy) == pytest.approx(kw["reward"].mean(), rel=1e-12)


# --- bad inputs -------------------------------------------------------------------------------------


def valid_inputs() -> dict:
    """Six rows with 4, 3, 2, 4, 3, 2 candidates, uniform logging and a uniform target."""
    k = np.array([4, 3, 2, 4, 3, 2])
    mask = np.arange(4)[None, :] < k[:, None]
    uniform = mask / k[:, None]
    return dict(
        reward=np.array([0.0, 1.0, 0.5, 1.0, 0.0, 1.0]),
        action=np.array([0, 2, 1, 3, 0, 1]),
        pscore=1.0 / k,
        action_dist=uniform.copy(),
        candidate_mask=mask,
        estimated_rewards=np.full((6, 4), 0.5),
        logging_action_dist=uniform.copy(),
    )


def _set(key, index, value):
    def mutate(kw):
        kw[key] = kw[key].copy()
        kw[key][index] = value

    return mutate


def _replace(key, fn):
    def mutate(kw):
        kw[key] = fn(kw[key])

    return mutate


def _shift_mass(row, src, dst, amount):
    def mutate(kw):
        kw["action_dist"] = kw["action_dist"].copy()
        kw["action_dist"][row, src] -= amount
        kw["action_dist"][row, dst] += amount

    return mutate


BAD_INPUTS = [
    (
        "reward_list",
        _replace("reward", list),
        TypeError,
        "reward must be a numpy array or torch tensor, got list",
    ),
    (
        "reward_2d",
        _replace("reward", lambda r: r[:, None]),
        ValueError,
        "reward must have shape (?,), got (6, 1)",
    ),
    (
        "reward_int",
        _replace("reward", lambda r: r.astype(int)),
        TypeError,
        "reward must be floating, got dtype int",
    ),
    ("reward_nan", _set("reward", 2, np.nan), ValueError, "reward[2] = nan is not finite"),
    ("reward_inf", _set("reward", 4, np.inf), ValueError, "reward[4] = inf is not finite"),
    (
        "action_float",
        _replace("action", lambda a: a.astype(float)),
        TypeError,
        "action must be integer, got dtype float64",
    ),
    (
        "action_short",
        _replace("action", lambda a: a[:5]),
        ValueError,
        "action must have shape (6,), got (5,)",
    ),
    ("action_too_big", _set("action", 1, 4), ValueError, "action[1] = 4 is outside [0, 4)"),
    ("action_negative", _set("action", 0, -1), ValueError, "action[0] = -1 is outside [0, 4)"),
    (
        "action_on_padding",
        _set("action", 5, 3),
        ValueError,
        "action[5] = 3 points at padding (candidate_mask[5, 3] is False)",
    ),
    ("pscore_zero", _set("pscore", 3, 0.0), ValueError, "pscore[3] = 0.0 is outside (0, 1]"),
    ("pscore_above_one", _set("pscore", 3, 1.5), ValueError, "pscore[3] = 1.5 is outside (0, 1]"),
    ("pscore_negative", _set("pscore", 0, -0.25), ValueError, "pscore[0] = -0.25 is outside (0, 1]"),
    ("pscore_nan", _set("pscore", 2, np.nan), ValueError, "pscore[2] = nan is outside (0, 1]"),
    (
        "pscore_shape",
        _replace("pscore", lambda p: p[:, None]),
        ValueError,
        "pscore must have shape (6,), got (6, 1)",
    ),
    (
        "action_dist_1d",
        _replace("action_dist", lambda d: d[:, 0]),
        ValueError,
        "action_dist must have shape (6, ?), got (6,)",
    ),
    (
        "action_dist_rows",
        _replace("action_dist", lambda d: d[:5]),
        ValueError,
        "action_dist must have shape (6, ?), got (5, 4)",
    ),
    (
        "action_dist_int",
        _replace("action_dist", lambda d: d.astype(int)),
        TypeError,
        "action_dist must be floating",
    ),
    (
        "action_dist_negative",
        _shift_mass(1, 0, 1, 0.5),
        ValueError,
        "action_dist[1, 0] = -0.16666666666666669 is not a probability",
    ),
    (
        "action_dist_nan",
        _set("action_dist", (3, 2), np.nan),
        ValueError,
        "action_dist[3, 2] = nan is not a probability",
    ),
    (
        "action_dist_sum",
        _set("action_dist", (4, 0), 0.1),
        ValueError,
        "action_dist[4] sums to 0.766666667, not 1 (tolerance 1e-06)",
    ),
    (
        "action_dist_padding",
        _shift_mass(5, 0, 3, 0.5),
        ValueError,
        "action_dist[5, 3] = 0.5 puts mass on padding (candidate_mask[5, 3] is False)",
    ),
    (
        "mask_int",
        _replace("candidate_mask", lambda m: m.astype(int)),
        TypeError,
        "candidate_mask must be bool, got dtype int",
    ),
    (
        "mask_shape",
        _replace("candidate_mask", lambda m: m[:, :3]),
        ValueError,
        "candidate_mask must have shape (6, 4), got (6, 3)",
    ),
    (
        "rewards_missing",
        _replace("estimated_rewards", lambda q: None),
        ValueError,
        "dr: estimated_rewards (n, A) is required",
    ),
    (
        "rewards_shape",
        _replace("estimated_rewards", lambda q: q[:, :3]),
        ValueError,
        "estimated_rewards must have shape (6, 4), got (6, 3)",
    ),
    (
        "rewards_nan",
        _set("estimated_rewards", (2, 1), np.nan),
        ValueError,
        "estimated_rewards[2, 1] = nan is not finite",
    ),
    (
        "logging_sum",
        _set("logging_action_dist", (0, 3), 0.5),
        ValueError,
        "logging_action_dist[0] sums to 1.25, not 1",
    ),
    (
        "logging_pscore",
        _set("pscore", 1, 0.5),
        ValueError,
        "logging_action_dist[1, action[1]] = 0.3333333333333333 differs from pscore[1]",
    ),
    ("no_rows", lambda kw: kw.update({k: v[:0] for k, v in kw.items()}), ValueError, "reward has no rows"),
]


@pytest.mark.parametrize(
    ("mutate", "error", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_inputs_are_clear_errors(mutate, error, message) -> None:
    kw = valid_inputs()
    DR().estimate_policy_value(**kw)  # the unmutated table is valid
    mutate(kw)
    with pytest.raises(error, match=re.escape(message)):
        DR().estimate_policy_value(**kw)


BAD_OPTIONS = [
    (lambda: IPS(clip=0.0), ValueError, "IPS: clip must be > 0, got 0.0"),
    (lambda: DR(clip=-1), ValueError, "DR: clip must be > 0, got -1"),
    (lambda: DR(clip=math.nan), ValueError, "DR: clip must be > 0, got nan"),
    (lambda: IPS(clip="3"), TypeError, "IPS: clip must be a number, got str"),
    (lambda: SwitchDR(tau=-0.5), ValueError, "SwitchDR: tau must be >= 0, got -0.5"),
    (lambda: SwitchDR(), TypeError, "missing 1 required positional argument: 'tau'"),
    (lambda: estimate_all([], **valid_inputs()), ValueError, "estimators is empty"),
    (lambda: estimate_all([IPS(), IPS()], **valid_inputs()), ValueError, "duplicate names"),
    (lambda: estimate_all(["ips"], **valid_inputs()), TypeError, "OffPolicyEstimator instances, got str"),
    (
        lambda: IPS().estimate_interval(**valid_inputs(), method="jackknife"),
        ValueError,
        "method must be one of",
    ),
    (
        lambda: IPS().estimate_interval(**valid_inputs(), alpha=1.5),
        ValueError,
        "alpha must be in (0, 1), got 1.5",
    ),
    (
        lambda: IPS().estimate_interval(**valid_inputs(), n_bootstrap=1),
        ValueError,
        "n_bootstrap must be an integer >= 2",
    ),
    (
        lambda: IPS().estimate_interval(**valid_inputs(), seed="0"),
        TypeError,
        "seed must be an integer, got str",
    ),
    (
        lambda: IPS().estimate(**valid_inputs(), chunk_size=0),
        ValueError,
        "chunk_size must be a positive integer",
    ),
    (
        lambda: IPS().estimate(**valid_inputs(), interval="bayes"),
        ValueError,
        "interval must be None or one of",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_OPTIONS, ids=[m[2][:30] for m in BAD_OPTIONS])
def test_bad_options_are_clear_errors(call, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_bootstrap_with_too_few_matched_rows_says_so() -> None:
    kw = uniform_deterministic(18, n=40)
    kw["action_dist"] = deterministic_action_dist(
        np.where(np.arange(40) == 0, kw["action"], (kw["action"] + 1) % 5), 5
    )
    with pytest.raises(EstimationError, match="bootstrap resamples drew no row with nonzero weight"):
        SNIPS().estimate_interval(**kw, n_bootstrap=50)


# --- GPU ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu() -> None:
    kw = random_arrays(19, n=5000)
    cpu = estimate_all(all_estimators(), **kw, interval="bootstrap", n_bootstrap=200)
    gpu64 = estimate_all(all_estimators(), **kw, interval="bootstrap", n_bootstrap=200, device="cuda")
    on_gpu = {k: torch.from_numpy(v).cuda() for k, v in kw.items()}
    gpu32 = estimate_all(all_estimators(), **on_gpu, dtype=torch.float32)
    for name, est in cpu.items():
        assert gpu64[name].value == pytest.approx(est.value, rel=1e-12)
        assert gpu32[name].value == pytest.approx(est.value, rel=1e-5)
        # Different draws on the GPU: the interval agrees to bootstrap noise only.
        assert gpu64[name].upper - gpu64[name].lower == pytest.approx(est.upper - est.lower, rel=0.2)


def test_estimator_parameters_are_settings_not_constants():
    from deepbandit.errors import ConfigError
    from deepbandit.evaluation.estimators import SwitchDR
    from deepbandit.evaluation.evaluate import make_estimators

    default, tuned = (
        make_estimators(["switch_dr"])[0],
        make_estimators(["switch_dr"], {"switch_dr": {"tau": 5}})[0],
    )
    assert isinstance(default, SwitchDR) and default.tau == 10.0 and tuned.tau == 5
    with pytest.raises(ConfigError, match="estimator_params.switch_dr"):
        make_estimators(["switch_dr"], {"switch_dr": {"taus": 5}})
    with pytest.raises(ConfigError, match="unknown estimator"):
        make_estimators(["ips"], {"switchdr": {"tau": 5}})
