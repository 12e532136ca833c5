"""Callbacks: stop on a non-finite loss (naming the step), and tell streaming datasets the epoch."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from deepbandit.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class FiniteLossCheck(L.Callback):
    """Stop the run on a NaN or infinite training loss, naming the epoch, step and batch.

    Each step folds "this loss is not finite" into a flag on the loss's device, which costs no host sync;
    the host reads the flag every ``every_n_steps`` steps, before every validation and at the end of every
    epoch. With 1 (the CPU default) the run stops right after the first bad step; with N > 1
    (``trainer=gpu``: a sync per step would stall a GPU that runs ahead of the host) up to N bad steps may
    have been applied first. Either way the run stops before any checkpoint of the broken weights: those
    are saved when validation ends, or at the epoch's end after the other callbacks' (Lightning runs
    ModelCheckpoint last).
    """

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"trainer.finite_check_every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._bad: torch.Tensor | None = None  # any non-finite loss since the last read
        self._unread = 0  # steps folded into the flag since the last read

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad = bad if self._bad is None else self._bad | bad
        self._unread += 1
        if self._unread >= self.every_n_steps:
            self._read(trainer, batch_idx, loss)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation (and the checkpoint saved when it ends) runs inside the training epoch, before its end
        if self._unread:
            self._read(trainer, None, None)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._unread:
            self._read(trainer, None, None)

    def _read(self, trainer: L.Trainer, batch_idx: int | None, loss: torch.Tensor | None) -> None:
        bad, n = bool(self._bad), self._unread
        self._bad, self._unread = None, 0
        if not bad:
            return
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if batch_idx is not None:
            where += f", batch {batch_idx}"
        if n == 1 and loss is not None:
            what = f"non-finite training loss {loss.item()} at {where}"
        else:
            what = f"a non-finite training loss in the {n} steps up to {where}"
        raise NonFiniteLossError(
            f"{what}; check learning rate, importance-weight clipping (loss.clip) and the data "
            "(propensities near 0)"
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
            logits = pl_module.model(self.inputs_fn(batch, pl_module.lookup)).float().cpu().numpy()
        values = self.evaluate(logits)["all"]
        self.history.append({"epoch": trainer.current_epoch, **values})
        pl_module.log("true/greedy", values["greedy"])
        pl_module.log("true/gain_over_unpersonalised", values["greedy"] - values["best_unpersonalised"])
        if "unpersonalised_bandit" in values:
            pl_module.log(
                "true/gain_over_unpersonalised_bandit", values["greedy"] - values["unpersonalised_bandit"]
            )


class EpochLines(L.Callback):
    """One log line per epoch (training loss, the monitored validation value with its interval, seconds):
    the progress report when the output is not a terminal, where a progress bar would print a wall of
    carriage returns. Reads the loss from the device once per epoch."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch's validation (callbacks' validation hooks run before the module has logged)
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if "train/loss" in m:
            parts.append(f"train/loss {float(m['train/loss']):.4g}")
        if self.monitor in m:
            value = f"{self.monitor} {float(m[self.monitor]):.4g}"
            lower, upper = m.get(f"{self.monitor}_lower"), m.get(f"{self.monitor}_upper")
            if lower is not None and upper is not None:
                value += f" [{float(lower):.4g}, {float(upper):.4g}]"
            parts.append(value)
        if "true/greedy" in m:
            parts.append(f"true/greedy {float(m['true/greedy']):.4g}")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        log.info(", ".join(parts))
