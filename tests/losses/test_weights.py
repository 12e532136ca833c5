"""Importance weights (clipping, self-normalisation, diagnostics) and Poisson bootstrap weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepbandit.losses.weights import (
    effective_sample_size,
    importance_weights,
    poisson_bootstrap_weights,
    splitmix64,
)

pytestmark = pytest.mark.usefixtures("single_thread")

PSCORE = torch.tensor([0.5, 0.25, 0.1, 1.0])  # raw weights 2, 4, 10, 1


def test_unclipped_weights_are_inverse_propensities_with_exact_diagnostics():
    w, stats = importance_weights(PSCORE)
    torch.testing.assert_close(w, torch.tensor([2.0, 4.0, 10.0, 1.0]))
    torch.testing.assert_close(stats["ess"], torch.tensor(17.0**2 / 121.0))
    torch.testing.assert_close(stats["ess_fraction"], torch.tensor(17.0**2 / 121.0 / 4))
    assert stats["clipped_fraction"] == 0 and stats["max_weight"] == 10


def test_clipping_caps_weights_and_counts_the_clipped_rows():
    w, stats = importance_weights(PSCORE, clip=3.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 3.0, 3.0, 1.0]))
    assert stats["clipped_fraction"] == 0.5
    assert stats["max_weight"] == 10  # raw, before clipping
    torch.testing.assert_close(stats["ess"], torch.tensor(9.0**2 / 23.0))
    ones, stats = importance_weights(PSCORE, clip=1.0)  # the unweighted direct method
    torch.testing.assert_close(ones, torch.ones(4))
    assert stats["clipped_fraction"] == 0.75  # every row with pscore < 1


def test_self_normalised_weights_average_to_one_and_keep_the_ess():
    w, stats = importance_weights(PSCORE, clip=5.0, self_normalise=True)
    raw = torch.tensor([2.0, 4.0, 5.0, 1.0])
    torch.testing.assert_close(w, raw / 3.0)
    torch.testing.assert_close(stats["ess"], effective_sample_size(raw))
    values = torch.tensor([1.0, 0.0, 3.0, 2.0])
    torch.testing.assert_close((w * values).mean(), (raw * values).sum() / raw.sum())  # ratio estimator


def test_masked_rows_get_zero_weight_and_leave_the_statistics():
    keep = torch.tensor([True, False, True, True])
    w, stats = importance_weights(PSCORE, clip=5.0, self_normalise=True, mask=keep)
    kept = torch.tensor([2.0, 5.0, 1.0])
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 5.0, 1.0]) / kept.mean())
    torch.testing.assert_close(stats["ess"], effective_sample_size(kept))
    torch.testing.assert_close(stats["ess_fraction"], effective_sample_size(kept) / 3)
    torch.testing.assert_close(stats["clipped_fraction"], torch.tensor(1 / 3))
    assert stats["max_weight"] == 10 and stats["n_rows"] == 3
    nothing, stats = importance_weights(PSCORE, mask=torch.zeros(4, dtype=torch.bool), self_normalise=True)
    assert torch.all(nothing == 0) and stats["ess"] == 0  # an empty batch: no weight, no NaN


def test_diagnostics_are_tensors_without_grad_or_host_sync():
    _, stats = importance_weights(PSCORE, clip=3.0)
    assert set(stats) == {"ess", "ess_fraction", "clipped_fraction", "max_weight", "n_rows"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5, float("nan"), float("inf")])
def test_invalid_propensities_are_named_with_their_row(bad):
    pscore = PSCORE.clone()
    pscore[2] = bad
    with pytest.raises(ValueError, match=r"pscore must be finite and in \(0, 1\]; row 2 is "):
        importance_weights(pscore, validate=True)


def test_clip_below_one_is_rejected():
    with pytest.raises(ValueError, match="clip must be >= 1"):
        importance_weights(PSCORE, clip=0.5)


# --- Poisson bootstrap --------------------------------------------------------------------------------


def _splitmix64_reference(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_splitmix64_matches_the_uint64_reference():
    x = np.array([0, 1, 2, 12345, -1, -(2**63), 2**63 - 1, 0x0123456789ABCDEF], dtype=np.int64)
    with np.errstate(over="ignore"):
        ref = _splitmix64_reference(x)
    got = splitmix64(torch.from_numpy(x)).numpy().view(np.uint64)
    np.testing.assert_array_equal(got, ref)


def test_bootstrap_weights_are_a_pure_function_of_seed_row_and_member():
    keys = torch.arange(1000, dtype=torch.int64) * 7919
    w = poisson_bootstrap_weights(keys, 5, seed=3)
    assert w.shape == (1000, 5) and w.dtype == torch.float32
    assert torch.equal(w, poisson_bootstrap_weights(keys, 5, seed=3))
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(poisson_bootstrap_weights(keys[perm], 5, seed=3), w[perm])  # batch order is irrelevant
    assert torch.equal(poisson_bootstrap_weights(keys, 3, seed=3), w[:, :3])  # members do not shift
    assert not torch.equal(poisson_bootstrap_weights(keys, 5, seed=4), w)
    assert torch.equal(w, w.round()) and (w >= 0).all()


def test_bootstrap_weights_are_poisson_one_and_independent_across_members():
    n_rows, k = 40000, 4
    w = poisson_bootstrap_weights(torch.arange(n_rows, dtype=torch.int64), k, seed=0).double()
    n = w.numel()
    # Poisson(1): mean 1 (SE 1/sqrt(n)), variance 1 (SE sqrt((mu4 - sigma^4) / n) = sqrt(3 / n)),
    # P(0) = e^-1 (binomial SE)
    assert abs(w.mean() - 1) < 5 / math.sqrt(n)
    assert abs(w.var() - 1) < 5 * math.sqrt(3 / n)
    p0 = math.exp(-1)
    assert abs((w == 0).double().mean() - p0) < 5 * math.sqrt(p0 * (1 - p0) / n)
    corr = torch.corrcoef(w.T)
    off_diagonal = corr[~torch.eye(k, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 / math.sqrt(n_rows)
    # neighbouring keys are not correlated either
    assert abs(torch.corrcoef(torch.stack([w[:-1, 0], w[1:, 0]]))[0, 1]) < 5 / math.sqrt(n_rows)


def test_bootstrap_rejects_non_integer_keys():
    with pytest.raises(ValueError, match="row_key must be an int64"):
        poisson_bootstrap_weights(torch.arange(4.0), 3)
