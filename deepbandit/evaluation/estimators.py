"""Off-policy estimators on arrays: Replay, IPS, SNIPS, DM, DR, SNDR, Switch-DR, DRos, MIPS, SNMIPS and
balanced IPS/DR for logs from several logging policies; paired lifts (``estimate_lift``).

Inputs (rows = logged decisions, A = candidates per row, padded):

    reward               (n,)    observed reward r_i
    action               (n,)    int, position of the logged image among the row's candidates, a_i
    pscore               (n,)    logging propensity pi_b(a_i | x_i), in (0, 1]
    action_dist          (n, A)  target policy pi(a | x_i); one-hot for deterministic policies
                                 (see ``deterministic_action_dist``); 0 on padding
    candidate_mask       (n, A)  bool, optional: True on real candidates, False on padding
    estimated_rewards    (n, A)  optional: a reward model's q_hat(x_i, a), needed by DM, DR, SNDR, Switch-DR
    logging_action_dist  (n, A)  optional: the full pi_b(. | x_i), for an exact support check; needed by MIPS
    action_groups        (n, A)  int, optional: a group per candidate (e.g. a cluster of image embeddings),
                                 needed by MIPS and SNMIPS
    mixture_pscore       (n,)    optional: sum_k (n_k / n) pi_k(a_i | x_i) over every logging policy k that
                                 wrote the logs (``mixture_pscore``), needed by the balanced estimators

numpy arrays (memory-mapped ones too) and torch tensors are accepted. Work runs in torch, chunk by chunk over
rows, on the tensors' device (or ``device``), in float64 by default, which makes the values agree with other
float64 implementations to rounding; ``dtype=torch.float32`` is allowed (e.g. on a GPU) and keeps about seven
significant digits. With w_i = pi(a_i | x_i) / pscore_i and q_hat(x, pi) = sum_a pi(a | x) q_hat(x, a):

    IPS        mean(min(w, clip) r)
    SNIPS      sum(w r) / sum(w)
    DM         mean(q_hat(x, pi))
    DR         mean(q_hat(x, pi) + min(w, clip) (r - q_hat(x, a)))
    SNDR       mean(q_hat(x, pi)) + sum(w (r - q_hat(x, a))) / sum(w)
    Switch-DR  mean(q_hat(x, pi) + 1{w <= tau} w (r - q_hat(x, a)))
    Replay     sum(1{pi(x) = a} r) / sum(1{pi(x) = a})     (uniform logging, deterministic pi)
    DRos       DR with w shrunk to lam w / (w^2 + lam)
    MIPS       mean(w_g r), w_g = pi(g_i | x_i) / pi_b(g_i | x_i), g_i the logged image's group
    SNMIPS     sum(w_g r) / sum(w_g)
    Bal. IPS   mean(w_m r), w_m = pi(a_i | x_i) / mixture_pscore_i; balanced DR likewise

(One module of about 700 lines on purpose: every estimator is a few lines of ``terms`` on the shared
``Rows``/``Terms`` machinery here, whose chunking, dtype handling and interval code they must not copy.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm  # plain: tqdm.auto needs ipywidgets in a notebook and warns without them

from deepbandit.evaluation.checks import (
    Array,
    EstimationError,
    ReplayBiasWarning,
    SupportWarning,
    check_array,
    check_distribution,
    deterministic_action_dist,
    fail_rows,
    sum_tolerance,
    to_chunk,
)
from deepbandit.evaluation.intervals import (
    Moments,
    PoissonBootstrap,
    bootstrap_values,
    delta_method_se,
    percentile_interval,
    ratio_value,
    z_value,
)

INTERVAL_METHODS = ("bootstrap", "normal", "bernstein")


@dataclass(frozen=True)
class Diagnostics:
    """How far to trust an estimate (see docs/evaluation.md for how to read these).

    Weights are the raw importance weights w_i = pi(a_i | x_i) / pscore_i, before any clipping.
    """

    n_rows: int
    ess: float  # effective sample size (sum w)^2 / sum w^2; equals n_rows only when every w is equal
    max_weight: float
    mean_weight: float  # 1 in expectation when propensities are right and the support is covered
    mean_weight_se: float  # standard error of mean_weight: |mean_weight - 1| >> 3 se flags a problem
    fraction_clipped: float  # rows with w > clip (IPS, DR) or w > tau (Switch-DR); 0 otherwise
    match_count: int  # rows where pi(a_i | x_i) > 0, i.e. rows that carry weight
    match_rate: float  # mean pi(a_i | x_i); Replay's take fraction for a deterministic policy
    support_check: str  # "exact" (logging_action_dist given) or "pscore_one_rows" (only rows with pscore 1)
    unsupported_rows: int  # rows where the target puts mass on candidates the logging policy never shows
    unsupported_mass: float  # mean over all rows of that mass: bounds IPS/DR bias for rewards in [0, 1]
    support_warning: bool
    min_candidates: int
    max_candidates: int


@dataclass(frozen=True)
class Estimate:
    """An estimate with its interval (``method`` None: no interval requested) and diagnostics."""

    estimator: str
    value: float
    se: float  # delta-method standard error, always computed
    lower: float | None
    upper: float | None
    method: str | None
    alpha: float | None
    n_bootstrap: int | None
    diagnostics: Diagnostics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Rows:
    """One validated chunk of rows on the compute device; every field is (m,) unless noted."""

    start: int  # global index of the chunk's first row
    reward: torch.Tensor
    pscore: torch.Tensor
    pi_a: torch.Tensor  # pi(a_i | x_i)
    weight: torch.Tensor  # pi_a / pscore
    n_candidates: torch.Tensor  # float, candidates per row
    action_dist: torch.Tensor  # (m, A)
    dist_sums: torch.Tensor  # row sums of action_dist, within tol of 1
    q_pi: torch.Tensor | None  # q_hat(x_i, pi) = sum_a pi(a | x_i) q_hat(x_i, a)
    q_a: torch.Tensor | None  # q_hat(x_i, a_i)
    tol: float  # tolerance on probability sums
    action: torch.Tensor  # int64 position of the logged image
    logging: torch.Tensor | None = None  # (m, A) the full logging distribution, when given
    groups: torch.Tensor | None = None  # (m, A) int64 action group per candidate, when given
    mixture_pscore: torch.Tensor | None = (
        None  # the mixture of the logging policies' propensities, when given
    )


@dataclass
class Terms:
    """Per-row terms (m,) of V = mean(c) + sum(a) / sum(b); a = None, b = None mean a = 0, b = 1."""

    c: torch.Tensor | None
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    n_clipped: int = 0


def _check_threshold(owner: str, name: str, value: float | None, allow_zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
    if not (value >= 0 if allow_zero else value > 0) or math.isnan(value):
        raise ValueError(f"{owner}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class OffPolicyEstimator:
    """Base class: subclasses define ``terms`` (and may add per-chunk checks or a final warning)."""

    needs_reward_model: ClassVar[bool] = False
    needs_inputs: ClassVar[tuple[str, ...]] = ()  # further optional arrays it needs (module docstring)
    needs_matches: ClassVar[bool] = True  # value is meaningless when no row carries weight
    is_mean: ClassVar[bool] = True  # V = mean(c): no ratio part, so an empirical Bernstein bound applies
    label: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.label

    def terms(self, rows: Rows) -> Terms:
        raise NotImplementedError

    def check(self, rows: Rows) -> None:
        """Estimator-specific checks of one chunk (raise ValueError)."""

    def prepare(self, inputs: _Inputs) -> OffPolicyEstimator:
        """The estimator to run on ``inputs`` (one with parameters chosen on the data, e.g. DRos's lam)."""
        return self

    def finish(self, diagnostics: Diagnostics) -> None:
        """Estimator-specific checks once every row was seen (raise or warn)."""

    def estimate(self, **kwargs: Any) -> Estimate:
        """Value, interval and diagnostics; takes the arguments of ``estimate_all`` except ``estimators``."""
        return estimate_all([self], **kwargs)[self.name]

    def estimate_policy_value(self, **kwargs: Any) -> float:
        """The estimated value of the target policy (arguments: the arrays of ``estimate_all``); no
        standard error is computed."""
        return self.estimate(standard_error=False, **kwargs).value

    def estimate_interval(
        self,
        *,
        method: str = "bootstrap",
        alpha: float = 0.05,
        n_bootstrap: int = 200,
        seed: int = 0,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``Estimate.to_dict()`` with a ``1 - alpha`` interval by ``method`` ("bootstrap" or "normal")."""
        if method not in INTERVAL_METHODS:
            raise ValueError(f"method must be one of {INTERVAL_METHODS}, got {method!r}")
        return self.estimate(
            interval=method, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed, **kwargs
        ).to_dict()


def _clipped(weight: torch.Tensor, clip: float | None) -> tuple[torch.Tensor, int]:
    if clip is None:
        return weight, 0
    return weight.clamp(max=clip), int((weight > clip).sum())


@dataclass(frozen=True)
class IPS(OffPolicyEstimator):
    """Inverse propensity scoring (Horvitz-Thompson): mean(w r), with w clipped at ``clip`` when given.

    Unbiased when pscore is the true logging propensity and the logging policy covers the target's support;
    clipping trades bias (downwards for nonnegative rewards) for variance.
    """

    clip: float | None = None
    label: ClassVar[str] = "ips"

    def __post_init__(self) -> None:
        _check_threshold("IPS", "clip", self.clip, allow_zero=False)

    @property
    def name(self) -> str:
        return "ips" if self.clip is None else f"ips(clip={self.clip:g})"

    def terms(self, rows: Rows) -> Terms:
        weight, n_clipped = _clipped(rows.weight, self.clip)
        return Terms(c=weight * rows.reward, n_clipped=n_clipped)


@dataclass(frozen=True)
class SNIPS(OffPolicyEstimator):
    """Self-normalised IPS (Swaminathan & Joachims 2015): sum(w r) / sum(w). Biased O(1/n), consistent,
    always inside the range of the observed rewards."""

    is_mean: ClassVar[bool] = False
    label: ClassVar[str] = "snips"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=None, a=rows.weight * rows.reward, b=rows.weight)


@dataclass(frozen=True)
class DM(OffPolicyEstimator):
    """Direct method: mean over rows of q_hat(x, pi). As good as the reward model; no weights used."""

    needs_reward_model: ClassVar[bool] = True
    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "dm"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=rows.q_pi)


@dataclass(frozen=True)
class DR(OffPolicyEstimator):
    """Doubly robust (Dudik, Langford & Li 2011): mean(q_hat(x, pi) + w (r - q_hat(x, a))), w clipped at
    ``clip`` when given. Unbiased if either the propensities or the reward model are right."""

    clip: float | None = None
    needs_reward_model: ClassVar[bool] = True
    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "dr"

    def __post_init__(self) -> None:
        _check_threshold("DR", "clip", self.clip, allow_zero=False)

    @property
    def name(self) -> str:
        return "dr" if self.clip is None else f"dr(clip={self.clip:g})"

    def terms(self, rows: Rows) -> Terms:
        weight, n_clipped = _clipped(rows.weight, self.clip)
        return Terms(c=rows.q_pi + weight * (rows.reward - rows.q_a), n_clipped=n_clipped)


@dataclass(frozen=True)
class SNDR(OffPolicyEstimator):
    """Self-normalised DR: mean(q_hat(x, pi)) + sum(w (r - q_hat(x, a))) / sum(w) (zr-obp's SNDR)."""

    is_mean: ClassVar[bool] = False
    needs_reward_model: ClassVar[bool] = True
    label: ClassVar[str] = "sndr"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=rows.q_pi, a=rows.weight * (rows.reward - rows.q_a), b=rows.weight)


@dataclass(frozen=True)
class SwitchDR(OffPolicyEstimator):
    """Switch-DR (Wang, Agarwal & Dudik 2017): DR's correction only on rows with w <= ``tau``, the reward
    model alone elsewhere: mean(q_hat(x, pi) + 1{w <= tau} w (r - q_hat(x, a))). tau = 0 is DM, tau = inf
    is DR."""

    tau: float
    needs_reward_model: ClassVar[bool] = True
    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "switch_dr"

    def __post_init__(self) -> None:
        if self.tau is None:
            raise TypeError("SwitchDR: tau must be a number, got None")
        _check_threshold("SwitchDR", "tau", self.tau, allow_zero=True)

    @property
    def name(self) -> str:
        return f"switch_dr(tau={self.tau:g})"

    def terms(self, rows: Rows) -> Terms:
        kept = rows.weight <= self.tau
        correction = torch.where(kept, rows.weight * (rows.reward - rows.q_a), 0.0)
        return Terms(c=rows.q_pi + correction, n_clipped=int((~kept).sum()))


@dataclass(frozen=True)
class Replay(OffPolicyEstimator):
    """Replay (Li, Chu, Langford & Wang 2011): the mean reward of the rows where a deterministic target policy
    picks the logged image, on logs from a uniformly random logging policy.

    With a constant candidate count K (pscore = 1/K everywhere) Replay equals SNIPS exactly, and
    IPS = Replay * K * match_rate. With varying K it weights rows by 1/K (a ReplayBiasWarning says so); SNIPS
    is the unbiased-in-the-limit form for that case.
    """

    is_mean: ClassVar[bool] = False
    label: ClassVar[str] = "replay"

    def check(self, rows: Rows) -> None:
        # Entries are >= 0, so a row is one-hot when its largest entry and its sum are both 1 (up to entries
        # below 1e-16 that vanish in the sum; terms() counts a match only where pi(a_i | x_i) == 1).
        largest = rows.action_dist.amax(dim=1)
        not_one_hot = (largest != 1) | (rows.dist_sums != 1)
        fail_rows(
            not_one_hot,
            rows.start,
            "Replay needs a deterministic target policy (one-hot action_dist), but action_dist[{i}] has "
            "largest probability {v}; use IPS or SNIPS for stochastic policies",
            largest,
        )
        not_uniform = (rows.pscore * rows.n_candidates - 1).abs() > rows.tol
        fail_rows(
            not_uniform,
            rows.start,
            "Replay assumes a uniformly random logging policy, but pscore[{i}] = {v} is not 1 / (the row's "
            "candidate count); use IPS or SNIPS for other logging policies",
            rows.pscore,
        )

    def terms(self, rows: Rows) -> Terms:
        match = (rows.pi_a == 1).to(rows.reward.dtype)
        return Terms(c=None, a=match * rows.reward, b=match)

    def finish(self, diagnostics: Diagnostics) -> None:
        if diagnostics.min_candidates != diagnostics.max_candidates:
            warnings.warn(
                f"Replay: rows have between {diagnostics.min_candidates} and {diagnostics.max_candidates} "
                "candidates; under uniform logging a row with K candidates matches with probability 1/K, so "
                "Replay weights rows by 1/K and is biased when reward depends on K. SNIPS corrects for this.",
                ReplayBiasWarning,
                stacklevel=4,
            )


def _shrunk(weight: torch.Tensor, lam: float) -> torch.Tensor:
    if math.isinf(lam):
        return weight
    return lam * weight / (weight * weight + lam) if lam > 0 else torch.zeros_like(weight)


@dataclass(frozen=True)
class DRos(OffPolicyEstimator):
    """DR with optimistic shrinkage (Su, Dimakopoulou, Krishnamurthy & Dudik 2020): DR with every weight w
    shrunk to lam w / (w^2 + lam). Small weights stay nearly unchanged, large ones (the rows that make DR
    noisy) shrink towards the reward model. lam = 0 is DM, lam = inf is DR; lam None (the default) picks lam
    on the data by ``tune_dros_lambda``, and the estimate's name shows the lam chosen."""

    lam: float | None = None
    needs_reward_model: ClassVar[bool] = True
    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "dros"

    def __post_init__(self) -> None:
        _check_threshold("DRos", "lam", self.lam, allow_zero=True)

    @property
    def name(self) -> str:
        return "dros" if self.lam is None else f"dros(lam={self.lam:g})"

    def prepare(self, inputs: _Inputs) -> DRos:
        if self.lam is not None:
            return self
        arrays = [_numpy(getattr(inputs, x)) for x in ("reward", "action", "pscore", "action_dist")]
        q = _numpy(inputs.estimated_rewards)
        if inputs.candidate_mask is not None:
            q = np.where(_numpy(inputs.candidate_mask), q, 0.0)
        return DRos(lam=tune_dros_lambda(*arrays, q))

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=rows.q_pi + _shrunk(rows.weight, self.lam) * (rows.reward - rows.q_a))


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def tune_dros_lambda(
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    estimated_rewards: np.ndarray,
) -> float:
    """DRos's lam that minimises an estimate of the mean squared error, variance + squared bias, over a grid
    from lam = 0 (DM) through multiples of the largest squared weight to lam = inf (DR). DR is unbiased, so
    DRos's bias is estimated by its difference from DR, less that difference's own sampling variance (else
    noise would read as bias). The selection of Su et al. 2020, section 4, with this bias estimate.
    Arrays as in the module docstring (numpy; estimated_rewards 0 on padding)."""
    n = len(reward)
    rows = np.arange(n)
    weight = action_dist[rows, action] / pscore
    q_pi = np.einsum("ij,ij->i", action_dist, estimated_rewards)
    residual = reward - estimated_rewards[rows, action]
    top = float(weight.max()) ** 2
    grid = [0.0, *(top * 10.0 ** (-k / 2) for k in range(13, -1, -1)), math.inf]
    best, best_mse = math.inf, math.inf
    for lam in grid:
        shrunk = _shrunk(torch.from_numpy(weight), lam).numpy()
        terms = q_pi + shrunk * residual
        diff = (shrunk - weight) * residual
        variance = terms.var(ddof=1) / n if n > 1 else 0.0
        bias2 = max(diff.mean() ** 2 - (diff.var(ddof=1) / n if n > 1 else 0.0), 0.0)
        if variance + bias2 < best_mse:
            best, best_mse = lam, variance + bias2
    return best


def marginal_weight(rows: Rows) -> torch.Tensor:
    """pi(g_i | x_i) / pi_b(g_i | x_i) (m,): both policies' mass on the logged image's group g_i."""
    same = rows.groups == rows.groups.gather(1, rows.action[:, None])  # (m, A) candidates in the logged group
    target = (rows.action_dist * same).sum(dim=1)
    logging = (rows.logging * same).sum(dim=1)  # >= pscore > 0: the logged image is in its own group
    return target / logging


@dataclass(frozen=True)
class MIPS(OffPolicyEstimator):
    """Marginalised IPS (Saito & Joachims 2022): IPS over groups of similar images instead of images,
    mean(w_g r) with w_g = pi(g_i | x_i) / pi_b(g_i | x_i). Unbiased when the reward depends on the image only
    through its group (no direct effect), and far less noisy than IPS when a title has many candidates; the
    groups come from ``action_groups`` (e.g. k-means on the image embeddings, ``embedding_groups``)."""

    needs_inputs: ClassVar[tuple[str, ...]] = ("logging_action_dist", "action_groups")
    label: ClassVar[str] = "mips"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=marginal_weight(rows) * rows.reward)


