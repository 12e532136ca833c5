"""What training reports on its validation split after each epoch, from arrays alone.

The off-policy value (SNIPS and DR, with intervals) of the greedy policy and of the configured exploration
policy, then the calibration and log loss of the predicted reward of the shown image. The LightningModule
collects the arrays and is handed a ``ValidationMetrics``; it computes nothing itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from deepbandit.evaluation.estimators import DR, SNIPS, estimate_all
from deepbandit.policies import Greedy, Policy

CALIBRATION_BINS = 10


def expit(x: np.ndarray) -> np.ndarray:
    """Overflow-free sigmoid (padding logits are -1e4)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, np.float64)))


def calibration(pred: np.ndarray, target: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """Expected calibration error over equal-count bins of the predicted reward (pred, target (n,)),
    and the mean prediction next to the mean observed reward."""
    order = np.argsort(pred, kind="stable")
    parts = np.array_split(order, bins)
    ece = sum(len(p) * abs(pred[p].mean() - target[p].mean()) for p in parts if len(p)) / len(pred)
    return {"ece": float(ece), "mean_pred": float(pred.mean()), "mean_reward": float(target.mean())}


@dataclass(frozen=True)
class ValidationMetrics:
    """``val/*`` metrics of one validation pass.

    exploration: the policy reported beside greedy (None: greedy alone). A policy on posterior samples
    (``input_ndim == 3``, Thompson) is reported only when samples are passed. interval: "normal",
    "bootstrap" or None. Rows whose reward is not observed are left out.
    """

    exploration: Policy | None = None
    interval: str | None = "normal"
    seed: int = 0

    @property
    def needs_samples(self) -> bool:
        return self.exploration is not None and self.exploration.input_ndim == 3

    def __call__(
        self,
        logits: np.ndarray,
        candidate_mask: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        reward: np.ndarray,
        observed: np.ndarray,
        samples: np.ndarray | None = None,
    ) -> dict[str, float]:
        """logits (n, A), candidate_mask (n, A), action/pscore/reward/observed (n,), samples (n, S, A)."""
        keep = observed.astype(bool)
        logits, mask = logits[keep], candidate_mask[keep]
        reward = reward[keep].astype(np.float64)
        action, pscore = action[keep], pscore[keep].astype(np.float64)
        q = np.where(mask, expit(logits), 0.0)
        scores = np.where(mask, logits, 0.0)
        dists = {"greedy": Greedy().action_dist(scores, mask)}
        policy = self.exploration
        if policy is not None and policy.name != "greedy":
            if not self.needs_samples:
                dists[policy.name] = policy.action_dist(scores, mask)
            elif samples is not None:
                dists[policy.name] = policy.action_dist(np.where(mask[:, None, :], samples[keep], 0.0), mask)
        out: dict[str, float] = {}
        for name, dist in dists.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # support warnings are expected for deterministic targets
                est = estimate_all(
                    [SNIPS(), DR()],
                    reward=reward,
                    action=action,
                    pscore=pscore,
                    action_dist=dist,
                    candidate_mask=mask,
                    estimated_rewards=q,
                    interval=self.interval,
                    seed=self.seed,
                    standard_error=self.interval == "normal",  # only the values (and bounds) are reported
                )
            for est_name, e in est.items():
                out[f"val/{est_name}_{name}"] = e.value
                if e.lower is not None:
                    out[f"val/{est_name}_{name}_lower"] = e.lower
                    out[f"val/{est_name}_{name}_upper"] = e.upper
        shown = q[np.arange(len(action)), action]
        for k, v in calibration(shown, reward).items():
            out[f"val/calibration_{k}"] = v
        eps = 1e-7
        out["val/logloss"] = float(
            -(reward * np.log(shown + eps) + (1 - reward) * np.log(1 - shown + eps)).mean()
        )
        return out
