"""Simulator ground truth of a trained model on held-out logs: exact values (the world's expected rewards),
not estimates, of the model's greedy choice next to random, the unpersonalised references and the oracle.

``deepbandit train`` reports them after every validation (``TrueValueMonitor``) and in metrics.json when
the dataset was simulated (world.npz beside it); any caller with a ``World`` and the rows' logits can too.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.data.logs import candidates_from_impressions, contexts_from_impressions
from deepbandit.evaluation.baselines import TakeRates, logged_rows, unpersonalised_action_dist
from deepbandit.sim.world import World


def true_values(
    world: World,
    table: pa.Table,
    logits: np.ndarray,
    train_images: np.ndarray,
    train_rates: TakeRates | None = None,
) -> dict:
    """Exact values (simulator ground truth) on the rows of ``table``: the model's greedy choice against
    random, the unpersonalised bandit, the best unpersonalised image and the oracle, overall and by
    prior_interaction, and on cold-start rows.

    Two unpersonalised references: ``unpersonalised_bandit`` is what a per-image bandit learns from the
    same training rows (per title the image with the best reweighted take rate, ``fit_take_rates``; uniform
    where that image is not a candidate), ``best_unpersonalised`` is the world's truly best image per title
    for the average member (infinite data: a bar no learner from finite logs is promised to clear).
    """
    contexts = contexts_from_impressions(table)
    cand, mask = candidates_from_impressions(table)
    logits = logits[:, : cand.shape[1]]
    q = world.expected_reward(contexts, cand)
    rows = np.arange(len(cand))
    greedy = np.where(mask, logits, -np.inf).argmax(1)
    best = world.best_unpersonalised_action(contexts, cand)
    per_row = {
        "greedy": q[rows, greedy],
        "random": q.sum(1) / mask.sum(1),
        "best_unpersonalised": q[rows, best],
        "oracle": np.where(mask, q, -np.inf).max(1),
    }
    baselines = ["best_unpersonalised"]
    if train_rates is not None:
        # the bandit's choice depends on the candidates only; rows whose reward is still open count too
        known = table.set_column(
            table.column_names.index("reward"), "reward", pc.fill_null(table.column("reward"), 0.0)
        )
        dist, _ = unpersonalised_action_dist(logged_rows(known, "validation rows"), train_rates)
        per_row["unpersonalised_bandit"] = (q * dist).sum(1)
        baselines.append("unpersonalised_bandit")
    prior = contexts.prior_interaction.astype(bool)
    out = {}
    for split, sel in (("all", np.ones(len(cand), bool)), ("prior_interaction_true", prior),
                       ("prior_interaction_false", ~prior)):  # fmt: skip
        out[split] = {"rows": int(sel.sum())} | {
            k: float(v[sel].mean()) if sel.any() else math.nan for k, v in per_row.items()
        }
        for name in baselines:  # paired: the same rows under both policies
            d = per_row["greedy"][sel] - per_row[name][sel]
            out[split][f"greedy_minus_{name}_se"] = (
                float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else math.nan
            )
    # cold start: candidates never offered in the training window; rows with >= 2 of them
    new = mask & ~np.isin(cand, train_images)
    cold = new.sum(1) >= 2
    if cold.any():
        qc, nc = q[cold], new[cold]
        pick = np.where(nc, logits[cold], -np.inf).argmax(1)
        model_v = qc[np.arange(len(qc)), pick]
        random_v = (qc * nc).sum(1) / nc.sum(1)
        d = model_v - random_v
        out["cold_start"] = {
            "rows": int(cold.sum()),
            "model": float(model_v.mean()),
            "random": float(random_v.mean()),
            "oracle": float(np.where(nc, qc, -np.inf).max(1).mean()),
            "model_minus_random_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else math.nan,
        }
    else:
        out["cold_start"] = {"rows": 0}
    return out
