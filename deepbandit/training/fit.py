"""One training step, in plain torch, for every trainer of the scorer.

``deepbandit train`` (through the LightningModule, which lets Lightning run backward and the optimiser)
and the closed loop's deep agents (``fit_epochs``) call the same ``TrainingStep`` and ``make_optimizer``,
so a change to the targets, the objective, the bootstrap or the optimiser reaches both.

Batches are ``(ImpressionBatch, row_key (B,) int64)``: the row key seeds each row's Poisson bootstrap
weights, so a row keeps its weights whichever batch, epoch, shard or round it comes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepbandit.data.tensors import ImpressionBatch
from deepbandit.losses.objectives import ObjectiveConfig, compute_loss, reward_targets
from deepbandit.losses.weights import poisson_bootstrap_weights
from deepbandit.models.encoders import ImageEmbeddingLookup, model_inputs


@dataclass
class OptimConfig:
    """The optimiser of a training step (AdamW); ``trainer`` and the loop's ``deep.optim`` hold one."""

    batch_size: int = 1024  # impressions per optimiser step (deepbandit train: split evenly over DDP ranks)
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW (decoupled) weight decay
    gradient_clip_val: float | None = None  # clip the gradient norm at this; null: no clipping


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (frozen ones, e.g. randomised priors, are left out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class TrainingStep:
    """(batch, row_key) -> the objective's parts (``loss`` with grad, diagnostics) for a scorer.

    ``transform``/``threshold`` turn rewards into labels (``reward_targets``); rows whose reward is not
    observed yet carry no weight. With ``bootstrap_seed`` (uncertainty models that train each member on
    its own bootstrap, ``Capabilities.bootstrap_members``) every member weights row r by its own
    Poisson(1) draw keyed by (seed, row_key[r]).
    """

    def __init__(
        self,
        model: nn.Module,
        lookup: ImageEmbeddingLookup,
        objective: ObjectiveConfig,
        *,
        transform: str = "identity",
        threshold: float = 0.5,
        bootstrap_seed: int | None = None,
    ):
        self.model, self.lookup, self.objective = model, lookup, objective
        self.transform, self.threshold, self.bootstrap_seed = transform, threshold, bootstrap_seed

    def __call__(self, batch: ImpressionBatch, row_key: Tensor) -> dict[str, Tensor]:
        target = reward_targets(batch.reward, self.transform, self.threshold)
        weights = None
        if self.bootstrap_seed is not None:
            weights = poisson_bootstrap_weights(row_key, self.model.n_members, self.bootstrap_seed)
        return compute_loss(
            self.objective,
            self.model.member_logits(model_inputs(batch, self.lookup)),
            batch.candidate_mask,
            batch.action,
            target,
            batch.pscore,
            weights,
            sample_mask=batch.reward_observed,
        )


def optimizer_step(
    step: TrainingStep,
    optimizer: torch.optim.Optimizer,
    batch: ImpressionBatch,
    row_key: Tensor,
    gradient_clip_val: float | None = None,
) -> Tensor:
    """One update on ``batch``: the step's loss, backward, optional gradient clipping, the optimiser step.
    Returns the loss (detached)."""
    loss = step(batch, row_key)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if gradient_clip_val is not None:
        nn.utils.clip_grad_norm_(step.model.parameters(), gradient_clip_val)
    optimizer.step()
    return loss.detach()


def fit_epochs(
    step: TrainingStep,
    optimizer: torch.optim.Optimizer,
    data: ImpressionBatch,
    row_key: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    gradient_clip_val: float | None = None,
) -> int:
    """``epochs`` shuffled passes of ``step`` over an in-memory batch, from the model's current weights and
    the optimiser's state (warm start); returns the number of optimiser steps taken."""
    step.model.train()
    n, steps = len(data), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for lo in range(0, n, batch_size):
            rows = order[lo : lo + batch_size]
            optimizer_step(step, optimizer, data[rows], row_key[rows], gradient_clip_val)
            steps += 1
    return steps


def fit_steps(
    step: TrainingStep,
    optimizer: torch.optim.Optimizer,
    data: ImpressionBatch,
    row_key: Tensor,
    *,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    gradient_clip_val: float | None = None,
) -> int:
    """``steps`` updates on minibatches drawn uniformly with replacement from everything in ``data`` (the
    online learner's replay buffer), from the current weights: the cost of a call does not grow with the
    buffer, unlike ``fit_epochs``. Returns ``steps``."""
    step.model.train()
    for _ in range(steps):
        rows = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        optimizer_step(step, optimizer, data[rows], row_key[rows], gradient_clip_val)
    return steps


@torch.no_grad()
def fit_conjugate_posterior(
    step: TrainingStep, data: ImpressionBatch, *, reset: bool = True, chunk: int = 8192
) -> int:
    """Fit a conjugate last layer (``Capabilities.conjugate_last_layer``: neural-linear) on ``data``'s
    observed rows with the step's labels, in chunks, at the network's current features; ``reset`` first
    forgets earlier rows and recentres the prior on the trained last layer. Returns the rows added.
    ``deepbandit train`` calls it once after training, the loop after every round (``reset`` only after a
    retrain, when the features have moved)."""
    model = step.model
    model.eval()
    if reset:
        model.reset_posterior()
    added = 0
    for lo in range(0, len(data), chunk):
        part = data[torch.arange(lo, min(lo + chunk, len(data)))]
        rows = part.reward_observed.nonzero().squeeze(1)
        if len(rows) < len(part):
            part = part[rows]
        if len(part):
            target = reward_targets(part.reward, step.transform, step.threshold)
            model.update_posterior(model_inputs(part, step.lookup), part.action, target)
            added += len(part)
    return added
