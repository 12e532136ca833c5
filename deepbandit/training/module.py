"""The LightningModule: joins the plain scorer, the loss, validation metrics and the optimiser (wiring only).

Validation collects the point logits (and posterior samples when the scorer has a posterior) of every
validation row, then reports the off-policy value (SNIPS and DR, with intervals) of the greedy policy and
of the configured exploration policy (``policy``), plus calibration of the predicted reward of the shown
image. Batches are ``(ImpressionBatch, row_key (B,) int64)``.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch
from torch import Tensor

from deepbandit.data.tensors import ImpressionBatch
from deepbandit.evaluation.estimators import DR, SNIPS, estimate_all
from deepbandit.losses.objectives import compute_loss, reward_targets
from deepbandit.losses.weights import poisson_bootstrap_weights
from deepbandit.models.encoders import INPUT_NAMES, ImageEmbeddingLookup, ModelConfig
from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer, capabilities
from deepbandit.policies.policies import Greedy, make_policy
from deepbandit.training.config import LossConfig, PolicyConfig, TrainerConfig

CALIBRATION_BINS = 10


def expit(x: np.ndarray) -> np.ndarray:
    """Overflow-free sigmoid (padding logits are -1e4)."""
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def model_inputs(batch: ImpressionBatch, lookup: ImageEmbeddingLookup) -> dict[str, Tensor | None]:
    """The scorer's keyword inputs (``INPUT_NAMES``) from a batch: candidate embeddings from the table."""
    x = {n: getattr(batch, n) for n in INPUT_NAMES if n != "candidate_embeddings" and hasattr(batch, n)}
    x["candidate_embeddings"] = lookup(batch.candidate_image_idx)
    return x


