"""What every policy shares: the result type, input checks, the propensity floor and the inverse-CDF draw.

A policy turns a batch of B requests, each with up to A candidate images (padded, ``candidate_mask``), into
a full action distribution ``action_dist`` (B, A), then draws one action per row from exactly that
distribution with one uniform u per row. Logging ``action_dist[action]`` as the propensity is only correct
because the action is sampled from the same ``action_dist`` that is logged; nothing downstream may re-rank.

The uniforms come from a seeded ``numpy.random.Generator`` (fresh per request) or, for a sticky policy
(``sticky_window_seconds > 0``), from a hash of (seed, member_id, title_id, time window): see ``sticky``.

Only numpy is imported here: the serving layer (onnxruntime + numpy) runs these same policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from deepbandit.errors import ConfigError
from deepbandit.policies.sticky import sticky_uniforms

KEY_NAMES = ("member_id", "title_id", "timestamp")  # what a sticky draw is keyed by


@dataclass(frozen=True)
class Decisions:
    """One decision per request of a batch of B with A candidate positions.

    action          (B,)   int64, position of the chosen image among the row's candidates
    propensity      (B,)   float64, ``action_dist[b, action[b]]``, in (0, 1]
    action_dist     (B, A) float64, the distribution the action was drawn from: sums to 1 over the row's
                           valid candidates, exactly 0 on padding
    propensity_kind str    "exact", or "mc_estimate:<M>" when action_dist estimates the policy's
                           distribution from M Monte Carlo samples (the log contract's propensity_kind)
    """

    action: np.ndarray
    propensity: np.ndarray
    action_dist: np.ndarray
    propensity_kind: str


def fail_rows(bad: np.ndarray, message: str, values: np.ndarray | None = None) -> None:
    """Raise ValueError naming the first True index of ``bad`` (any shape).

    ``message`` formats ``{where}`` (the index, e.g. "3" or "3, 1") and ``{value}`` (``values`` there).
    """
    if not bad.any():
        return
    hits = np.argwhere(bad)
    first = tuple(int(i) for i in hits[0])
    value = values[first] if values is not None else None
    more = f" ({len(hits)} such {'rows' if bad.ndim == 1 else 'entries'})" if len(hits) > 1 else ""
    raise ValueError(message.format(where=", ".join(map(str, first)), value=value) + more)


def check_candidate_mask(candidate_mask: object, shape: tuple[int, int], like: str = "scores") -> np.ndarray:
    """Check ``candidate_mask`` (B, A) bool and that every row has a valid candidate; return n_valid (B,)."""
    if not isinstance(candidate_mask, np.ndarray):
        raise TypeError(f"candidate_mask must be a numpy array, got {type(candidate_mask).__name__}")
    if candidate_mask.dtype != np.bool_:
        raise TypeError(f"candidate_mask must be bool, got dtype {candidate_mask.dtype}")
    if candidate_mask.shape != shape:
        raise ValueError(
            f"candidate_mask must have shape (B, A) = {shape} to match {like}, got {candidate_mask.shape}"
        )
    n_valid = candidate_mask.sum(axis=1)
    fail_rows(
        n_valid == 0,
        "candidate_mask row {where} has no valid candidate (every entry False); each row needs at least one",
    )
    return n_valid


def check_values(name: str, x: object, ndim: int) -> np.ndarray:
    """Check that ``x`` is a floating numpy array with ``ndim`` dimensions."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array, got {type(x).__name__} (convert tensors with .numpy())"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be floating, got dtype {x.dtype}")
    if x.ndim != ndim:
        want = "(B, A)" if ndim == 2 else "(B, S, A)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    return x


def check_finite(name: str, x: np.ndarray, candidate_mask: np.ndarray) -> None:
    """Every value of a valid candidate must be finite; padding may hold anything (PAD_LOGIT, -inf, NaN).

    x (B, A) or (B, S, A); candidate_mask (B, A).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the sum is the case looked for
        if np.isfinite(x.sum()):  # one pass in the usual case: NaN and inf propagate into the sum
            return
    mask = candidate_mask if x.ndim == 2 else candidate_mask[:, None, :]
    bad = ~np.isfinite(x) & mask
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}[{', '.join(map(str, first))}] = {x[first]} is not finite, on a valid candidate "
            f"(candidate_mask[{first[0]}, {first[-1]}] is True)"
            + (f" ({int(bad.sum())} such entries)" if bad.sum() > 1 else "")
        )


def check_key(name: str, x: object, batch: int) -> np.ndarray:
    """A (B,) integer key as int64 (datetime64 timestamps become whole seconds since the epoch)."""
    if x is None:
        raise ValueError(f"a sticky policy needs {name} (B,) int64 to key its draws; got None")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind == "M":
        fail_rows(np.isnat(x), f"{name}[{{where}}] is NaT; every sticky draw needs its time")
        x = x.astype("datetime64[s]")  # floors to the second, which cannot move a window boundary
    elif x.dtype.kind not in "iu" or x.dtype == np.uint64:
        raise TypeError(f"{name} must be int64 (or a narrower integer), got dtype {x.dtype}")
    if x.shape != (batch,):
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {x.shape}")
    return x.astype(np.int64)


def mix_uniform(dist: np.ndarray, candidate_mask: np.ndarray, n_valid: np.ndarray, weight) -> np.ndarray:
    """(1 - weight) * dist + weight spread uniformly over the valid candidates, in place on ``dist``.

    dist (B, A) float64, candidate_mask (B, A), n_valid (B,), weight a float or (B,) in [0, 1].
    """
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), n_valid.shape)
    dist *= (1.0 - weight)[:, None]
    np.add(dist, (weight / n_valid)[:, None], out=dist, where=candidate_mask)  # padding stays exactly 0
    return dist


def sample_actions(action_dist: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: the first position whose cumulative probability exceeds u. (B,) int64.

    action_dist (B, A) rows summing to 1; u (B,) in [0, 1). Never returns a position of probability 0.
    """
    if u.shape != action_dist.shape[:1]:
        raise ValueError(f"u must have shape (B,) = ({len(action_dist)},), got {u.shape}")
    if len(u) and not (u.min() >= 0.0 and u.max() < 1.0):
        raise ValueError(f"u must lie in [0, 1), got values in [{u.min()}, {u.max()}]")
    cdf = np.cumsum(action_dist, axis=1)
    action = (cdf > u[:, None]).argmax(axis=1)
    # The row sum can round a hair below 1 with u above it: no entry exceeds u and argmax says 0. That draw
    # fell in the rounding sliver at the top, which belongs to the last candidate of positive probability.
    over = np.flatnonzero(u >= cdf[:, -1]) if len(u) else np.empty(0, np.int64)
    if len(over):
        last = action_dist.shape[1] - 1 - (action_dist[over, ::-1] > 0).argmax(axis=1)
        action[over] = last
    return action


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Base of the policies: subclasses give ``_policy_dist``; exploration, checks and draws live here.

    min_propensity: floor f on every valid candidate; the distribution becomes
        (1 - A_valid * f) * p + f, so every valid candidate keeps p >= f and the row still sums to 1
        (needs f * A_valid <= 1 on every row).
    sticky_window_seconds: 0 draws fresh uniforms from the caller's ``rng``; > 0 keys each row's uniform by
        (seed, member_id, title_id, timestamp // sticky_window_seconds), so a member sees the same image of
        a title throughout a window while the distribution is unchanged.
    seed: the sticky hash's seed, in [0, 2**64); give each experiment its own.
    """

    name: ClassVar[str] = "policy"
    input_name: ClassVar[str] = "scores"  # how errors call the first argument
    input_ndim: ClassVar[int] = 2

    min_propensity: float = 0.0
    sticky_window_seconds: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        cls = type(self).__name__
        if not 0.0 <= self.min_propensity <= 1.0:
            raise ConfigError(f"{cls}.min_propensity must be in [0, 1], got {self.min_propensity}")
        if not isinstance(self.sticky_window_seconds, int | np.integer) or self.sticky_window_seconds < 0:
            raise ConfigError(
                f"{cls}.sticky_window_seconds must be an integer >= 0 (0 = not sticky), "
                f"got {self.sticky_window_seconds!r}"
            )
        if not isinstance(self.seed, int | np.integer) or not 0 <= self.seed < 1 << 64:
            raise ConfigError(f"{cls}.seed must be an integer in [0, 2**64), got {self.seed!r}")

    @property
    def sticky(self) -> bool:
        return self.sticky_window_seconds > 0

    def _policy_dist(self, x: np.ndarray, candidate_mask: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
        """(B, A) float64 distribution before exploration: sums to 1 on valid candidates, 0 on padding."""
        raise NotImplementedError

    def propensity_kind(self, x: np.ndarray) -> str:
        return "exact"

    def _check_input(self, x: object, candidate_mask: object) -> tuple[np.ndarray, np.ndarray]:
        """Check the first argument and the mask; return x and n_valid (B,)."""
        x = check_values(self.input_name, x, self.input_ndim)
        n_valid = check_candidate_mask(candidate_mask, (x.shape[0], x.shape[-1]), self.input_name)
        check_finite(self.input_name, x, candidate_mask)
        return x, n_valid

    def _checked(self, x: object, candidate_mask: object) -> tuple[np.ndarray, np.ndarray]:
        x, n_valid = self._check_input(x, candidate_mask)
        if self.min_propensity > 0:
            # a little slack: f = 1 / n rounded to a double may make n * f a hair above 1
            too_big = self.min_propensity * n_valid > 1.0 + 1e-12
            fail_rows(
                too_big,
                f"min_propensity={self.min_propensity} times the row's valid candidates exceeds 1 in row "
                "{where} ({value} candidates): no distribution can give each that much; "
                f"use min_propensity <= 1 / {int(n_valid.max()) if len(n_valid) else 1}",
                n_valid,
            )
        return x, n_valid

    def _epsilon(self) -> float:
        """The policy's own share of uniform exploration (EpsilonGreedy, Thompson)."""
        return 0.0

    def _explore(self, dist: np.ndarray, candidate_mask: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
        """Mix in epsilon, then the floor, as one uniform mixture (one pass over the batch):
        (1 - n f) ((1 - e) p + e / n) + f = (1 - w) p + w / n with 1 - w = (1 - e)(1 - n f)."""
        epsilon = self._epsilon()
        if epsilon == 0 and self.min_propensity == 0:
            return dist
        # n_valid * f may round a hair above 1 where f = 1 / n_valid; that row is exactly uniform then
        keep = (1.0 - epsilon) * (1.0 - np.minimum(n_valid * self.min_propensity, 1.0))
        return mix_uniform(dist, candidate_mask, n_valid, 1.0 - keep)

    def action_dist(self, x: np.ndarray, candidate_mask: np.ndarray) -> np.ndarray:
        """The policy's distribution alone, (B, A) float64, e.g. for off-policy evaluation of this policy.

        x: scores (B, A) (larger is better), or for Thompson posterior samples (B, S, A);
        candidate_mask (B, A) bool, True on real candidates. Rows sum to 1; padding gets exactly 0.
        """
        x, n_valid = self._checked(x, candidate_mask)
        return self._explore(self._policy_dist(x, candidate_mask, n_valid), candidate_mask, n_valid)

    def decide(
        self,
        x: np.ndarray,
        candidate_mask: np.ndarray,
        *,
        rng: np.random.Generator | None = None,
        member_id: np.ndarray | None = None,
        title_id: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
    ) -> Decisions:
        """Draw one action per row from ``action_dist(x, candidate_mask)``; see ``Decisions``.

        Non-sticky: ``rng`` (a numpy Generator) gives the uniforms; the keys are not used.
        Sticky: member_id, title_id (B,) int64 and timestamp (B,) int64 seconds (or datetime64) key them;
        ``rng`` must be None, so it is never unclear where the randomness came from.
        """
        x, n_valid = self._checked(x, candidate_mask)
        batch = x.shape[0]
        if self.sticky:
            if rng is not None:
                raise ValueError(
                    f"{type(self).__name__} is sticky: its draws are keyed by (member_id, title_id, "
                    "timestamp), so rng must be None"
                )
            keys = [
                check_key(n, k, batch)
                for n, k in zip(KEY_NAMES, (member_id, title_id, timestamp), strict=True)
            ]
            u = sticky_uniforms(self.seed, self.sticky_window_seconds, *keys)
        else:
            if not isinstance(rng, np.random.Generator):
                raise TypeError(
                    f"{type(self).__name__} is not sticky: pass rng=np.random.Generator, "
                    f"got {type(rng).__name__}"
                )
            u = rng.random(batch)
        dist = self._explore(self._policy_dist(x, candidate_mask, n_valid), candidate_mask, n_valid)
        action = sample_actions(dist, u)
        return Decisions(action, dist[np.arange(batch), action], dist, self.propensity_kind(x))
