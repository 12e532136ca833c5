"""Policies: every distribution is a distribution, every logged propensity is the probability the action
was really drawn with (chi-square against empirical frequencies, sticky draws included), the ensemble share
is exact, sticky draws are stable inside a window, and bad inputs fail with messages naming the culprit."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from deepbandit.policies import (
    POLICIES,
    EpsilonGreedy,
    Greedy,
    Policy,
    Softmax,
    Thompson,
    hash_uniform,
    make_policy,
    masked_argmax,
    sample_actions,
    splitmix64,
    sticky_uniforms,
)

ALPHA = 1e-3  # chi-square threshold: one combined test per policy case, so few false alarms in the suite
A = 6
S = 16
HOUR = 3600
T0 = 1_700_000_000  # a timestamp in seconds, 2023-11-14


def fixed_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four rows of A = 6 positions: full, padding in the middle, a single candidate, and tied scores.

    Returns scores (4, A) float32, posterior samples (4, S, A) float32 and candidate_mask (4, A). Padding
    holds junk (NaN, inf, huge) that every policy must ignore.
    """
    rng = np.random.default_rng(seed)
    mask = np.array(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 0, 1, 1, 0, 1],
            [0, 0, 0, 1, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    scores = rng.normal(size=(4, A)).astype(np.float32)
    scores[3, :3] = [0.5, 0.5, 0.2]  # tie: greedy must take position 0
    samples = (scores[:, None, :] + rng.normal(scale=0.8, size=(4, S, A))).astype(np.float32)
    junk = np.array([np.nan, np.inf, 1e30, -np.inf, 7.0, np.nan], dtype=np.float32)
    scores = np.where(mask, scores, junk)
    samples = np.where(mask[:, None, :], samples, junk)
    return scores, samples, mask


CASES: dict[str, Policy] = {
    "greedy": Greedy(),
    "greedy_floor": Greedy(min_propensity=0.05),
    "epsilon": EpsilonGreedy(0.3),
    "softmax": Softmax(0.7),
    "softmax_floor": Softmax(0.2, min_propensity=0.1),
    "thompson_ensemble": Thompson("ensemble"),
    "thompson_ensemble_eps_floor": Thompson("ensemble", epsilon=0.1, min_propensity=0.02),
    "thompson_mc": Thompson("mc_dropout", min_propensity=0.05),
}
STICKY = {"sticky": dict(sticky_window_seconds=HOUR, seed=11), "fresh": {}}


def policy_case(case: str, draws: str) -> Policy:
    return dataclasses.replace(CASES[case], **STICKY[draws])


def inputs_for(policy: Policy, scores: np.ndarray, samples: np.ndarray) -> np.ndarray:
    return samples if isinstance(policy, Thompson) else scores


def decide(policy: Policy, x: np.ndarray, mask: np.ndarray, seed: int = 0, member_id=None, timestamp=None):
    """Decide with fresh draws (Generator(seed)) or sticky ones: distinct members, one title and time."""
    if not policy.sticky:
        return policy.decide(x, mask, rng=np.random.default_rng(seed))
    n = len(x)
    member_id = np.arange(n, dtype=np.int64) + 1000 * seed if member_id is None else member_id
    timestamp = np.full(n, T0, dtype=np.int64) if timestamp is None else timestamp
    return policy.decide(x, mask, member_id=member_id, title_id=np.full(n, 42, np.int64), timestamp=timestamp)


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom of counts (R, A) against probs (R, A), summed over rows.

    Candidates of probability 0 must never be drawn (asserted). Inside a row, candidates with expected
    count < 5 are pooled so the chi-square approximation holds.
    """
    assert counts[probs == 0].sum() == 0, "a candidate of probability 0 was drawn"
    stat, dof = 0.0, 0
    for c, p in zip(counts, probs, strict=True):  # a handful of rows, not a batch
        n = c.sum()
        keep = p > 0
        c, e = c[keep].astype(np.float64), n * p[keep]
        small = e < 5
        if small.any():  # pool them; a pool still under 5 joins the smallest remaining bin
            pool_c, pool_e, c, e = c[small].sum(), e[small].sum(), c[~small], e[~small]
            assert len(e), "too few draws for a chi-square test"
            if pool_e >= 5:
                c, e = np.append(c, pool_c), np.append(e, pool_e)
            else:
                c[e.argmin()] += pool_c
                e[e.argmin()] += pool_e
        stat += float(((c - e) ** 2 / e).sum())
        dof += len(c) - 1
    return stat, dof


def p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    stat, dof = chi_square(counts, probs)
    return 1.0 if dof == 0 else float(stats.chi2.sf(stat, dof))


def action_counts(action: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """counts (n_rows, A): how often each base row chose each position."""
    return np.bincount(rows * A + action, minlength=n_rows * A).reshape(n_rows, A)


# --- the contract: a distribution, logged consistently -----------------------------------------------


@pytest.mark.parametrize("draws", ["fresh", "sticky"])
@pytest.mark.parametrize("case", list(CASES))
def test_decisions_log_the_distribution_they_were_drawn_from(case, draws):
    policy = policy_case(case, draws)
    scores, samples, mask = fixed_rows()
    x = inputs_for(policy, scores, samples)
    d = decide(policy, x, mask)

    assert d.action.shape == (4,) and d.propensity.dtype == np.float64 and d.action_dist.dtype == np.float64
    np.testing.assert_allclose(d.action_dist.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (d.action_dist[~mask] == 0).all()
    assert (d.action_dist >= 0).all()
    assert mask[np.arange(4), d.action].all()
    np.testing.assert_array_equal(d.propensity, d.action_dist[np.arange(4), d.action])
    assert (d.propensity > 0).all()
    np.testing.assert_array_equal(d.action_dist, policy.action_dist(x, mask))
    assert d.propensity_kind == ("mc_estimate:16" if case == "thompson_mc" else "exact")
    if policy.min_propensity > 0:
        assert (d.action_dist[mask] >= policy.min_propensity - 1e-15).all()


@pytest.mark.parametrize("case", list(CASES))
def test_an_empty_batch_gives_empty_decisions(case):
    policy = policy_case(case, "sticky")
    scores, samples, mask = fixed_rows()
    empty = np.zeros(0, np.int64)
    d = policy.decide(
        inputs_for(policy, scores, samples)[:0], mask[:0], member_id=empty, title_id=empty, timestamp=empty
    )
    assert d.action.shape == (0,) and d.propensity.shape == (0,) and d.action_dist.shape == (0, A)


@pytest.mark.parametrize("draws", ["fresh", "sticky"])
@pytest.mark.parametrize("case", list(CASES))
def test_choice_frequencies_match_the_logged_distribution(case, draws):
    """Each fixed row repeated N times; a sticky policy keys every repeat by a distinct member."""
    n = 10_000
    policy = policy_case(case, draws)
    scores, samples, mask = fixed_rows()
    x = inputs_for(policy, scores, samples)
    rows = np.repeat(np.arange(4), n)
    d = decide(policy, x[rows], mask[rows], seed=1)
    counts = action_counts(d.action, rows, 4)
    probs = policy.action_dist(x, mask)
    np.testing.assert_array_equal(d.action_dist, probs[rows])

    assert p_value(counts, probs) > ALPHA

    # Counter-test: the same draws against a distribution 0.05 off on one row are rejected. (A one-hot
    # policy has nothing to move; its zero-probability candidates are checked by chi_square itself.)
    movable = (probs > 0.05).sum(axis=1) >= 2
    if movable.any():
        r = int(movable.argmax())
        wrong = probs.copy()
        hi, lo = int(wrong[r].argmax()), int(np.flatnonzero(mask[r] & (wrong[r] < wrong[r].max()))[0])
        wrong[r, hi] -= 0.05
        wrong[r, lo] += 0.05
        assert p_value(counts, wrong) < ALPHA


def test_sticky_draws_need_distinct_keys_to_match_frequencies():
    """Counter-test: one (member, title, window) repeated is one draw, not N, and chi-square sees it."""
    policy = policy_case("softmax", "sticky")
    scores, _, mask = fixed_rows()
    n = 2_000
    d = decide(
        policy, np.repeat(scores[:1], n, 0), np.repeat(mask[:1], n, 0), member_id=np.zeros(n, np.int64)
    )
    assert len(set(d.action.tolist())) == 1
    assert (
        p_value(action_counts(d.action, np.zeros(n, np.int64), 1), policy.action_dist(scores[:1], mask[:1]))
        < ALPHA
    )


# --- Thompson --------------------------------------------------------------------------------------


def test_ensemble_propensity_is_the_exact_member_share():
    # 4 members, 3 valid candidates and one padding position that holds the largest value or NaN.
    samples = np.array(
        [
            [
                [0.1, 0.9, 0.3, 5.0],  # best: 1 (padding's 5.0 ignored)
                [0.7, 0.2, 0.7, 0.0],  # tie between 0 and 2: lowest position, 0
                [0.0, 0.0, 1.0, 9.9],  # best: 2
                [0.2, 0.8, 0.1, np.nan],  # best: 1
            ]
        ]
    )
    mask = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(Thompson("ensemble").action_dist(samples, mask), [[0.25, 0.5, 0.25, 0.0]])
    # epsilon 0.2 over 3 candidates: 0.8 * share + 0.2 / 3
    np.testing.assert_allclose(
        Thompson("ensemble", epsilon=0.2).action_dist(samples, mask),
        [[0.2 + 0.2 / 3, 0.4 + 0.2 / 3, 0.2 + 0.2 / 3, 0.0]],
        rtol=0,
        atol=1e-15,
    )
    # floor 0.1 over 3 candidates: (1 - 0.3) * share + 0.1
    np.testing.assert_allclose(
        Thompson("ensemble", min_propensity=0.1).action_dist(samples, mask),
        [[0.275, 0.45, 0.275, 0.0]],
        rtol=0,
        atol=1e-15,
    )
    # both: epsilon first, then the floor on top: 0.7 * (0.8 * share + 0.2 / 3) + 0.1
    np.testing.assert_allclose(
        Thompson("ensemble", epsilon=0.2, min_propensity=0.1).action_dist(samples, mask),
        [[0.7 * (0.2 + 0.2 / 3) + 0.1, 0.7 * (0.4 + 0.2 / 3) + 0.1, 0.7 * (0.2 + 0.2 / 3) + 0.1, 0.0]],
        rtol=0,
        atol=1e-15,
    )
    d = Thompson("mc_dropout").decide(samples, mask, rng=np.random.default_rng(0))
    assert d.propensity_kind == "mc_estimate:4"
    assert Thompson("ensemble").decide(samples, mask, rng=np.random.default_rng(0)).propensity_kind == "exact"


def test_drawing_a_member_then_its_argmax_has_the_logged_distribution():
    """The procedure the docs describe (uniform member, its best image) against Thompson.action_dist."""
    rng = np.random.default_rng(3)
    _, samples, mask = fixed_rows()
    n = 10_000
    rows = np.repeat(np.arange(4), n)
    member = rng.integers(0, S, len(rows))
    picked = np.where(mask[rows], samples[rows, member], -np.inf).argmax(axis=1)
    probs = Thompson("ensemble").action_dist(samples, mask)
    assert p_value(action_counts(picked, rows, 4), probs) > ALPHA


def test_thompson_ties_and_single_sample_agree_with_greedy():
    scores, _, mask = fixed_rows()
    greedy = Greedy().action_dist(scores, mask)
    assert greedy[3].argmax() == 0  # positions 0 and 1 tie at 0.5
    np.testing.assert_array_equal(Thompson("ensemble").action_dist(scores[:, None, :], mask), greedy)


def test_masked_argmax_ignores_padding_that_wins_or_is_nan():
    # Padding larger than every valid value in some rows and NaN in others: the answer must equal the
    # plainly masked argmax on every row.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 5, 7))
    mask = rng.random((300, 7)) < 0.6
    mask[np.arange(300), rng.integers(0, 7, 300)] = True
    x[:100][~np.broadcast_to(mask[:100, None, :], (100, 5, 7))] = 10.0
    x[100:200][~np.broadcast_to(mask[100:200, None, :], (100, 5, 7))] = np.nan
    expected = np.where(mask[:, None, :], x, -np.inf).argmax(axis=-1)
    samples_dist = Thompson("ensemble").action_dist(x, mask)
    counts = np.stack([np.bincount(row, minlength=7) for row in expected]) / 5
    np.testing.assert_array_equal(samples_dist, counts)


def test_winners_computed_in_the_model_give_the_same_decisions():
    _, samples, mask = fixed_rows()
    winners = masked_argmax(samples, mask)  # (4, S): what an in-graph ArgMax returns
    for policy in (Thompson("ensemble", epsilon=0.1, min_propensity=0.02), Thompson("mc_dropout")):
        np.testing.assert_array_equal(policy.action_dist(winners, mask), policy.action_dist(samples, mask))
        a = policy.decide(samples, mask, rng=np.random.default_rng(4))
        b = policy.decide(winners.astype(np.int32), mask, rng=np.random.default_rng(4))
        np.testing.assert_array_equal(a.action, b.action)
        assert a.propensity_kind == b.propensity_kind


# --- greedy, epsilon, softmax ------------------------------------------------------------------------


def test_greedy_is_one_hot_and_epsilon_interpolates_to_uniform():
    scores, _, mask = fixed_rows()
    greedy = Greedy().action_dist(scores, mask)
    valid_scores = np.where(mask, scores, -np.inf)
    np.testing.assert_array_equal(greedy.argmax(1), valid_scores.argmax(1))
    assert ((greedy == 0) | (greedy == 1)).all()
    np.testing.assert_array_equal(EpsilonGreedy(0.0).action_dist(scores, mask), greedy)
    uniform = mask / mask.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(EpsilonGreedy(1.0).action_dist(scores, mask), uniform, rtol=0, atol=1e-15)


def test_softmax_matches_the_formula_and_is_stable():
    scores, _, mask = fixed_rows()
    got = Softmax(0.7).action_dist(scores, mask)
    for r in range(4):  # reference: scipy on the valid entries alone
        np.testing.assert_allclose(got[r, mask[r]], softmax(scores[r, mask[r]].astype(np.float64) / 0.7))
    huge = np.array([[1e6, -1e6, 1e6 - 1.0, 0.0]])
    m = np.ones((1, 4), bool)
    for temperature in (1e-300, 1.0, 1e300):
        dist = Softmax(temperature).action_dist(huge, m)
        assert np.isfinite(dist).all() and abs(dist.sum() - 1) < 1e-12
    np.testing.assert_array_equal(Softmax(1e-300).action_dist(huge, m), [[1.0, 0.0, 0.0, 0.0]])


def test_floor_keeps_every_candidate_in_support_and_may_fill_it_exactly():
    scores, _, mask = fixed_rows()
    dist = Greedy(min_propensity=0.05).action_dist(scores, mask)
    n_valid = mask.sum(1)
    best = np.where(mask, scores, -np.inf).argmax(1)
    # (1 - n * f) * one_hot + f on the valid candidates
    np.testing.assert_allclose(dist[np.arange(4), best], 1 - n_valid * 0.05 + 0.05, rtol=0, atol=1e-15)
    # 1/6 on the 6-candidate row is exactly uniform there
    full = Softmax(1.0, min_propensity=1 / 6).action_dist(scores[:1], mask[:1])
    np.testing.assert_allclose(full, 1 / 6, rtol=0, atol=1e-15)


# --- sampling ---------------------------------------------------------------------------------------


def test_inverse_cdf_never_lands_on_zero_probability_at_either_end():
    dist = np.array([[0.0, 0.5, 0.5, 0.0], [0.0, 0.5, 0.5, 0.0], [0.3, 0.3, 0.3999999999, 0.0]])
    u = np.array([0.0, np.nextafter(1.0, 0.0), np.nextafter(1.0, 0.0)])
    np.testing.assert_array_equal(sample_actions(dist, u), [1, 2, 2])
    with pytest.raises(ValueError, match=r"u must lie in \[0, 1\)"):
        sample_actions(dist, np.array([0.0, 1.0, 0.5]))


# --- sticky draws -----------------------------------------------------------------------------------


def test_splitmix64_known_answers_and_python_reference():
    # Published splitmix64 outputs (Vigna's splitmix64.c): state 0 and state 1234567, first draw.
    first = splitmix64(np.array([0, 1234567], dtype=np.uint64))
    assert first.tolist() == [0xE220A8397B1DCDAF, 6457827717110365317]

    def reference(x: int) -> int:  # the C code in Python integers
        m = (1 << 64) - 1
        z = (x + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    xs = np.random.default_rng(0).integers(0, 1 << 63, 200, dtype=np.int64).view(np.uint64) * np.uint64(2)
    assert splitmix64(xs).tolist() == [reference(int(x)) for x in xs]


def test_hash_uniform_is_uniform_and_agrees_with_the_simulator():
    from deepbandit.sim.logging_policies import hash_uniform as simulator_hash

    member = np.arange(-50_000, 50_000, dtype=np.int64)
    title = np.full_like(member, 7)
    u = hash_uniform(99, member, title)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    # neighbouring titles of the same members are independent draws
    assert abs(stats.pearsonr(u, hash_uniform(99, member, title + 1)).statistic) < 4 / np.sqrt(len(u))
    np.testing.assert_array_equal(u, simulator_hash(99, member, title))


def test_sticky_decision_is_stable_within_a_window_across_sessions_and_processes():
    scores, _, mask = fixed_rows()
    n = 400
    rows = np.zeros(n, np.int64)  # the full row for n members, two titles
    keys = dict(
        member_id=np.arange(n, dtype=np.int64),
        title_id=np.arange(n, dtype=np.int64) % 2,
        timestamp=np.full(n, T0 - T0 % HOUR, np.int64),
    )
    first = Softmax(0.7, sticky_window_seconds=HOUR, seed=3).decide(scores[rows], mask[rows], **keys)
    for offset in (0, 1, 1800, HOUR - 1):  # a new policy object each time: a new session
        later = dict(keys, timestamp=keys["timestamp"] + offset)
        again = Softmax(0.7, sticky_window_seconds=HOUR, seed=3).decide(scores[rows], mask[rows], **later)
        np.testing.assert_array_equal(again.action, first.action)
    # The next window is a fresh draw: a member keeps the image with probability sum p^2 only.
    nxt = dict(keys, timestamp=keys["timestamp"] + HOUR)
    moved = Softmax(0.7, sticky_window_seconds=HOUR, seed=3).decide(scores[rows], mask[rows], **nxt).action
    p_same = float((first.action_dist[0] ** 2).sum())
    same = (moved == first.action).mean()
    assert abs(same - p_same) < 4 * np.sqrt(p_same * (1 - p_same) / n)
    # datetime64 timestamps key exactly like int seconds
    as_datetime = dict(keys, timestamp=keys["timestamp"].astype("datetime64[s]").astype("datetime64[us]"))
    np.testing.assert_array_equal(
        Softmax(0.7, sticky_window_seconds=HOUR, seed=3)
        .decide(scores[rows], mask[rows], **as_datetime)
        .action,
        first.action,
    )
    # the same uniforms in another interpreter (another process, another hash seed)
    code = (
        "import numpy as np; from deepbandit.policies import sticky_uniforms; "
        f"print(sticky_uniforms(3, {HOUR}, np.arange({n}), np.arange({n}) % 2, "
        f"np.full({n}, {int(keys['timestamp'][0])})).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    here = sticky_uniforms(3, HOUR, keys["member_id"], keys["title_id"], keys["timestamp"])
    assert ast.literal_eval(out.stdout) == here.tolist()


def test_sticky_row_does_not_depend_on_its_batch_neighbours():
    scores, _, mask = fixed_rows()
    policy = Softmax(0.7, sticky_window_seconds=HOUR, seed=3)
    n = 500
    rows = np.zeros(n, np.int64)
    keys = dict(
        member_id=np.arange(n, dtype=np.int64), title_id=np.zeros(n, np.int64), timestamp=np.full(n, T0)
    )
    whole = policy.decide(scores[rows], mask[rows], **keys)
    pick = np.arange(0, n, 7)
    part = policy.decide(scores[rows[pick]], mask[rows[pick]], **{k: v[pick] for k, v in keys.items()})
    np.testing.assert_array_equal(part.action, whole.action[pick])


def test_sticky_windows_vary_and_match_the_distribution_over_time():
    """One member and title over many windows: each window is a fresh draw from the same distribution."""
    policy = Thompson("ensemble", epsilon=0.1, sticky_window_seconds=HOUR, seed=8)
    _, samples, mask = fixed_rows()
    n = 5_000
    rows = np.zeros(n, np.int64)
    d = policy.decide(
        samples[rows],
        mask[rows],
        member_id=np.full(n, 77, np.int64),
        title_id=np.full(n, 42, np.int64),
        timestamp=T0 + HOUR * np.arange(n, dtype=np.int64),
    )
    assert len(set(d.action.tolist())) > 1
    assert p_value(action_counts(d.action, rows, 1), policy.action_dist(samples[:1], mask[:1])) > ALPHA


# --- construction, registry, dependencies -------------------------------------------------------------


def test_make_policy_builds_every_registered_policy():
    assert set(POLICIES) == {"greedy", "epsilon_greedy", "softmax", "thompson"}
    assert make_policy("thompson", kind="mc_dropout", epsilon=0.1) == Thompson("mc_dropout", epsilon=0.1)
    assert make_policy("softmax", temperature=2.0, min_propensity=0.01) == Softmax(2.0, min_propensity=0.01)
    with pytest.raises(ValueError, match=r"unknown policy 'ucb'; choose one of \['epsilon_greedy'"):
        make_policy("ucb")


def test_policies_import_numpy_only():
    code = (
        "import sys, deepbandit.policies; "
        "heavy = {'torch', 'lightning', 'pyarrow', 'pandas', 'scipy', 'onnxruntime'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- bad inputs ---------------------------------------------------------------------------------------


def _bad(scores=None, samples=None, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, x, m = fixed_rows()
    return (s if scores is None else scores, x if samples is None else samples, m if mask is None else mask)


def _with(array: np.ndarray, index: tuple, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


_S, _X, _M = fixed_rows()
_KEYS = dict(member_id=np.arange(4, dtype=np.int64), title_id=np.zeros(4, np.int64), timestamp=np.full(4, T0))

# fmt: off
BAD_CALLS = [
    # (id, policy, first argument, candidate_mask, decide kwargs, error, message)
    ("nan score", Greedy(), _with(_S, (1, 2), np.nan), _M, {}, ValueError, r"scores\[1, 2\] = nan is not finite, on a valid candidate \(candidate_mask\[1, 2\] is True\)"),
    ("inf sample", Thompson("ensemble"), _with(_X, (0, 3, 1), np.inf), _M, {}, ValueError, r"posterior_samples\[0, 3, 1\] = inf is not finite"),
    ("row without candidates", Softmax(1.0), _S, _with(_M, (2,), False), {}, ValueError, r"candidate_mask row 2 has no valid candidate"),
    ("floor too big", Softmax(1.0, min_propensity=0.2), _S, _M, {}, ValueError, r"min_propensity=0\.2 times the row's valid candidates exceeds 1 in row 0 \(6 candidates\).*<= 1 / 6"),
    ("mask shape", Greedy(), _S, np.ones((4, 7), bool), {}, ValueError, r"candidate_mask must have shape \(B, A\) = \(4, 6\) to match scores, got \(4, 7\)"),
    ("mask shape thompson", Thompson("ensemble"), _X, _M[:3], {}, ValueError, r"candidate_mask must have shape \(B, A\) = \(4, 6\) to match posterior_samples, got \(3, 6\)"),
    ("mask dtype", Greedy(), _S, _M.astype(np.int8), {}, TypeError, r"candidate_mask must be bool, got dtype int8"),
    ("scores 3-d", Greedy(), _X, _M, {}, ValueError, r"scores must have shape \(B, A\), got \(4, 16, 6\)"),
    ("samples 2-d", Thompson("ensemble"), _S, _M, {}, ValueError, r"posterior_samples must have shape \(B, S, A\), got \(4, 6\)"),
    ("no samples", Thompson("ensemble"), _X[:, :0], _M, {}, ValueError, r"at least one sample \(S >= 1\), got shape \(4, 0, 6\)"),
    ("integer scores", Greedy(), np.zeros((4, A), np.int64), _M, {}, TypeError, r"scores must be floating, got dtype int64"),
    ("winner out of range", Thompson("ensemble"), _with(masked_argmax(_X, _M), (2, 5), 6), _M, {}, ValueError, r"winners\[2, 5\] = 6 is outside \[0, 6\)"),
    ("winner on padding", Thompson("ensemble"), _with(masked_argmax(_X, _M), (1, 0), 1), _M, {}, ValueError, r"winners\[1, 0\] = 1 points at padding \(candidate_mask is False there\)"),
    ("winners 3-d", Thompson("ensemble"), masked_argmax(_X, _M)[..., None], _M, {}, ValueError, r"winners must have shape \(B, S\), got \(4, 16, 1\)"),
    ("winners mask shape", Thompson("ensemble"), masked_argmax(_X, _M), _M[:2], {}, ValueError, r"candidate_mask must have shape \(B, A\) = \(4, 6\) to match winners, got \(2, 6\)"),
    ("list scores", Greedy(), _S.tolist(), _M, {}, TypeError, r"scores must be a numpy array, got list"),
    ("no rng", Greedy(), _S, _M, {"rng": None}, TypeError, r"Greedy is not sticky: pass rng=np.random.Generator, got NoneType"),
    ("sticky with rng", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, rng=np.random.default_rng(0)), ValueError, r"Greedy is sticky.*rng must be None"),
    ("sticky no member", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, member_id=None), ValueError, r"a sticky policy needs member_id \(B,\) int64"),
    ("sticky title shape", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, title_id=np.zeros(3, np.int64)), ValueError, r"title_id must have shape \(B,\) = \(4,\), got \(3,\)"),
    ("sticky float time", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, timestamp=np.full(4, 1.5)), TypeError, r"timestamp must be int64 \(or a narrower integer\), got dtype float64"),
    ("sticky NaT", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, timestamp=_with(np.full(4, T0).astype("datetime64[s]"), (2,), np.datetime64("NaT"))), ValueError, r"timestamp\[2\] is NaT"),
    ("sticky uint64 id", Greedy(sticky_window_seconds=60), _S, _M, dict(_KEYS, member_id=np.arange(4, dtype=np.uint64)), TypeError, r"member_id must be int64"),
]
# fmt: on


@pytest.mark.parametrize(
    ("policy", "x", "mask", "kwargs", "error", "message"),
    [c[1:] for c in BAD_CALLS],
    ids=[c[0] for c in BAD_CALLS],
)
def test_bad_inputs_are_named(policy, x, mask, kwargs, error, message):
    draws = kwargs or {"rng": np.random.default_rng(0)}
    with pytest.raises(error, match=message):
        policy.decide(x, mask, **draws)
    if not kwargs:  # a bad array rather than a bad draw: action_dist rejects it the same way
        with pytest.raises(error, match=message):
            policy.action_dist(x, mask)


# fmt: off
BAD_POLICIES = [
    ("epsilon above 1", lambda: EpsilonGreedy(1.5), r"EpsilonGreedy\.epsilon must be in \[0, 1\], got 1\.5"),
    ("epsilon nan", lambda: EpsilonGreedy(float("nan")), r"EpsilonGreedy\.epsilon must be in \[0, 1\], got nan"),
    ("thompson epsilon", lambda: Thompson("ensemble", epsilon=-0.1), r"Thompson\.epsilon must be in \[0, 1\], got -0\.1"),
    ("thompson kind", lambda: Thompson("bootstrap"), r"Thompson\.kind must be one of \('ensemble', 'mc_dropout'\), got 'bootstrap'"),
    ("temperature 0", lambda: Softmax(0.0), r"Softmax\.temperature must be finite and > 0, got 0\.0"),
    ("temperature inf", lambda: Softmax(float("inf")), r"Softmax\.temperature must be finite and > 0, got inf"),
    ("floor negative", lambda: Greedy(min_propensity=-0.01), r"Greedy\.min_propensity must be in \[0, 1\], got -0\.01"),
    ("floor above 1", lambda: Softmax(1.0, min_propensity=1.5), r"Softmax\.min_propensity must be in \[0, 1\], got 1\.5"),
    ("window negative", lambda: Greedy(sticky_window_seconds=-1), r"Greedy\.sticky_window_seconds must be an integer >= 0"),
    ("window float", lambda: Greedy(sticky_window_seconds=0.5), r"Greedy\.sticky_window_seconds must be an integer >= 0 \(0 = not sticky\), got 0\.5"),
    ("seed negative", lambda: Greedy(seed=-1), r"Greedy\.seed must be an integer in \[0, 2\*\*64\), got -1"),
]
# fmt: on


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in BAD_POLICIES], ids=[c[0] for c in BAD_POLICIES]
)
def test_bad_policy_fields_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_error_for_many_bad_rows_counts_them():
    mask = _M.copy()
    mask[[1, 3]] = False
    with pytest.raises(
        ValueError, match=re.escape("candidate_mask row 1 has no valid candidate") + r".*\(2 such rows\)"
    ):
        Greedy().action_dist(_S, mask)
