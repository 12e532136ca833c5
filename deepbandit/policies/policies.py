"""Greedy, epsilon-greedy, softmax and Thompson sampling, each with its exact action distribution.

Every policy takes a batch of B rows of A candidate positions (``candidate_mask`` False on padding) and
returns the full distribution it samples from; ``Policy.decide`` draws from it and logs it. Ties in an
argmax go to the lowest position, the same rule in ``Greedy`` and in every Thompson member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from deepbandit.errors import ConfigError
from deepbandit.policies.base import Policy, check_candidate_mask, fail_rows


def masked_argmax(x: np.ndarray, candidate_mask: np.ndarray) -> np.ndarray:
    """First position of the largest valid value along the last axis.

    x (B, A) -> (B,) or (B, S, A) -> (B, S); candidate_mask (B, A). Padding never wins, whatever it holds.
    """
    best = x.argmax(axis=-1)
    # If the unmasked argmax is a valid candidate it is the masked one too (the first of the global maximum
    # is the first among the valid). Model outputs hold PAD_LOGIT on padding, so it almost always is: only
    # the rows where padding won (a larger value, or NaN) pay for a masked copy.
    rows = np.arange(len(x)) if x.ndim == 2 else np.arange(len(x))[:, None]
    lost = ~candidate_mask[rows, best]
    if lost.any():
        where = np.nonzero(lost)
        best[where] = np.where(candidate_mask[where[0]], x[where], -np.inf).argmax(axis=-1)
    return best


def _one_hot(best: np.ndarray, n_actions: int) -> np.ndarray:
    dist = np.zeros((len(best), n_actions))
    dist[np.arange(len(best)), best] = 1.0
    return dist


def _check_epsilon(owner: str, epsilon: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"{owner}.epsilon must be in [0, 1], got {epsilon}")


@dataclass(frozen=True)
class Greedy(Policy):
    """The best valid candidate (lowest position among ties) with probability 1: a one-hot distribution."""

    name: ClassVar[str] = "greedy"

    def _policy_dist(self, x, candidate_mask, n_valid):
        return _one_hot(masked_argmax(x, candidate_mask), x.shape[1])


@dataclass(frozen=True)
class EpsilonGreedy(Policy):
    """Greedy with probability 1 - epsilon, else a uniformly random valid candidate."""

    name: ClassVar[str] = "epsilon_greedy"
    epsilon: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_epsilon(type(self).__name__, self.epsilon)

    def _epsilon(self) -> float:
        return self.epsilon

    def _policy_dist(self, x, candidate_mask, n_valid):
        return _one_hot(masked_argmax(x, candidate_mask), x.shape[1])


@dataclass(frozen=True)
class Softmax(Policy):
    """p proportional to exp(score / temperature) over the valid candidates (computed in float64, stable)."""

    name: ClassVar[str] = "softmax"
    temperature: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"Softmax.temperature must be finite and > 0, got {self.temperature}")

    def _policy_dist(self, x, candidate_mask, n_valid):
        z = np.where(candidate_mask, x.astype(np.float64), -np.inf)
        # subtract the row max before dividing: exponents stay <= 0 for any temperature, padding exp(-inf) = 0
        z = np.exp((z - z.max(axis=1, keepdims=True)) / self.temperature)
        z /= z.sum(axis=1, keepdims=True)
        return z


THOMPSON_KINDS = ("ensemble", "mc_dropout")


@dataclass(frozen=True)
class Thompson(Policy):
    """Thompson sampling from posterior samples (B, S, A) of the scores (logits or expected rewards).

    The action distribution is the share of the S samples whose argmax (lowest position among ties) is
    each candidate, mixed with ``epsilon`` uniform exploration, then the ``min_propensity`` floor.

    kind="ensemble": the S samples are all K members of an ensemble (``posterior_samples(None)``: every
    member once, not members drawn with replacement). Drawing a member uniformly and showing its argmax
    chooses candidate a with probability exactly share(a) = #{members whose best is a} / K, so the inverse-CDF
    draw on that share is the same procedure in distribution and the logged propensity is exact.
    kind="mc_dropout": the S samples are M dropout passes; the share estimates the posterior probability
    that each candidate is best, and the propensity is logged as "mc_estimate:M". The action is still drawn
    from exactly the logged share, so the propensity is exact given the dropout masks; see docs/policies.md.

    Instead of the samples, ``decide`` and ``action_dist`` also take their winners (B, S) int: each sample's
    argmax, first position among ties, e.g. an ArgMax computed inside the exported model so that the host
    receives S integers per request instead of S * A floats. Winners must point at valid candidates.
    """

    name: ClassVar[str] = "thompson"
    input_name: ClassVar[str] = "posterior_samples"
    input_ndim: ClassVar[int] = 3
    kind: str
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in THOMPSON_KINDS:
            raise ConfigError(f"Thompson.kind must be one of {THOMPSON_KINDS}, got {self.kind!r}")
        _check_epsilon(type(self).__name__, self.epsilon)

    def _epsilon(self) -> float:
        return self.epsilon

    def propensity_kind(self, x: np.ndarray) -> str:
        return "exact" if self.kind == "ensemble" else f"mc_estimate:{x.shape[1]}"

    def _check_input(self, x, candidate_mask):
        if not (isinstance(x, np.ndarray) and x.dtype.kind in "iu"):
            x, n_valid = super()._check_input(x, candidate_mask)
        else:
            if x.ndim != 2:
                raise ValueError(f"winners must have shape (B, S), got {x.shape}")
            ok = isinstance(candidate_mask, np.ndarray) and candidate_mask.ndim == 2
            n_actions = candidate_mask.shape[1] if ok else 0
            n_valid = check_candidate_mask(candidate_mask, (len(x), n_actions), "winners")
            fail_rows(
                (x < 0) | (x >= n_actions), f"winners[{{where}}] = {{value}} is outside [0, {n_actions})", x
            )
            x = x.astype(np.int64, copy=False)
            fail_rows(
                ~candidate_mask.ravel()[x + n_actions * np.arange(len(x))[:, None]],
                "winners[{where}] = {value} points at padding (candidate_mask is False there)",
                x,
            )
        if x.shape[1] < 1:
            raise ValueError(f"{self.input_name} must hold at least one sample (S >= 1), got shape {x.shape}")
        return x, n_valid

    def _policy_dist(self, x, candidate_mask, n_valid):
        batch, n_samples = x.shape[:2]
        n_actions = candidate_mask.shape[1]
        best = x if x.ndim == 2 else masked_argmax(x, candidate_mask)  # (B, S)
        # count each row's winners with one bincount over flat (row, position) indices: no loop over rows
        flat = (best + n_actions * np.arange(batch)[:, None]).ravel()
        counts = np.bincount(flat, minlength=batch * n_actions).reshape(batch, n_actions)
        return counts / n_samples


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Greedy, EpsilonGreedy, Softmax, Thompson)}


def make_policy(name: str, **params) -> Policy:
    """The policy called ``name`` (a key of ``POLICIES``) built from its fields, e.g. from a config."""
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](**params)
