"""Off-policy estimators on arrays: Replay, IPS, SNIPS, DM, DR, SNDR and Switch-DR.

Inputs (rows = logged decisions, A = candidates per row, padded):

    reward               (n,)    observed reward r_i
    action               (n,)    int, position of the logged image among the row's candidates, a_i
    pscore               (n,)    logging propensity pi_b(a_i | x_i), in (0, 1]
    action_dist          (n, A)  target policy pi(a | x_i); one-hot for deterministic policies
                                 (see ``deterministic_action_dist``); 0 on padding
    candidate_mask       (n, A)  bool, optional: True on real candidates, False on padding
    estimated_rewards    (n, A)  optional: a reward model's q_hat(x_i, a), needed by DM, DR, SNDR, Switch-DR
    logging_action_dist  (n, A)  optional: the full pi_b(. | x_i), for an exact support check

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

(One module of about 700 lines on purpose: every estimator is a few lines of ``terms`` on the shared
``Rows``/``Terms`` machinery here, whose chunking, dtype handling and interval code they must not copy.)
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from tqdm import tqdm  # plain: tqdm.auto needs ipywidgets in a notebook and warns without them

from deepbandit.evaluation.checks import (
    Array,
    EstimationError,
    ReplayBiasWarning,
    SupportWarning,
    check_array,
    check_distribution,
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

INTERVAL_METHODS = ("bootstrap", "normal")


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
    needs_matches: ClassVar[bool] = True  # value is meaningless when no row carries weight
    label: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.label

    def terms(self, rows: Rows) -> Terms:
        raise NotImplementedError

    def check(self, rows: Rows) -> None:
        """Estimator-specific checks of one chunk (raise ValueError)."""

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
    return _Inputs(
        reward, action, pscore, action_dist, candidate_mask, estimated_rewards, logging_action_dist, n, a
    )


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
) -> tuple[Rows, torch.Tensor | None]:
    """Move rows start:stop to ``device``, check their values, and compute the shared per-row quantities.

    Returns the rows and the logging distribution (m, A) or None.
    """
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
    rows = Rows(start, reward, pscore, pi_a, pi_a / pscore, n_candidates, dist, dist_sums, q_pi, q_a, tol)
    return rows, logging


class _DiagnosticSums:
    """Running sums behind ``Diagnostics``."""

    def __init__(self) -> None:
        self.n = self.match_count = self.unsupported_rows = self.pscore_one_rows = 0
        self.sum_w = self.sum_w2 = self.sum_pi_a = self.unsupported_mass = 0.0
        self.max_w = 0.0
        self.min_k, self.max_k = math.inf, 0

    def add(self, rows: Rows, logging: torch.Tensor | None) -> None:
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
    intervals are paired) or "normal" (delta method, value +- z * se). ``chunk_size`` rows are moved to the
    device and processed at a time (default: about 4M array entries). The bootstrap draws depend on seed,
    chunk_size and device.

    Raises ValueError (TypeError for wrong types) naming the argument and row of the first bad value, and
    EstimationError when the data cannot support an estimate (no matched rows, deterministic logging).
    Warns SupportWarning when the target policy puts mass where the logs show nothing.
    """
    _check_options(estimators, interval, alpha, n_bootstrap, seed, chunk_size)
    inputs = _check_inputs(
        reward, action, pscore, action_dist, candidate_mask, estimated_rewards, logging_action_dist
    )
    need_q = any(e.needs_reward_model for e in estimators)
    if need_q and inputs.estimated_rewards is None:
        names = ", ".join(e.name for e in estimators if e.needs_reward_model)
        raise ValueError(
            f"{names}: estimated_rewards (n, A) is required (the reward model's prediction per candidate)"
        )
    if interval is not None and inputs.n < 2:
        raise ValueError(f"an interval needs at least 2 rows, got {inputs.n}")
    device = _resolve_device(inputs, device)
    chunk = chunk_size or max(1, 2**22 // inputs.n_candidates)

    k = 3 * len(estimators)
    if interval == "normal" and not standard_error:
        raise ValueError("interval='normal' is value +- z * se: it needs standard_error=True")
    moments = Moments(k, device, dtype, cross_products=standard_error)
    boot = PoissonBootstrap(n_bootstrap, k, seed, device, dtype) if interval == "bootstrap" else None
    sums = _DiagnosticSums()
    n_clipped = [0] * len(estimators)
    with tqdm(total=inputs.n, unit="rows", disable=not progress, desc="estimators") as bar:
        for start in range(0, inputs.n, chunk):
            rows, logging = _load_rows(inputs, start, min(start + chunk, inputs.n), device, dtype, need_q)
            sums.add(rows, logging)
            columns = []
            for i, e in enumerate(estimators):
                e.check(rows)
                t = e.terms(rows)
                n_clipped[i] += t.n_clipped
                zeros = torch.zeros_like(rows.reward)
                columns += [
                    zeros if t.c is None else t.c,
                    zeros if t.a is None else t.a,
                    torch.ones_like(rows.reward) if t.b is None else t.b,
                ]
            x = torch.stack(columns, dim=1)  # (m, 3 * n_estimators)
            moments.add(x)
            if boot is not None:
                boot.add(x)
            bar.update(len(rows.reward))

    shared = sums.diagnostics(inputs.logging_action_dist is not None, 0)
    if sums.pscore_one_rows == inputs.n and sums.unsupported_rows > 0:
        raise EstimationError(
            f"pscore is 1 on every row: the logging policy was deterministic, and the target policy differs "
            f"from it on {sums.unsupported_rows} rows, so nothing can be estimated off-policy from these logs"
        )
    if shared.support_warning:
        how = "" if shared.support_check == "exact" else " (known only on rows with pscore == 1)"
        warnings.warn(
            f"the target policy puts probability on candidates the logging policy never shows{how}: "
            f"{shared.unsupported_rows} of {inputs.n} rows, mean unsupported mass {shared.unsupported_mass:.4g}. "
            "Weighted estimators miss that part of the value (for rewards in [0, 1] IPS and DR are biased by up "
            "to that mass) and DM there is the reward model's extrapolation.",
            SupportWarning,
            stacklevel=3,
        )

    results = {}
    for i, e in enumerate(estimators):
        diagnostics = sums.diagnostics(inputs.logging_action_dist is not None, n_clipped[i])
        if e.needs_matches and diagnostics.match_count == 0:
            raise EstimationError(
                f"{e.name}: 0 of {inputs.n} rows match (the target policy gives probability 0 to every logged "
                "image); zero matches is no information, not a value of zero"
            )
        e.finish(diagnostics)
        cols = slice(3 * i, 3 * i + 3)
        sum_c, sum_a, sum_b = moments.sum[cols].tolist()
        value = ratio_value(sum_c, inputs.n, sum_a, sum_b)
        se = delta_method_se(moments, cols) if inputs.n > 1 and standard_error else math.nan
        lower = upper = None
        if interval == "normal":
            z = z_value(alpha)
            lower, upper = value - z * se, value + z * se
        elif interval == "bootstrap":
            lower, upper = percentile_interval(bootstrap_values(boot.totals, cols, e.name), alpha)
        results[e.name] = Estimate(
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
    return results
