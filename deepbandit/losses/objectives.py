"""Training objectives: importance-weighted reward regression and counterfactual policy learning.

Shapes: B logged rows, K ensemble members (K = 1 for other models; (B, A) logits are read as K = 1),
A padded candidates. ``action`` (B,) is the position of the shown image in the candidate list,
``target`` (B,) the reward label in [0, 1] (see ``reward_targets``), ``pscore`` (B,) its logging
propensity. Every term is computed per sample (B, K) and weighted in one place, ``weighted_mean``.
Each objective returns named parts: ``loss`` (to minimise) and detached diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepbandit.errors import ConfigError
from deepbandit.losses.weights import check_pscore, importance_weights
from deepbandit.models.encoders import PAD_LOGIT

# --- labels --------------------------------------------------------------------------------------------


def _threshold(reward: Tensor, threshold: float | Sequence[float]) -> Tensor:
    if not isinstance(threshold, int | float):
        raise ConfigError(f"the threshold transform takes one float threshold, got {threshold!r}")
    return (reward >= threshold).float()


def _graded(reward: Tensor, threshold: float | Sequence[float]) -> Tensor:
    cuts = [threshold] if isinstance(threshold, int | float) else list(threshold)
    if not cuts or any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ConfigError(f"the graded transform needs strictly increasing cut points, got {threshold!r}")
    edges = torch.tensor(cuts, dtype=reward.dtype, device=reward.device)
    return torch.bucketize(reward, edges, right=True).float() / len(cuts)  # cut points <= r, over #cuts


REWARD_TRANSFORMS: dict[str, Callable[[Tensor, float | Sequence[float]], Tensor]] = {
    "identity": lambda reward, threshold: reward.float(),
    "threshold": _threshold,
    "graded": _graded,
}


def reward_targets(
    reward: Tensor,
    transform: str = "identity",
    threshold: float | Sequence[float] = 0.5,
    validate: bool = False,
) -> Tensor:
    """Quality-play labels in [0, 1] from logged rewards (B,) in [0, 1].

    identity: the reward itself (a soft label for cross-entropy). threshold: 1 where reward >= threshold
    else 0. graded: with increasing cut points t_1 < ... < t_m, the fraction of cut points <= reward,
    i.e. levels 0, 1/m, ..., 1 (e.g. cuts (0.25, 0.5, 0.75) map a 0.6 play to 2/3).
    """
    if transform not in REWARD_TRANSFORMS:
        raise ConfigError(
            f"unknown reward transform {transform!r}; choose one of {sorted(REWARD_TRANSFORMS)}"
        )
    if validate:
        bad = ~(torch.isfinite(reward) & (reward >= 0) & (reward <= 1))
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"reward must be finite and in [0, 1]; row {row} is {reward[row].item()!r}")
    return REWARD_TRANSFORMS[transform](reward, threshold)


# --- per-sample pieces ---------------------------------------------------------------------------------


def _members(logits: Tensor) -> Tensor:
    """(B, A) -> (B, 1, A); (B, K, A) unchanged; float32 so bf16 autocast logits are not summed in bf16."""
    return (logits.unsqueeze(1) if logits.dim() == 2 else logits).float()


def shown(values: Tensor, action: Tensor) -> Tensor:
    """values (B, K, A) at the shown candidate -> (B, K)."""
    return values.gather(2, action.view(-1, 1, 1).expand(-1, values.shape[1], 1)).squeeze(2)


def _cross_entropy(logit: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logit, target, reduction="none")


def _squared(logit: Tensor, target: Tensor) -> Tensor:
    return (torch.sigmoid(logit) - target).square()


def _huber(logit: Tensor, target: Tensor) -> Tensor:
    # delta 0.1 on the reward scale: quadratic for small errors, linear beyond (robust to rare large rewards)
    return F.huber_loss(torch.sigmoid(logit), target, reduction="none", delta=0.1)


# per-sample regression of the shown candidate's expected reward sigmoid(logit) on its label: (B, K)
REWARD_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy,  # Bernoulli (or soft) labels: the log-likelihood of a quality play
    "squared": _squared,  # real-valued rewards: squared error of the expected reward
    "huber": _huber,  # real-valued rewards with outliers
}


def reward_loss_per_sample(
    logits: Tensor, action: Tensor, target: Tensor, kind: str = "cross_entropy"
) -> Tensor:
    """The reward loss ``kind`` (``REWARD_LOSSES``) of the shown candidate's logit against the label:
    (B, K), unreduced."""
    logit = shown(_members(logits), action)
    return REWARD_LOSSES[kind](logit, target.float().unsqueeze(1).expand_as(logit))


def policy_probabilities(logits: Tensor, candidate_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """pi(a | x) = softmax(logits / temperature) over valid candidates: (B, K, A), exactly 0 at padding."""
    z = (_members(logits) / temperature).masked_fill(~candidate_mask.unsqueeze(1), PAD_LOGIT)
    return torch.softmax(z, dim=-1) * candidate_mask.unsqueeze(1)


def weighted_mean(values: Tensor, weights: Tensor, n_rows: Tensor | int, per_member: bool = False) -> Tensor:
    """sum_{i,k} w_ik v_ik / (n K), or per member (K,) sum_i w_ik v_ik / n: the single place where sample
    weights meet per-sample terms.

    values (B, K); weights (B, K) or (B, 1), zero on masked rows; n the number of unmasked rows. Weights
    are not renormalised here: importance weights are normalised (or not) in ``importance_weights`` and
    Poisson bootstrap weights have mean 1.
    """
    weighted = values * weights
    return weighted.sum(0) / n_rows if per_member else weighted.sum() / (n_rows * weighted.shape[1])


# --- objectives ----------------------------------------------------------------------------------------


@dataclass
class ObjectiveConfig:
    """Loss options. ``name``: key of ``OBJECTIVES``: "reward" (the reward regression only), "ips",
    "snips" or "dr" (reward loss * reward_weight + policy loss * policy_weight). ``reward_loss``: key of
    ``REWARD_LOSSES``, the regression of the shown image's expected reward sigmoid(logit) on its label:
    "cross_entropy" for Bernoulli rewards (quality plays), "squared" or "huber" for real-valued rewards
    in [0, 1] (an environment's rewards scaled into its declared range).

    clip / self_normalise: see ``importance_weights``. importance_weight_reward: also weight the reward
    regression by the importance weights, or not (the default: the direct method). The model predicts the
    reward of each (context, image), so it needs no reweighting when it can represent the truth, and the
    weights only add variance: on simulator logs (docs/training.md, scripts/compare_objectives.py) the
    unweighted regression's greedy policy was better in 5 of 6 runs, by up to 0.023 in true value on
    epsilon-greedy logs, whose rarely shown images carry weights near 25. Weighting can help a
    misspecified model. The policy objectives' terms are always weighted. temperature: of the softmax
    policy the policy objectives optimise.
    validate: check inputs every call (syncs; for debugging and the first batch).
    """

    name: str = "reward"  # reward (reward loss only) | ips | snips | dr (reward loss + policy term)
    # the reward regression: cross_entropy (Bernoulli or soft labels) | squared | huber (real-valued rewards)
    reward_loss: str = "cross_entropy"
    clip: float | None = None  # cap on the importance weights (>= 1); None: uncapped
    self_normalise: bool = False  # divide the importance weights by their batch mean
    # true: weight the reward regression by the (clipped) importance weights too
    importance_weight_reward: bool = False
    temperature: float = 1.0  # ips, snips, dr: temperature of the softmax policy they train; > 0
    reward_weight: float = 1.0  # weight of the reward loss in the loss
    policy_weight: float = 1.0  # ips, snips, dr: weight of the policy term in the loss
    validate: bool = False  # check the loss inputs on every call (host syncs; for debugging)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.name!r}; choose one of {sorted(OBJECTIVES)}")
        if self.reward_loss not in REWARD_LOSSES:
            raise ConfigError(
                f"unknown reward_loss {self.reward_loss!r}; choose one of {sorted(REWARD_LOSSES)}"
            )
        if self.clip is not None and not self.clip >= 1:
            raise ConfigError(f"ObjectiveConfig.clip must be >= 1 or None, got {self.clip}")
        if not self.temperature > 0:
            raise ConfigError(f"ObjectiveConfig.temperature must be > 0, got {self.temperature}")

    def unused_options(self) -> list[str]:
        """Options set to something that this objective never reads (a sweep over them repeats one run):
        ``reward`` without ``importance_weight_reward`` uses no importance weight, so neither ``clip`` nor
        ``self_normalise`` changes it."""
        if self.name != "reward" or self.importance_weight_reward:
            return []
        return [f"{k}={v}" for k, v in (("clip", self.clip), ("self_normalise", self.self_normalise)) if v]


@dataclass
class LossInputs:
    """Per-sample tensors shared by the objectives (built once by ``compute_loss``)."""

    logits: Tensor  # (B, K, A) float32
    candidate_mask: Tensor  # (B, A) bool
    action: Tensor  # (B,) long
    target: Tensor  # (B,) float in [0, 1]
    importance: Tensor  # (B, K): importance weight x bootstrap weight (0 on masked rows)
    bootstrap: Tensor  # (B, K) or (B, 1): bootstrap weight alone (ones without bootstrap; 0 on masked rows)
    n_rows: Tensor  # scalar: unmasked rows
    cfg: ObjectiveConfig


def _reward_parts(x: LossInputs) -> dict[str, Tensor]:
    per_sample = reward_loss_per_sample(x.logits, x.action, x.target, x.cfg.reward_loss)
    weights = x.importance if x.cfg.importance_weight_reward else x.bootstrap
    reward_loss = weighted_mean(per_sample, weights, x.n_rows)
    return {"loss": x.cfg.reward_weight * reward_loss, "reward_loss": reward_loss}


def _with_policy(x: LossInputs, value: Tensor) -> dict[str, Tensor]:
    """Add the policy term: maximise the estimated value ``value`` of the softmax policy."""
    parts = _reward_parts(x)
    parts["policy_loss"] = -value
    parts["policy_value"] = value.detach()
    parts["loss"] = parts["loss"] + x.cfg.policy_weight * parts["policy_loss"]
    return parts


def _pi_shown(x: LossInputs) -> Tensor:
    return shown(policy_probabilities(x.logits, x.candidate_mask, x.cfg.temperature), x.action)  # (B, K)


def reward_objective(x: LossInputs) -> dict[str, Tensor]:
    """Cross-entropy on the shown image only (importance-weighted with ``importance_weight_reward``)."""
    return _reward_parts(x)


def ips_objective(x: LossInputs) -> dict[str, Tensor]:
    """IPS counterfactual risk minimisation: V = mean_i w_i r_i pi(a_i | x_i) (Bottou et al. 2013)."""
    return _with_policy(x, weighted_mean(x.target.unsqueeze(1) * _pi_shown(x), x.importance, x.n_rows))


def snips_objective(x: LossInputs) -> dict[str, Tensor]:
    """Self-normalised IPS: V = sum_i w_i r_i pi_i / sum_i w_i pi_i (Swaminathan & Joachims 2015, Norm-POEM).

    The ratio (per ensemble member, then averaged) is invariant to adding a constant to rewards and does
    not reward the policy for simply avoiding logged actions (propensity overfitting).
    """
    pi = _pi_shown(x)
    num = weighted_mean(x.target.unsqueeze(1) * pi, x.importance, x.n_rows, per_member=True)
    den = weighted_mean(pi, x.importance, x.n_rows, per_member=True)
    return _with_policy(x, (num / den).mean())


def dr_objective(x: LossInputs) -> dict[str, Tensor]:
    """Doubly robust: V = mean_i [sum_a pi(a|x_i) q(x_i, a) + w_i pi(a_i|x_i) (r_i - q(x_i, a_i))].

    q = sigmoid(logits), the model's own expected-reward predictions, detached so the policy term does not
    train the reward model; the direct term is weighted by the bootstrap weights only.
    """
    pi = policy_probabilities(x.logits, x.candidate_mask, x.cfg.temperature)  # (B, K, A)
    q = torch.sigmoid(x.logits).detach() * x.candidate_mask.unsqueeze(1)
    direct = (pi * q).sum(-1)  # (B, K)
    correction = shown(pi, x.action) * (x.target.unsqueeze(1) - shown(q, x.action))
    value = weighted_mean(direct, x.bootstrap, x.n_rows) + weighted_mean(correction, x.importance, x.n_rows)
    return _with_policy(x, value)


OBJECTIVES: dict[str, Callable[[LossInputs], dict[str, Tensor]]] = {
    "reward": reward_objective,
    "ips": ips_objective,
    "snips": snips_objective,
    "dr": dr_objective,
}


def _validate(logits: Tensor, candidate_mask: Tensor, action: Tensor, target: Tensor, pscore: Tensor) -> None:
    b, a = candidate_mask.shape
    if logits.shape[0] != b or logits.shape[-1] != a or logits.dim() not in (2, 3):
        raise ValueError(
            f"logits must be (B, A) or (B, K, A) with (B, A) = {(b, a)}, got {tuple(logits.shape)}"
        )
    for name, t in (("action", action), ("target", target), ("pscore", pscore)):
        if t.shape != (b,):
            raise ValueError(f"{name} must have shape ({b},), got {tuple(t.shape)}")
    bad = (action < 0) | (action >= a)
    if not bad.any():
        bad = ~candidate_mask.gather(1, action.unsqueeze(1)).squeeze(1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"action at row {row} is {int(action[row])}, not a valid candidate position")
    bad = ~(torch.isfinite(target) & (target >= 0) & (target <= 1))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"target must be finite and in [0, 1]; row {row} is {target[row].item()!r}")
    check_pscore(pscore)


def compute_loss(
    cfg: ObjectiveConfig,
    logits: Tensor,
    candidate_mask: Tensor,
    action: Tensor,
    target: Tensor,
    pscore: Tensor,
    member_weights: Tensor | None = None,
    sample_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """The objective ``cfg.name`` on a batch.

    logits (B, A) or (B, K, A); member_weights (B, K) optional per-member bootstrap weights (see
    ``poisson_bootstrap_weights``); sample_mask (B,) bool optional rows to use (e.g. the batch's
    ``reward_observed``): other rows get weight 0 and leave every mean and statistic, but must still hold
    finite placeholder values. Returns ``loss`` (scalar, with grad), ``reward_loss``, for policy
    objectives ``policy_loss`` and ``policy_value``, and the importance-weight diagnostics of
    ``importance_weights`` (``ess``, ``ess_fraction``, ``clipped_fraction``, ``max_weight``, ``n_rows``).
    No host syncs unless ``cfg.validate``.
    """
    b = action.shape[0]
    k = 1 if logits.dim() == 2 else logits.shape[1]
    if cfg.validate:
        _validate(logits, candidate_mask, action, target, pscore)
        for name, t, shape in (
            ("member_weights", member_weights, (b, k)),
            ("sample_mask", sample_mask, (b,)),
        ):
            if t is not None and t.shape != shape:
                raise ValueError(f"{name} must be {shape} (B = {b}, K = {k}), got {tuple(t.shape)}")
    w, stats = importance_weights(pscore, cfg.clip, cfg.self_normalise, mask=sample_mask)
    bootstrap = w.new_ones(b, 1) if member_weights is None else member_weights.float()
    if sample_mask is not None:
        bootstrap = bootstrap * sample_mask.unsqueeze(1)
    inputs = LossInputs(
        logits=_members(logits),
        candidate_mask=candidate_mask,
        action=action,
        target=target.float(),
        importance=w.unsqueeze(1) * bootstrap,
        bootstrap=bootstrap,
        n_rows=stats["n_rows"],
        cfg=cfg,
    )
    parts = OBJECTIVES[cfg.name](inputs)
    return parts | stats