@dataclass(frozen=True)
class SNMIPS(OffPolicyEstimator):
    """Self-normalised MIPS: sum(w_g r) / sum(w_g)."""

    needs_inputs: ClassVar[tuple[str, ...]] = ("logging_action_dist", "action_groups")
    is_mean: ClassVar[bool] = False
    label: ClassVar[str] = "snmips"

    def terms(self, rows: Rows) -> Terms:
        w = marginal_weight(rows)
        return Terms(c=None, a=w * rows.reward, b=w)


@dataclass(frozen=True)
class BalancedIPS(OffPolicyEstimator):
    """Balanced IPS (Agarwal, Basu, Schnabel & Joachims 2017) for logs written by several logging policies
    (e.g. one per week): IPS against the mixture of all of them, w_m = pi(a_i | x_i) / mixture_pscore_i.
    Unbiased like per-row IPS and never noisier, because a row logged by a narrow policy borrows the support
    of the broad ones."""

    needs_inputs: ClassVar[tuple[str, ...]] = ("mixture_pscore",)
    label: ClassVar[str] = "balanced_ips"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=rows.pi_a / rows.mixture_pscore * rows.reward)


@dataclass(frozen=True)
class BalancedDR(OffPolicyEstimator):
    """Balanced DR: DR with the mixture weights of ``BalancedIPS``."""

    needs_reward_model: ClassVar[bool] = True
    needs_inputs: ClassVar[tuple[str, ...]] = ("mixture_pscore",)
    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "balanced_dr"

    def terms(self, rows: Rows) -> Terms:
        weight = rows.pi_a / rows.mixture_pscore
        return Terms(c=rows.q_pi + weight * (rows.reward - rows.q_a))


