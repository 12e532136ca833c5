"""The LightningModule: wiring only. It is handed its network, training step, optimiser factory and
validation metrics, and passes batches between them and Lightning.

Training calls the shared ``TrainingStep`` (``deepbandit.training.fit``, the same one the closed loop
uses). Validation collects the point logits (and posterior samples when the metrics need them) of every
validation row and hands the arrays to ``ValidationMetrics`` (``deepbandit.evaluation.epoch_metrics``).
Batches are ``(ImpressionBatch, row_key (B,) int64)``.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from deepbandit.data.tensors import ImpressionBatch
from deepbandit.evaluation.epoch_metrics import ValidationMetrics
from deepbandit.models.encoders import ImageEmbeddingLookup, model_inputs
from deepbandit.training.fit import TrainingStep

# what the training step reports besides the loss, logged when present
STEP_METRICS = ("reward_loss", "policy_value", "ess_fraction", "clipped_fraction")


class BanditModule(L.LightningModule):
    """model: the scorer; lookup: the image-embedding table; step: its training step; optimizer:
    model -> optimiser; metrics: the validation metrics; posterior_draws: samples per validation row when
    the metrics need them (None: every member); compile: torch.compile the step; seed: of the
    validation draws; log_every: the step counts at which training metrics are logged (a step that is a
    multiple of any, and each epoch's last), e.g. the logger's and the progress bar's: each ``self.log``
    costs Lightning about a millisecond of host work, more than a small batch's step."""

    def __init__(
        self,
        model: nn.Module,
        lookup: ImageEmbeddingLookup,
        step: TrainingStep,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        metrics: ValidationMetrics,
        *,
        posterior_draws: int | None = None,
        compile: bool = False,
        seed: int = 0,
        log_every: tuple[int, ...] = (1,),
    ):
        super().__init__()
        self.model, self.lookup = model, lookup  # submodules: they move with the module and are checkpointed
        self.step, self.make_optimizer, self.metrics = step, optimizer, metrics
        self.posterior_draws, self.seed, self.log_every = posterior_draws, seed, log_every
        self.step_fn = torch.compile(step.__call__) if compile else step
        self._val: list[dict[str, Tensor]] = []
        self.val_metrics: dict[str, float] = {}
        self.val_history: list[dict[str, float]] = []  # one entry per validation run (epoch)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Lightning's default walks the batch as a generic collection, deep-copying every dataclass on
        # the way: at batch 64 on a CPU that cost more than the step itself. Ours knows its one type.
        data, row_key = batch
        return data.to(device, non_blocking=True), row_key.to(device, non_blocking=True)

    def training_step(self, batch: tuple[ImpressionBatch, Tensor], batch_idx: int) -> Tensor:
        data, row_key = batch
        parts = self.step_fn(data, row_key)
        step = self.global_step + 1  # this step's number once taken: the logger writes at multiples
        if (
            not any(step % n == 0 for n in self.log_every)
            and batch_idx + 1 != self.trainer.num_training_batches
        ):
            return parts["loss"]
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=len(data))
        for name in STEP_METRICS:
            if name in parts:
                self.log(f"train/{name}", parts[name], batch_size=len(data))
        return parts["loss"]

    def configure_optimizers(self):
        return self.make_optimizer(self.model)

    def validation_step(self, batch: tuple[ImpressionBatch, Tensor], batch_idx: int) -> None:
        data, _ = batch
        x = model_inputs(data, self.lookup)
        out = {
            "logits": self.model(x).float(),
            "candidate_mask": data.candidate_mask,
            "action": data.action,
            "pscore": data.pscore,
            "reward": data.reward,
            "observed": data.reward_observed,
        }
        if self.metrics.needs_samples:
            g = torch.Generator(device="cpu").manual_seed(self.seed + batch_idx)
            out["samples"] = self.model.posterior_samples(x, self.posterior_draws, generator=g).float()
        self._val.append({k: v.detach().cpu() for k, v in out.items()})

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        width = max(v["logits"].shape[-1] for v in self._val)

        def column(name: str, pad_value=0) -> np.ndarray:
            parts = [v[name] for v in self._val]
            if parts[0].dim() > 1:  # candidates last: pad batches to the widest
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=pad_value) for p in parts]
            return torch.cat(parts).numpy()

        arrays = {"logits": column("logits", -1e4), "candidate_mask": column("candidate_mask", False)}
        arrays |= {k: column(k) for k in ("action", "pscore", "reward", "observed")}
        if "samples" in self._val[0]:
            arrays["samples"] = column("samples")
        metrics = self.metrics(**arrays)
        self.val_metrics = metrics
        self.val_history.append(metrics | {"epoch": self.current_epoch, "step": self.global_step})
        # identical on every rank (each evaluates the whole split), so no cross-rank reduction is needed
        self.log_dict({k: float(v) for k, v in metrics.items() if np.isscalar(v)}, sync_dist=False)
        self._val = []
