"""Sample weights: importance weights from logged propensities and per-member bootstrap weights.

The one place where clipping and normalising happen; the objectives only multiply by what comes out.
All functions are vectorised, keep statistics as tensors (no ``.item()``, no host sync) and only inspect
values when asked to ``validate``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_pscore(pscore: Tensor, name: str = "pscore") -> None:
    """Raise ValueError naming the first row whose propensity is non-finite or outside (0, 1]. Syncs."""
    bad = ~(torch.isfinite(pscore) & (pscore > 0) & (pscore <= 1))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name} must be finite and in (0, 1]; row {row} is {pscore[row].item()!r} "
            f"({int(bad.sum())} of {pscore.numel()} rows bad)"
        )


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's effective sample size (sum w)^2 / sum w^2 of weights (B,) >= 0: a scalar tensor in [0, B]."""
    return weights.sum() ** 2 / (weights * weights).sum().clamp(min=torch.finfo(weights.dtype).tiny)


def importance_weights(
    pscore: Tensor,
    clip: float | None = None,
    self_normalise: bool = False,
    validate: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance weights 1 / pscore for a uniform target over logged actions, with diagnostics.

    pscore (B,): logging propensity of the shown action, in (0, 1]. ``clip`` caps the weights at that
    value (>= 1; 1 makes every weight 1, the unweighted direct method). ``self_normalise`` divides by the
    batch mean, so weighted means become sum(w x) / sum(w) (ratio estimator: a little bias, far less
    variance). ``mask`` (B,) bool drops rows (e.g. rewards not yet observed) by giving them weight 0, so
    batches keep a fixed shape; every statistic is then over the n kept rows.

    Returns weights (B,) float32 and tensors: ``ess`` (Kish, of the final weights), ``ess_fraction``
    (ess / n), ``clipped_fraction`` (share of rows whose 1 / pscore exceeded ``clip``), ``max_weight``
    (largest raw 1 / pscore, before clipping) and ``n_rows`` (n).
    """
    if clip is not None and not clip >= 1:
        raise ValueError(f"clip must be >= 1 (importance weights 1 / pscore are >= 1) or None, got {clip}")
    if validate:
        check_pscore(pscore)
    raw = 1.0 / pscore.float()
    keep = torch.ones_like(raw) if mask is None else mask.to(raw.dtype)
    n_rows = keep.sum().clamp(min=1.0)  # an all-masked batch has no weight, not NaN statistics
    weights = (raw if clip is None else raw.clamp(max=clip)) * keep
    clipped = ((raw > clip).to(raw.dtype) * keep).sum() / n_rows if clip is not None else raw.new_zeros(())
    if self_normalise:
        weights = weights / (weights.sum() / n_rows).clamp(min=torch.finfo(raw.dtype).tiny)
    ess = effective_sample_size(weights)
    stats = {
        "ess": ess,
        "ess_fraction": ess / n_rows,
        "clipped_fraction": clipped,
        "max_weight": (raw * keep).max(),
        "n_rows": n_rows,
    }
    return weights, stats


# splitmix64 (Steele, Lea & Flood 2014) in int64 two's-complement arithmetic: torch has no uint64 math,
# multiplication wraps modulo 2**64 like uint64, and logical right shifts are arithmetic shifts masked.
def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: Tensor, n: int) -> Tensor:
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 finaliser of int64 tensors (bit-identical to the uint64 reference)."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


# Poisson(1) CDF at 0..31; P(X > 31) < 1e-35, so inverting a 53-bit uniform never runs off the table.
_POISSON1_CDF = [math.exp(-1) * sum(1 / math.factorial(j) for j in range(i + 1)) for i in range(32)]


def poisson_bootstrap_weights(row_key: Tensor, n_members: int, seed: int = 0) -> Tensor:
    """Online-bootstrap weights: (B, K) float32 iid Poisson(1), a pure function of (seed, row_key, member).

    row_key (B,) int64 must identify the logged row and stay the same across epochs (a dataset row
    index, or the request id hashed to int64), so each member trains on one fixed bootstrap resample
    of the log, whichever batch or device the row lands in. Poisson(1) weights approximate the
    multinomial bootstrap for large data (Oza & Russell 2001; Osband et al. 2016).
    """
    if row_key.dtype != torch.int64 or row_key.dim() != 1:
        raise ValueError(f"row_key must be an int64 (B,) tensor, got {row_key.dtype} {tuple(row_key.shape)}")
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    seed_key = splitmix64(torch.tensor(seed, dtype=torch.int64))
    row = splitmix64(row_key ^ seed_key.to(row_key.device))  # (B,)
    member = torch.arange(1, n_members + 1, dtype=torch.int64, device=row_key.device) * _GOLDEN
    bits = splitmix64(row.unsqueeze(1) + member)  # (B, K)
    uniform = _shr(bits, 11).double() * 2.0**-53  # top 53 bits -> [0, 1)
    cdf = torch.tensor(_POISSON1_CDF, dtype=torch.float64, device=row_key.device)
    return torch.searchsorted(cdf, uniform, right=True).float()  # number of CDF points <= u