def mixture_pscore(logger_pscores: Array, logger: Array) -> np.ndarray:
    """The propensity of the mixture of K logging policies at each logged decision (n,).

    ``logger_pscores`` (n, K): pi_k(a_i | x_i), the probability that policy k gives the image logged in row i;
    ``logger`` (n,) int: which policy logged row i. The mixture weighs policy k by its share of rows n_k / n.
    """
    p = np.asarray(logger_pscores, dtype=np.float64)
    k = np.asarray(logger)
    if p.ndim != 2 or k.shape != (p.shape[0],):
        raise ValueError(f"logger_pscores must be (n, K) and logger (n,), got {p.shape} and {k.shape}")
    if k.dtype.kind not in "iu" or (len(k) and (k.min() < 0 or k.max() >= p.shape[1])):
        raise ValueError(f"logger must hold integer policy indices in [0, {p.shape[1]})")
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"logger_pscores[{i}, {j}] = {p[i, j]} is not a probability")
    own = p[np.arange(len(k)), k]
    if (own <= 0).any():
        i = int(np.flatnonzero(own <= 0)[0])
        raise ValueError(
            f"logger_pscores[{i}, {k[i]}] = {own[i]}: policy {k[i]} logged row {i} with probability 0"
        )
    shares = np.bincount(k, minlength=p.shape[1]) / len(k)
    return p @ shares