def calibration(pred: np.ndarray, target: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """Expected calibration error over equal-count bins of the predicted reward (pred, target (n,)),
    and the mean prediction next to the mean observed reward."""
    order = np.argsort(pred, kind="stable")
    parts = np.array_split(order, bins)
    ece = sum(len(p) * abs(pred[p].mean() - target[p].mean()) for p in parts if len(p)) / len(pred)
    return {"ece": float(ece), "mean_pred": float(pred.mean()), "mean_reward": float(target.mean())}


class BanditModule(L.LightningModule):
    def __init__(
        self,
        model_cfg: ModelConfig,
        uncertainty_cfg: UncertaintyConfig,
        loss_cfg: LossConfig,
        policy_cfg: PolicyConfig,
        trainer_cfg: TrainerConfig,
        image_embedding: Tensor,
        title_genres: Tensor,
    ):
        super().__init__()
        self.model_cfg, self.uncertainty_cfg = model_cfg, uncertainty_cfg
        self.loss_cfg, self.policy_cfg, self.trainer_cfg = loss_cfg, policy_cfg, trainer_cfg
        self.objective = loss_cfg.objective()
        self.model = build_scorer(model_cfg, uncertainty_cfg, title_genres)
        self.lookup = ImageEmbeddingLookup(image_embedding)
        self.offers = capabilities(uncertainty_cfg)  # what the uncertainty model gives (asked, not named)
        self.bootstrap = self.offers.bootstrap_members
        self.step_fn = torch.compile(self._loss) if trainer_cfg.compile else self._loss
        self._val: list[dict[str, Tensor]] = []
        self.val_metrics: dict[str, float] = {}
        self.val_history: list[dict[str, float]] = []  # one entry per validation run (epoch)

    # --- training ---------------------------------------------------------------------------------------
    def _loss(self, batch: ImpressionBatch, row_key: Tensor) -> dict[str, Tensor]:
        x = model_inputs(batch, self.lookup)
        target = reward_targets(batch.reward, self.loss_cfg.transform, self.loss_cfg.threshold)
        k = self.model.n_members
        weights = (
            poisson_bootstrap_weights(row_key, k, self.uncertainty_cfg.bootstrap_seed)
            if self.bootstrap
            else None
        )
        return compute_loss(
            self.objective,
            self.model.member_logits(**x),
            batch.candidate_mask,
            batch.action,
            target,
            batch.pscore,
            weights,
            sample_mask=batch.reward_observed,
        )

    def training_step(self, batch: tuple[ImpressionBatch, Tensor], batch_idx: int) -> Tensor:
        data, row_key = batch
        parts = self.step_fn(data, row_key)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=len(data))
        for name in ("reward_loss", "policy_value", "ess_fraction", "clipped_fraction"):
            if name in parts:
                self.log(f"train/{name}", parts[name], batch_size=len(data))
        return parts["loss"]

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.trainer_cfg.lr, weight_decay=self.trainer_cfg.weight_decay)

    # --- validation -------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[ImpressionBatch, Tensor], batch_idx: int) -> None:
        data, _ = batch
        x = model_inputs(data, self.lookup)
        out = {
            "logits": self.model(**x).float(),
            "mask": data.candidate_mask,
            "action": data.action,
            "pscore": data.pscore,
            "reward": data.reward,
            "observed": data.reward_observed,
        }
        if self._has_posterior():
            g = torch.Generator(device="cpu").manual_seed(self.trainer_cfg.seed + batch_idx)
            n = (
                self.policy_cfg.n_samples
                if self.policy_cfg.n_samples is not None
                else self.offers.posterior_draws
            )
            out["samples"] = self.model.posterior_samples(n, generator=g, **x).float()
        self._val.append({k: v.detach().cpu() for k, v in out.items()})

    def _has_posterior(self) -> bool:
        return self.policy_cfg.name == "thompson" and self.offers.posterior_in_training

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        width = max(v["logits"].shape[1] for v in self._val)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=value)  # noqa: E731
        logits = torch.cat([pad(v["logits"], -1e4) for v in self._val]).numpy()
        mask = torch.cat([pad(v["mask"], False) for v in self._val]).numpy()
        col = {
            k: torch.cat([v[k] for v in self._val]).numpy()
            for k in ("action", "pscore", "reward", "observed")
        }
        keep = col["observed"]
        metrics = self.policy_metrics(logits[keep], mask[keep], col, keep)
        q = expit(logits[keep])
        shown = q[np.arange(keep.sum()), col["action"][keep]]
        for k, v in calibration(shown, col["reward"][keep]).items():
            metrics[f"val/calibration_{k}"] = v
        eps = 1e-7
        r = col["reward"][keep]
        metrics["val/logloss"] = float(-(r * np.log(shown + eps) + (1 - r) * np.log(1 - shown + eps)).mean())
        self.val_metrics = metrics
        self.val_history.append(metrics | {"epoch": self.current_epoch, "step": self.global_step})
        # identical on every rank (each evaluates the whole split), so no cross-rank reduction is needed
        self.log_dict({k: float(v) for k, v in metrics.items() if np.isscalar(v)}, sync_dist=False)
        self._val = []

    def policy_metrics(self, logits: np.ndarray, mask: np.ndarray, col: dict, keep: np.ndarray) -> dict:
        """SNIPS and DR (value, lower, upper) of greedy and of the exploration policy on validation rows."""
        q = np.where(mask, expit(logits), 0.0)
        dists = {"greedy": Greedy().action_dist(np.where(mask, logits, 0.0), mask)}
        p = self.policy_cfg
        if p.name == "thompson" and self._has_posterior():
            width = mask.shape[1]
            samples = torch.cat(
                [
                    torch.nn.functional.pad(v["samples"], (0, width - v["samples"].shape[-1]))
                    for v in self._val
                ]
            ).numpy()[keep]
            dists["thompson"] = make_policy(
                "thompson", kind=self.offers.thompson_kind, epsilon=p.epsilon
            ).action_dist(np.where(mask[:, None, :], samples, 0.0), mask)
        elif p.name == "epsilon_greedy":
            dists[p.name] = make_policy(p.name, epsilon=p.epsilon).action_dist(
                np.where(mask, logits, 0.0), mask
            )
        elif p.name == "softmax":
            dists[p.name] = make_policy(p.name, temperature=p.temperature).action_dist(
                np.where(mask, logits, 0.0), mask
            )
        interval = None if self.trainer_cfg.val_interval == "none" else self.trainer_cfg.val_interval
        out: dict[str, float] = {}
        for name, dist in dists.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # support warnings are expected for deterministic targets
                est = estimate_all(
                    [SNIPS(), DR()],
                    reward=col["reward"][keep].astype(np.float64),
                    action=col["action"][keep],
                    pscore=col["pscore"][keep].astype(np.float64),
                    action_dist=dist,
                    candidate_mask=mask,
                    estimated_rewards=q,
                    interval=interval,
                    seed=self.trainer_cfg.seed,
                )
            for est_name, e in est.items():
                out[f"val/{est_name}_{name}"] = e.value
                if e.lower is not None:
                    out[f"val/{est_name}_{name}_lower"] = e.lower
                    out[f"val/{est_name}_{name}_upper"] = e.upper
        return out
