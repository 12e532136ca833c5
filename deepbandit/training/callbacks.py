"""Callbacks: stop on a non-finite loss (naming the step), and tell streaming datasets the epoch."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class FiniteLossCheck(L.Callback):
    """Raise as soon as a training loss is NaN or infinite, naming the epoch, step and batch.

    One scalar host sync per step (the progress bar pays for one anyway). The optimiser has already applied
    the bad step, but the run stops before the next one and before any checkpoint of the broken weights.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"non-finite training loss {loss.item()} at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}, batch {batch_idx}; check learning rate, importance-weight clipping "
                "(loss.clip) and the data (propensities near 0)"
            )


class StreamEpoch(L.Callback):
    """Give iterable datasets with ``set_epoch`` the epoch before each epoch's loader starts (Lightning
    only does this for samplers), so streaming shuffles differ per epoch and resume reproduces them."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


class TrueValueMonitor(L.Callback):
    """On simulated data: log the exact (ground-truth) value of the greedy policy on the validation rows
    after every validation, ``true/greedy`` and the gains over the best unpersonalised image and over the
    unpersonalised bandit learned from the training rows. Diagnostics
    only (the checkpoint still selects by the off-policy estimate, as it must on real logs).

    ``evaluate(logits (B, A)) -> dict`` computes the values; it is built by ``train`` from the world.
    """

    def __init__(self, evaluate, batch, inputs_fn):
        self.evaluate, self.batch, self.inputs_fn = evaluate, batch, inputs_fn
        self.history: list[dict] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            batch = self.batch.to(pl_module.device)
            logits = pl_module.model(**self.inputs_fn(batch, pl_module.lookup)).float().cpu().numpy()
        values = self.evaluate(logits)["all"]
        self.history.append({"epoch": trainer.current_epoch, **values})
        pl_module.log("true/greedy", values["greedy"])
        pl_module.log("true/gain_over_unpersonalised", values["greedy"] - values["best_unpersonalised"])
        if "unpersonalised_bandit" in values:
            pl_module.log(
                "true/gain_over_unpersonalised_bandit", values["greedy"] - values["unpersonalised_bandit"]
            )