def embedding_groups(
    embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    candidate_mask: np.ndarray,
    n_groups: int,
    seed: int = 0,
) -> np.ndarray:
    """``action_groups`` (n, A) for MIPS: k-means (Lloyd, k-means++ start) of the image embeddings (n_images, d)
    into ``n_groups`` clusters, each candidate labelled by its image's cluster (-1 on padding).
    ``candidate_ids`` index rows of ``embeddings``."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    x = np.asarray(embeddings, dtype=np.float64)
    rng = np.random.default_rng(seed)
    k = min(n_groups, len(x))
    sq = (x * x).sum(axis=1)

    def dist2(c: np.ndarray) -> np.ndarray:  # (n_images, len(c)) squared distances, one matmul: no (n, k, d)
        return np.maximum(sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None], 0.0)

    centres = [x[rng.integers(len(x))]]
    nearest = dist2(np.array(centres))[:, 0]
    for _ in range(1, k):  # k-means++: far points are likely next centres
        if nearest.sum() == 0:
            break
        centres.append(x[rng.choice(len(x), p=nearest / nearest.sum())])
        nearest = np.minimum(nearest, dist2(np.array(centres[-1:]))[:, 0])
    c = np.array(centres)
    label = np.full(len(x), -1, dtype=np.int64)
    for _ in range(100):
        new = dist2(c).argmin(axis=1)
        if (new == label).all():
            break
        label = new
        c = np.array([x[label == j].mean(axis=0) if (label == j).any() else c[j] for j in range(len(c))])
    return np.where(candidate_mask, label[np.where(candidate_mask, candidate_ids, 0)], -1)


@dataclass
class _Inputs:
    """The checked arrays (types and shapes; values are checked per chunk)."""

    reward: Array
    action: Array
    pscore: Array
    action_dist: Array
    candidate_mask: Array | None
    estimated_rewards: Array | None
    logging_action_dist: Array | None
    action_groups: Array | None
    mixture_pscore: Array | None
    n: int
    n_candidates: int


def _check_inputs(
    reward: object,
    action: object,
    pscore: object,
    action_dist: object,
    candidate_mask: object,
    estimated_rewards: object,
    logging_action_dist: object,
    action_groups: object = None,
    mixture_pscore: object = None,
) -> _Inputs:
    check_array("reward", reward, (None,), "f")
    n = reward.shape[0]
    if n == 0:
        raise ValueError("reward has no rows: nothing to estimate")
    check_array("action", action, (n,), "i")
    check_array("pscore", pscore, (n,), "f")
    check_array("action_dist", action_dist, (n, None), "f")
    a = action_dist.shape[1]
    if a == 0:
        raise ValueError("action_dist has no candidate columns: shape (n, 0)")
    if candidate_mask is not None:
        check_array("candidate_mask", candidate_mask, (n, a), "b")
    if estimated_rewards is not None:
        check_array("estimated_rewards", estimated_rewards, (n, a), "f")
    if logging_action_dist is not None:
        check_array("logging_action_dist", logging_action_dist, (n, a), "f")
    if action_groups is not None:
        check_array("action_groups", action_groups, (n, a), "i")
    if mixture_pscore is not None:
        check_array("mixture_pscore", mixture_pscore, (n,), "f")
    return _Inputs(
        reward, action, pscore, action_dist, candidate_mask, estimated_rewards, logging_action_dist,
        action_groups, mixture_pscore, n, a,
    )  # fmt: skip


def _resolve_device(inputs: _Inputs, device: str | torch.device | None) -> torch.device:
    arrays = [x for x in vars(inputs).values() if isinstance(x, torch.Tensor)]
    devices = {x.device for x in arrays}
    if device is not None:
        return torch.device(device)
    if len(devices) > 1:
        raise ValueError(f"input tensors are on different devices {sorted(map(str, devices))}; pass device=")
    return devices.pop() if devices else torch.device("cpu")


def _load_rows(
    inputs: _Inputs, start: int, stop: int, device: torch.device, dtype: torch.dtype, need_q: bool
) -> Rows:
    """Move rows start:stop to ``device``, check their values, and compute the shared per-row quantities."""
    reward = to_chunk(inputs.reward, start, stop, device, dtype)
    fail_rows(
        ~torch.isfinite(reward),
        start,
        "reward[{i}] = {v} is not finite (NaN usually means the reward window is still open: drop such rows)",
        reward,
    )
    pscore = to_chunk(inputs.pscore, start, stop, device, dtype)
    fail_rows(~((pscore > 0) & (pscore <= 1)), start, "pscore[{i}] = {v} is outside (0, 1]", pscore)
    a = inputs.n_candidates
    action = to_chunk(inputs.action, start, stop, device, torch.int64)
    fail_rows((action < 0) | (action >= a), start, f"action[{{i}}] = {{v}} is outside [0, {a})", action)
    mask = None
    if inputs.candidate_mask is not None:
        mask = to_chunk(inputs.candidate_mask, start, stop, device, None)
        fail_rows(
            ~mask.gather(1, action[:, None]).squeeze(1),
            start,
            "action[{i}] = {v} points at padding (candidate_mask[{i}, {v}] is False)",
            action,
        )
        n_candidates = mask.sum(dim=1).to(dtype)
    else:
        n_candidates = torch.full_like(reward, a)

    tol = sum_tolerance(inputs.action_dist.dtype)
    dist = to_chunk(inputs.action_dist, start, stop, device, dtype)
    dist_sums = check_distribution("action_dist", dist, mask, start, tol)
    pi_a = dist.gather(1, action[:, None]).squeeze(1)

    q_pi = q_a = None
    if need_q:
        q = to_chunk(inputs.estimated_rewards, start, stop, device, dtype)
        # action_dist is 0 on padding, so finite padding values drop out of q_hat(x, pi) by themselves;
        # only non-finite ones (e.g. NaN from a model) need masking, a pass that valid input skips.
        q_pi = torch.einsum("ij,ij->i", dist, q)  # a non-finite q_hat on any entry makes this non-finite
        if mask is not None and not bool(torch.isfinite(q_pi).all()):
            q = torch.where(mask, q, 0.0)
            q_pi = torch.einsum("ij,ij->i", dist, q)
        q_a = q.gather(1, action[:, None]).squeeze(1)
        bad = ~torch.isfinite(q_pi) | ~torch.isfinite(q_a)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            entry = torch.nonzero(~torch.isfinite(q[j])).flatten()
            if not len(entry):  # every entry finite: sum_a pi q_hat overflowed
                raise ValueError(
                    f"estimated_rewards[{start + j}] overflows sum_a action_dist * estimated_rewards"
                )
            k = int(entry[0])
            raise ValueError(f"estimated_rewards[{start + j}, {k}] = {float(q[j, k])} is not finite")

    logging = None
    if inputs.logging_action_dist is not None:
        logging = to_chunk(inputs.logging_action_dist, start, stop, device, dtype)
        check_distribution("logging_action_dist", logging, mask, start, tol)
        logged = logging.gather(1, action[:, None]).squeeze(1)
        fail_rows(
            (logged - pscore).abs() > tol,
            start,
            "logging_action_dist[{i}, action[{i}]] = {v} differs from pscore[{i}]",
            logged,
        )
    groups = None
    if inputs.action_groups is not None:
        groups = to_chunk(inputs.action_groups, start, stop, device, torch.int64)
    mixture = None
    if inputs.mixture_pscore is not None:
        mixture = to_chunk(inputs.mixture_pscore, start, stop, device, dtype)
        fail_rows(
            ~((mixture > 0) & (mixture <= 1)), start, "mixture_pscore[{i}] = {v} is outside (0, 1]", mixture
        )
    return Rows(
        start=start, reward=reward, pscore=pscore, pi_a=pi_a, weight=pi_a / pscore, n_candidates=n_candidates,
        action_dist=dist, dist_sums=dist_sums, q_pi=q_pi, q_a=q_a, tol=tol, action=action, logging=logging,
        groups=groups, mixture_pscore=mixture,
    )  # fmt: skip


class _DiagnosticSums:
    """Running sums behind ``Diagnostics``."""

    def __init__(self) -> None:
        self.n = self.match_count = self.unsupported_rows = self.pscore_one_rows = 0
        self.sum_w = self.sum_w2 = self.sum_pi_a = self.unsupported_mass = 0.0
        self.max_w = 0.0
        self.min_k, self.max_k = math.inf, 0

    def add(self, rows: Rows) -> None:
        logging = rows.logging
        w = rows.weight
        self.n += len(w)
        self.sum_w += float(w.sum())
        self.sum_w2 += float((w * w).sum())
        self.max_w = max(self.max_w, float(w.max()))
        self.match_count += int((rows.pi_a > 0).sum())
        self.sum_pi_a += float(rows.pi_a.sum())
        self.min_k = min(self.min_k, int(rows.n_candidates.min()))
        self.max_k = max(self.max_k, int(rows.n_candidates.max()))
        pscore_one = rows.pscore == 1
        self.pscore_one_rows += int(pscore_one.sum())
        if logging is not None:
            unsupported = torch.einsum("ij,ij->i", rows.action_dist, (logging == 0).to(logging.dtype))
        else:
            # pscore 1: the logging policy showed only the logged image, so any other target mass is unsupported.
            unsupported = torch.where(pscore_one, 1 - rows.pi_a, 0.0)
        unsupported = torch.where(unsupported > rows.tol, unsupported, 0.0)  # rounding is not a support gap
        self.unsupported_rows += int((unsupported > 0).sum())
        self.unsupported_mass += float(unsupported.sum())

    def diagnostics(self, exact_support: bool, n_clipped: int) -> Diagnostics:
        n = self.n
        mean_w = self.sum_w / n
        var_w = max(self.sum_w2 / n - mean_w**2, 0.0) * n / max(n - 1, 1)  # rounding can dip below 0
        return Diagnostics(
            n_rows=n,
            ess=self.sum_w**2 / self.sum_w2 if self.sum_w2 > 0 else 0.0,
            max_weight=self.max_w,
            mean_weight=mean_w,
            mean_weight_se=math.sqrt(var_w / n),
            fraction_clipped=n_clipped / n,
            match_count=self.match_count,
            match_rate=self.sum_pi_a / n,
            support_check="exact" if exact_support else "pscore_one_rows",
            unsupported_rows=self.unsupported_rows,
            unsupported_mass=self.unsupported_mass / n,
            support_warning=self.unsupported_rows > 0,
            min_candidates=int(self.min_k),
            max_candidates=int(self.max_k),
        )


def _check_options(
    estimators: Sequence[OffPolicyEstimator],
    interval: str | None,
    alpha: float,
    n_bootstrap: int,
    seed: int,
    chunk_size: int | None,
) -> None:
    if not estimators:
        raise ValueError("estimators is empty")
    for e in estimators:
        if not isinstance(e, OffPolicyEstimator):
            raise TypeError(f"estimators must be OffPolicyEstimator instances, got {type(e).__name__}")
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators have duplicate names: {names}")
    if interval is not None and interval not in INTERVAL_METHODS:
        raise ValueError(f"interval must be None or one of {INTERVAL_METHODS}, got {interval!r}")
    if interval == "bernstein":
        ratio = [e.name for e in estimators if not e.is_mean]
        if ratio:
            raise ValueError(
                f"interval='bernstein' bounds a mean of per-row terms; {', '.join(ratio)} are ratios (use "
                "'bootstrap' for them)"
            )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


@dataclass
class _Pass:
    """What one pass over the rows accumulated for a list of (estimator, action_dist) columns."""

    n: int
    moments: Moments
    boot: PoissonBootstrap | None
    low: torch.Tensor  # (k,) per-column minimum, for the Bernstein bound's range
    high: torch.Tensor  # (k,) per-column maximum
    sums: list[_DiagnosticSums]  # one per action_dist
    n_clipped: list[int]  # one per estimator
    exact_support: bool


def _missing_inputs(estimators: Sequence[OffPolicyEstimator], inputs: _Inputs) -> None:
    need_q = [e.name for e in estimators if e.needs_reward_model]
    if need_q and inputs.estimated_rewards is None:
        raise ValueError(
            f"{', '.join(need_q)}: estimated_rewards (n, A) is required (the reward model's prediction per "
            "candidate)"
        )
    for e in estimators:
        missing = [x for x in e.needs_inputs if getattr(inputs, x) is None]
        if missing:
            raise ValueError(f"{e.name} needs {' and '.join(missing)} (see the estimators module docstring)")


def _one_pass(
    specs: Sequence[tuple[OffPolicyEstimator, int]],
    inputs: _Inputs,
    dists: Sequence[Array],
    *,
    interval: str | None,
    n_bootstrap: int,
    seed: int,
    chunk_size: int | None,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
    standard_error: bool,
) -> _Pass:
    """Accumulate the three term columns of each (estimator, index into ``dists``) over every chunk of rows;
    all columns see the same rows and the same bootstrap counts, so they can be compared pairwise."""
    need_q = [any(e.needs_reward_model for e, d in specs if d == i) for i in range(len(dists))]
    chunk = chunk_size or max(1, 2**22 // inputs.n_candidates)
    k = 3 * len(specs)
    moments = Moments(k, device, dtype, cross_products=standard_error or interval == "bernstein")
    boot = PoissonBootstrap(n_bootstrap, k, seed, device, dtype) if interval == "bootstrap" else None
    low = torch.full((k,), math.inf, device=device, dtype=dtype)
    high = torch.full((k,), -math.inf, device=device, dtype=dtype)
    sums = [_DiagnosticSums() for _ in dists]
    n_clipped = [0] * len(specs)
    per_dist = [replace(inputs, action_dist=d) for d in dists]
    sums_only = moments.m2 is None and boot is None
    with tqdm(total=inputs.n, unit="rows", disable=not progress, desc="estimators") as bar:
        for start in range(0, inputs.n, chunk):
            stop = min(start + chunk, inputs.n)
            rows = [
                _load_rows(x, start, stop, device, dtype, q) for x, q in zip(per_dist, need_q, strict=True)
            ]
            for s, r in zip(sums, rows, strict=True):
                s.add(r)
            terms = []
            for i, (e, d) in enumerate(specs):
                e.check(rows[d])
                t = e.terms(rows[d])
                n_clipped[i] += t.n_clipped
                terms.append(t)
            m = stop - start
            zero = torch.zeros((), device=device, dtype=dtype)
            count = torch.full((), float(m), device=device, dtype=dtype)
            column_sums = torch.stack([
                v for t in terms for v in (zero if t.c is None else t.c.sum(), zero if t.a is None else t.a.sum(),
                                           count if t.b is None else t.b.sum())
            ])  # fmt: skip
            if sums_only:  # values only: the column sums, without materialising the (m, 3k) block
                moments.add_sums(column_sums, m)
            else:
                zeros = torch.zeros(m, device=device, dtype=dtype)
                ones = torch.ones(m, device=device, dtype=dtype)
                x = torch.stack(
                    [v for t in terms for v in (zeros if t.c is None else t.c, zeros if t.a is None else t.a,
                                                ones if t.b is None else t.b)], dim=1,
                )  # fmt: skip  # (m, 3 * n_specs)
                moments.add(x, column_sums)
                if interval == "bernstein":  # the bound's range; no other path pays for it
                    low = torch.minimum(low, x.amin(dim=0))
                    high = torch.maximum(high, x.amax(dim=0))
                if boot is not None:
                    boot.add(x)
            bar.update(stop - start)
    return _Pass(inputs.n, moments, boot, low, high, sums, n_clipped, inputs.logging_action_dist is not None)


def _check_support(
    sums: _DiagnosticSums, shared: Diagnostics, n: int, who: str = "the target policy"
) -> None:
    if sums.pscore_one_rows == n and sums.unsupported_rows > 0:
        raise EstimationError(
            f"pscore is 1 on every row: the logging policy was deterministic, and {who} differs "
            f"from it on {sums.unsupported_rows} rows, so nothing can be estimated off-policy from these logs"
        )
    if shared.support_warning:
        how = "" if shared.support_check == "exact" else " (known only on rows with pscore == 1)"
        warnings.warn(
            f"{who} puts probability on candidates the logging policy never shows{how}: "
            f"{shared.unsupported_rows} of {n} rows, mean unsupported mass {shared.unsupported_mass:.4g}. "
            "Weighted estimators miss that part of the value (for rewards in [0, 1] IPS and DR are biased by up "
            "to that mass) and DM there is the reward model's extrapolation.",
            SupportWarning,
            stacklevel=4,
        )


def _bernstein(mean: float, var: float, value_range: float, n: int, delta: float) -> float:
    """Half-width of the empirical Bernstein bound (Maurer & Pontil 2009, theorem 4) on a mean of n terms with
    sample variance ``var`` spread over ``value_range``: holds on one side with probability 1 - delta."""
    log_term = math.log(2 / delta)
    return math.sqrt(2 * var * log_term / n) + 7 * value_range * log_term / (3 * (n - 1))


def _interval(
    acc: _Pass,
    weights: Sequence[tuple[slice, float]],
    value: float,
    se: float,
    interval: str | None,
    alpha: float,
    name: str,
    one_sided: bool = False,
) -> tuple[float | None, float | None]:
    """Interval of sum_j sign_j V_j over the column triples ``weights`` [(cols, sign)]; one-sided: (lower, inf)."""
    if interval is None:
        return None, None
    side = alpha if one_sided else alpha / 2
    if interval == "normal":
        z = z_value(2 * side)
        return value - z * se, math.inf if one_sided else value + z * se
    if interval == "bernstein":
        cols = [c.start for c, _ in weights]  # mean estimators: the value is the c column's mean
        grad = torch.zeros(
            acc.moments.sum.shape[0], dtype=acc.moments.sum.dtype, device=acc.moments.sum.device
        )
        for c, sign in weights:
            grad[c.start] = sign
        var = max(float(grad @ acc.moments.m2 @ grad) / (acc.n - 1), 0.0)
        spread = sum(float(acc.high[c] - acc.low[c]) for c in cols)  # >= the range of the signed sum
        half = _bernstein(value, var, spread, acc.n, side)
        return value - half, math.inf if one_sided else value + half
    values = sum(sign * bootstrap_values(acc.boot.totals, cols, name) for cols, sign in weights)
    if one_sided:
        q = torch.tensor([alpha], dtype=values.dtype, device=values.device)
        return float(torch.quantile(values, q)), math.inf
    return percentile_interval(values, alpha)


def _estimate_of(
    acc: _Pass, i: int, e: OffPolicyEstimator, d: int, interval: str | None, alpha: float, n_bootstrap: int,
    standard_error: bool,
) -> Estimate:  # fmt: skip
    diagnostics = acc.sums[d].diagnostics(acc.exact_support, acc.n_clipped[i])
    if e.needs_matches and diagnostics.match_count == 0:
        raise EstimationError(
            f"{e.name}: 0 of {acc.n} rows match (the target policy gives probability 0 to every logged "
            "image); zero matches is no information, not a value of zero"
        )
    e.finish(diagnostics)
    cols = slice(3 * i, 3 * i + 3)
    sum_c, sum_a, sum_b = acc.moments.sum[cols].tolist()
    value = ratio_value(sum_c, acc.n, sum_a, sum_b)
    se = delta_method_se(acc.moments, [(cols, 1.0)]) if acc.n > 1 and standard_error else math.nan
    lower, upper = _interval(acc, [(cols, 1.0)], value, se, interval, alpha, e.name)
    return Estimate(
        estimator=e.name,
        value=value,
        se=se,
        lower=lower,
        upper=upper,
        method=interval,
        alpha=alpha if interval else None,
        n_bootstrap=n_bootstrap if interval == "bootstrap" else None,
        diagnostics=diagnostics,
    )


@torch.no_grad()  # inputs may be model outputs that require grad: no graph to build here
def estimate_all(
    estimators: Sequence[OffPolicyEstimator],
    *,
    reward: Array,
    action: Array,
    pscore: Array,
    action_dist: Array,
    candidate_mask: Array | None = None,
    estimated_rewards: Array | None = None,
    logging_action_dist: Array | None = None,
    action_groups: Array | None = None,
    mixture_pscore: Array | None = None,
    interval: str | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    standard_error: bool = True,
) -> dict[str, Estimate]:
    """Run several estimators in one pass over the rows; returns ``{estimator.name: Estimate}``.

    ``standard_error=False`` (values only, no interval or a bootstrap one): the delta method's
    cross-products are not accumulated and ``se`` is NaN, which saves about a fifth of the work.

    Arrays: see the module docstring. ``interval``: None, "bootstrap" (percentile, Poisson resampling with
    ``n_bootstrap`` resamples from ``seed``; one set of resamples is shared by all estimators, so their
    intervals are paired), "normal" (delta method, value +- z * se) or "bernstein" (empirical Bernstein,
    Maurer & Pontil 2009: a finite-sample bound for estimators that are a mean of per-row terms, with the
    terms' range taken from the data, so wider than the others and meant for high-confidence lower bounds).
    ``chunk_size`` rows are moved to the device and processed at a time (default: about 4M array entries).
    The bootstrap draws depend on seed, chunk_size and device.

    Raises ValueError (TypeError for wrong types) naming the argument and row of the first bad value, and
    EstimationError when the data cannot support an estimate (no matched rows, deterministic logging).
    Warns SupportWarning when the target policy puts mass where the logs show nothing.
    """
    _check_options(estimators, interval, alpha, n_bootstrap, seed, chunk_size)
    inputs = _check_inputs(
        reward, action, pscore, action_dist, candidate_mask, estimated_rewards, logging_action_dist,
        action_groups, mixture_pscore,
    )  # fmt: skip
    _missing_inputs(estimators, inputs)
    if interval is not None and inputs.n < 2:
        raise ValueError(f"an interval needs at least 2 rows, got {inputs.n}")
    if interval == "normal" and not standard_error:
        raise ValueError("interval='normal' is value +- z * se: it needs standard_error=True")
    requested, estimators = estimators, [e.prepare(inputs) for e in estimators]
    acc = _one_pass(
        [(e, 0) for e in estimators], inputs, [action_dist], interval=interval, n_bootstrap=n_bootstrap,
        seed=seed, chunk_size=chunk_size, device=_resolve_device(inputs, device), dtype=dtype,
        progress=progress, standard_error=standard_error,
    )  # fmt: skip
    _check_support(acc.sums[0], acc.sums[0].diagnostics(acc.exact_support, 0), inputs.n)
    # keyed by the requested name ("dros"); the estimate's own name shows parameters chosen on the data
    return {
        r.name: _estimate_of(acc, i, e, 0, interval, alpha, n_bootstrap, standard_error)
        for i, (r, e) in enumerate(zip(requested, estimators, strict=True))
    }


@dataclass(frozen=True)
class _OnPolicy(OffPolicyEstimator):
    """The logging policy's own value: the mean logged reward (no weights)."""

    needs_matches: ClassVar[bool] = False
    label: ClassVar[str] = "on_policy"

    def terms(self, rows: Rows) -> Terms:
        return Terms(c=rows.reward)


@dataclass(frozen=True)
class Lift:
    """candidate value - incumbent value by one estimator on the same rows and bootstrap resamples."""

    estimator: str
    candidate_value: float
    incumbent_value: float
    lift: float
    se: float  # delta method over both policies' terms (their covariance included)
    lower: float | None
    upper: float | None  # inf for a one-sided bound
    method: str | None
    alpha: float
    one_sided: bool
    candidate: Estimate
    incumbent: Estimate  # estimator "on_policy" when the incumbent is the logging policy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def estimate_lift(
    estimator: OffPolicyEstimator,
    *,
    candidate_dist: Array,
    incumbent_dist: Array | None = None,
    reward: Array,
    action: Array,
    pscore: Array,
    candidate_mask: Array | None = None,
    estimated_rewards: Array | None = None,
    logging_action_dist: Array | None = None,
    action_groups: Array | None = None,
    mixture_pscore: Array | None = None,
    interval: str | None = "bootstrap",
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 0,
    one_sided: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> Lift:
    """The lift of ``candidate_dist`` over ``incumbent_dist`` (None: the logging policy, valued by its mean
    logged reward) with a paired interval: one pass, both policies' terms in the same rows and bootstrap
    resamples, so the noise they share cancels. ``one_sided``: the interval is (lower bound, inf) at level
    1 - alpha, what a deployment gate checks. Other arguments as for ``estimate_all``."""
    _check_options([estimator], interval, alpha, n_bootstrap, seed, None)
    inputs = _check_inputs(
        reward, action, pscore, candidate_dist, candidate_mask, estimated_rewards, logging_action_dist,
        action_groups, mixture_pscore,
    )  # fmt: skip
    _missing_inputs([estimator], inputs)
    if inputs.n < 2:
        raise ValueError(f"a lift interval needs at least 2 rows, got {inputs.n}")
    estimator = estimator.prepare(inputs)  # chosen for the candidate, used for both policies
    if incumbent_dist is None:
        incumbent, incumbent_dist = _OnPolicy(), deterministic_action_dist(action, inputs.n_candidates)
    else:
        incumbent = estimator
        check_array("incumbent_dist", incumbent_dist, (inputs.n, inputs.n_candidates), "f")
    acc = _one_pass(
        [(estimator, 0), (incumbent, 1)], inputs, [candidate_dist, incumbent_dist], interval=interval,
        n_bootstrap=n_bootstrap, seed=seed, chunk_size=None, device=_resolve_device(inputs, device), dtype=dtype,
        progress=False, standard_error=True,
    )  # fmt: skip
    _check_support(acc.sums[0], acc.sums[0].diagnostics(acc.exact_support, 0), inputs.n, "the candidate")
    if not isinstance(incumbent, _OnPolicy):
        _check_support(acc.sums[1], acc.sums[1].diagnostics(acc.exact_support, 0), inputs.n, "the incumbent")
    cand = _estimate_of(acc, 0, estimator, 0, interval, alpha, n_bootstrap, True)
    inc = _estimate_of(acc, 1, incumbent, 1, interval, alpha, n_bootstrap, True)
    weights = [(slice(0, 3), 1.0), (slice(3, 6), -1.0)]
    value = cand.value - inc.value
    se = delta_method_se(acc.moments, weights)
    lower, upper = _interval(acc, weights, value, se, interval, alpha, estimator.name, one_sided)
    return Lift(
        estimator=estimator.name, candidate_value=cand.value, incumbent_value=inc.value, lift=value, se=se,
        lower=lower, upper=upper, method=interval, alpha=alpha, one_sided=one_sided, candidate=cand, incumbent=inc,
    )  # fmt: skip
