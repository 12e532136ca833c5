"""Evaluate policies on a logged dataset: baselines, model policies, segments, per-image tables, truth.

:func:`evaluate_rows` works on an impressions table and arrays (no models: a model enters as its scores);
:func:`evaluate_dataset` reads a dataset folder and adds the simulator's ground truth when ``world.npz`` is
there. ``deepbandit.cli.evaluate`` wraps it and writes the report (``report.py``, ``plots.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepbandit.data.io import open_impressions, read_images, read_titles
from deepbandit.data.logs import contexts_from_impressions
from deepbandit.data.schema import IMAGES_FILE, IMPRESSIONS_DIR, TITLES_FILE, WORLD_FILE
from deepbandit.data.validation import gate_dataset
from deepbandit.errors import ConfigError, DataError
from deepbandit.evaluation.baselines import (
    LoggedRows,
    TakeRates,
    dominant_genre,
    drop_open_rewards,
    empirical_reward_model,
    fit_take_rates,
    logged_rows,
    on_policy_value,
    one_hot,
    time_split,
    uniform_action_dist,
    unpersonalised_action_dist,
)
from deepbandit.evaluation.checks import EstimationError, SupportWarning
from deepbandit.evaluation.estimators import DM, DR, IPS, SNDR, SNIPS, Replay, SwitchDR, estimate_all
from deepbandit.evaluation.segments import DEFAULT_SEGMENTS, lift, segment_codes
from deepbandit.sim.world import World

ESTIMATORS = {
    "ips": IPS,
    "snips": SNIPS,
    "dm": DM,
    "dr": DR,
    "sndr": SNDR,
    "switch_dr": SwitchDR,
    "replay": Replay,
}


@dataclass
class ModelScores:
    """A model's output on the evaluated rows, aligned with their padded candidates (n, A).

    expected_reward: (n, A) predicted reward probability (sigmoid of the logits); the DM/DR reward model.
    posterior_samples: (n, S, A) or None; needed for a Thompson policy.
    """

    expected_reward: np.ndarray
    posterior_samples: np.ndarray | None = None
    thompson_kind: str = "ensemble"  # "ensemble": samples are every member once (exact); else "mc_dropout"


@dataclass
class EvaluationSettings:
    estimators: tuple[str, ...] = ("ips", "snips", "dm", "dr", "sndr")
    interval: str = "bootstrap"  # bootstrap | normal
    alpha: float = 0.05
    n_bootstrap: int = 200
    seed: int = 0
    segments: tuple[str, ...] = DEFAULT_SEGMENTS
    segment_estimator: str = "snips"  # per-segment values use one estimator with normal intervals
    min_segment_rows: int = 100  # smaller segments are listed with their size but not estimated
    title_for_plot: int | None = None  # None: the evaluated title with most rows among those with >= 3 images
    estimator_params: dict = field(default_factory=dict)  # {estimator: {parameter: value}} (ESTIMATOR_PARAMS)
    extra: dict = field(default_factory=dict)


# Parameters of the estimators that take one (EvaluationSettings.estimator_params overrides these).
ESTIMATOR_PARAMS: dict[str, dict[str, float]] = {"switch_dr": {"tau": 10.0}}


def make_estimators(names: tuple[str, ...] | list[str], params: dict[str, dict] | None = None) -> list:
    """Estimator instances from names (keys of ``ESTIMATORS``), each built with its parameters
    (``ESTIMATOR_PARAMS`` updated by ``params``, e.g. {"switch_dr": {"tau": 5}}); unknown names raise."""
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ConfigError(f"unknown estimator(s) {unknown}; choose from {sorted(ESTIMATORS)}")
    if not names:
        raise ConfigError("estimators is empty")
    given = params or {}
    odd = sorted(set(given) - set(ESTIMATORS))
    if odd:
        raise ConfigError(
            f"estimator_params for unknown estimator(s) {odd}; choose from {sorted(ESTIMATORS)}"
        )
    out = []
    for n in names:
        kwargs = {**ESTIMATOR_PARAMS.get(n, {}), **given.get(n, {})}
        try:
            out.append(ESTIMATORS[n](**kwargs))
        except TypeError as err:
            raise ConfigError(f"estimator_params.{n}: {err}") from err
    return out


def _is_uniform_logging(rows: LoggedRows) -> bool:
    return bool(np.allclose(rows.pscore * rows.candidate_mask.sum(axis=1), 1.0, rtol=1e-6))


def _estimate(rows: LoggedRows, dist: np.ndarray, q_hat: np.ndarray, names, s: EvaluationSettings, interval):
    """{estimator: Estimate dict or {"error": why}} for one policy on ``rows``."""
    deterministic = bool(np.isin(dist, (0.0, 1.0)).all())
    usable, skipped = [], {}
    for name, est in zip(names, make_estimators(names, s.estimator_params), strict=True):
        if name == "replay" and not (deterministic and _is_uniform_logging(rows)):
            skipped[name] = {"error": "replay needs uniformly random logging and a deterministic policy"}
        else:
            usable.append(est)
    out = {}
    if usable:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SupportWarning)
            try:
                res = estimate_all(
                    usable,
                    reward=rows.reward,
                    action=rows.action,
                    pscore=rows.pscore,
                    action_dist=dist,
                    candidate_mask=rows.candidate_mask,
                    estimated_rewards=q_hat,
                    logging_action_dist=rows.logging_action_dist,
                    interval=interval,
                    alpha=s.alpha,
                    n_bootstrap=s.n_bootstrap,
                    seed=s.seed,
                )
                out = {k: v.to_dict() for k, v in res.items()}
            except EstimationError as err:
                out = {e.name: {"error": str(err)} for e in usable}
        for w in caught:
            if issubclass(w.category, SupportWarning):
                for v in out.values():
                    v.setdefault("warnings", []).append(str(w.message))
    return {**out, **skipped}


def _true_value(world: World | None, contexts, rows: LoggedRows, dist: np.ndarray) -> float | None:
    if world is None:
        return None
    return world.policy_value(contexts, rows.candidate_ids, dist)


def _profile_scores(
    title: int,
    rows: LoggedRows,
    profile: np.ndarray,
    labels: tuple[str, ...],
    scores: np.ndarray | None,
    source: str,
) -> dict:
    """Mean score of each image of ``title`` per member profile on the rows of that title.

    scores (n, A): a model's predicted or the world's true expected reward; None: per (profile, image)
    take rate reweighted by 1 / propensity (SNIPS) from the logs."""
    sel = rows.title_id == title
    cand, mask = rows.candidate_ids[sel], rows.candidate_mask[sel]
    images = np.unique(cand[mask])
    prof = profile[sel]
    present = [p for p in range(len(labels)) if (prof == p).sum() > 0]
    table = np.full((len(present), len(images)), np.nan)
    rows_per = np.zeros((len(present), len(images)), dtype=np.int64)
    img_pos = np.searchsorted(images, np.where(mask, cand, images[0]))
    for i, p in enumerate(present):  # a handful of profiles: loop over profiles, not rows
        in_p = prof == p
        if scores is not None:  # mean score of each image over the profile's rows where it is a candidate
            s, m = scores[sel][in_p], mask[in_p]
            cnt = np.bincount(img_pos[in_p][m], minlength=len(images))
            total = np.bincount(img_pos[in_p][m], s[m], minlength=len(images))
        else:  # take rate of each image reweighted by 1 / propensity: sum(w r) / sum(w) over its shows
            sub = rows.take(np.flatnonzero(sel)[in_p])
            chosen = np.searchsorted(images, sub.chosen_image_id)
            w = 1.0 / sub.pscore
            cnt = np.bincount(chosen, minlength=len(images))
            total = np.bincount(chosen, w * sub.reward, minlength=len(images))
            cnt_w = np.bincount(chosen, w, minlength=len(images))
            total = np.where(cnt > 0, total / np.where(cnt_w > 0, cnt_w, 1), 0) * cnt  # so total / cnt = rate
        table[i] = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
        rows_per[i] = cnt
    return {
        "title_id": int(title),
        "image_ids": images.tolist(),
        "profiles": [labels[p] for p in present],
        "profile_rows": [int((prof == p).sum()) for p in present],
        "scores": [[None if math.isnan(v) else float(v) for v in r] for r in table],
        "counts": rows_per.tolist(),
        "source": source,
    }


def evaluate_rows(
    table: pa.Table,
    titles: pa.Table | None,
    settings: EvaluationSettings,
    *,
    train_fraction: float = 0.5,
    scorer: Callable[[pa.Table], ModelScores] | None = None,
    model_policy: str = "greedy",
    world: World | None = None,
    source: str = "impressions",
) -> dict:
    """Evaluate the baselines (and the model policy when ``model_scores`` is given) on ``table``.

    ``scorer(eval_table) -> ModelScores`` (e.g. :class:`deepbandit.evaluation.model_policy.BundleScorer`)
    scores the evaluated rows for the model policy and the DM/DR reward model. Returns a JSON-serialisable dict: policies (estimates with
    intervals, true values when ``world`` is given), segments, per-image table, profile scores, notes."""
    table, n_open = drop_open_rewards(table)
    if table.num_rows == 0:
        raise DataError(
            f"{source}: nothing to evaluate: no row has a known reward ({n_open} rows with reward null, the "
            "attribution window still open)"
        )
    rows_all = logged_rows(table, source)
    train, evalm = time_split(rows_all.timestamp, train_fraction)
    rates = fit_take_rates(rows_all.take(train))
    ev_index = np.flatnonzero(evalm)
    rows = rows_all.take(ev_index)
    ev_table = table.take(pa.array(ev_index))
    n, n_actions = rows.candidate_ids.shape
    names = list(settings.estimators)
    contexts = contexts_from_impressions(ev_table, source) if world is not None else None

    model_scores = _to_width(scorer(ev_table), n_actions) if scorer is not None else None
    unp_dist, cold = unpersonalised_action_dist(rows, rates)
    policies: dict[str, dict] = {}
    dists: dict[str, np.ndarray] = {
        "random": uniform_action_dist(rows.candidate_mask),
        "unpersonalised": unp_dist,
    }
    if model_scores is not None:
        q_hat = np.where(rows.candidate_mask, np.asarray(model_scores.expected_reward, dtype=np.float64), 0.0)
        if q_hat.shape != (n, n_actions):
            raise ValueError(f"model_scores.expected_reward: shape {q_hat.shape}, expected {(n, n_actions)}")
        dists["model"] = _model_dist(model_scores, rows.candidate_mask, model_policy)
        reward_model = "model: predicted reward probability (sigmoid of the logits)"
    else:
        q_hat = empirical_reward_model(rows, rates)
        reward_model = "empirical: per-image take rate reweighted by 1/propensity on the train split"
    notes = {
        "split": f"time split: earliest {train_fraction:.0%} of rows by timestamp fit the unpersonalised bandit"
        f" and the empirical reward model; the other {n} rows are evaluated"
        if train_fraction > 0
        else "no split: baselines fitted and evaluated on the same rows (optimistic)",
        "reward_model": reward_model,
        "unpersonalised_cold_start_rows": cold,
        "dropped_open_reward_rows": n_open,
        "action_dist_null_rows": (
            table.column("action_dist").null_count if "action_dist" in table.column_names else None
        ),
        "logging": "on-policy mean reward of the evaluated rows (no weights): the logging policy's own value",
    }

    policies["logging"] = {"kind": "logging", "on_policy": on_policy_value(rows.reward), "estimates": {}}
    if world is not None:
        if rows.logging_action_dist is not None:
            policies["logging"]["true_value"] = _true_value(world, contexts, rows, rows.logging_action_dist)
        else:  # expected reward of the images actually shown: the logging policy's truth on these draws
            q = world.expected_reward(contexts, rows.candidate_ids)
            policies["logging"]["true_value"] = float(q[np.arange(n), rows.action].mean())
    for name, dist in dists.items():
        policies[name] = {
            "kind": "model" if name == "model" else "baseline",
            "estimates": _estimate(rows, dist, q_hat, names, settings, settings.interval),
            "true_value": _true_value(world, contexts, rows, dist),
        }
    if model_scores is not None:
        policies["model"]["policy"] = model_policy
    if world is not None:
        oracle = one_hot(world.oracle_action(contexts, rows.candidate_ids), n_actions)
        dists["oracle"] = oracle
        policies["oracle"] = {
            "kind": "oracle",
            "estimates": {},
            "true_value": _true_value(world, contexts, rows, oracle),
        }

    segments = _segments(ev_table, rows, dists, q_hat, settings, world, contexts, source)
    per_image = _per_image(rows, rates, dists)
    profile, labels = (None, None)
    profile_scores = None
    if titles is not None and "played_title_ids" in ev_table.column_names:
        profile, labels = dominant_genre(ev_table.column("played_title_ids"), titles)
        title = settings.title_for_plot if settings.title_for_plot is not None else _plot_title(rows)
        if title is not None:
            if not (rows.title_id == title).any():
                raise ConfigError(f"title_for_plot={title}: no evaluated row shows that title")
            if model_scores is not None:
                scores, what = q_hat, "model's predicted take probability"
            elif world is not None:
                scores, what = (
                    world.expected_reward(contexts, rows.candidate_ids),
                    "true expected reward (simulator)",
                )
            else:
                scores, what = None, "observed take rate reweighted by 1/propensity"
            profile_scores = _profile_scores(int(title), rows, profile, labels, scores, what)
    return {
        "n_rows": int(len(table)),
        "n_train_rows": int(train.sum()) if train_fraction > 0 else 0,
        "n_eval_rows": int(n),
        "estimators": names,
        "interval": settings.interval,
        "alpha": settings.alpha,
        "policies": policies,
        "segments": segments,
        "per_image": per_image,
        "profile_scores": profile_scores,
        "notes": notes,
    }


def _to_width(scores: ModelScores, n_actions: int) -> ModelScores:
    """``scores`` padded out to ``n_actions`` candidate columns. A scorer pads the evaluated rows to their
    own widest row, which is narrower than the whole dataset's when the widest rows fall in the training
    part; the extra columns are padding on every evaluated row."""
    width = scores.expected_reward.shape[1]
    if width >= n_actions:
        return scores
    pad = [(0, 0)] * (scores.expected_reward.ndim - 1) + [(0, n_actions - width)]
    samples = scores.posterior_samples
    if samples is not None:
        samples = np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(0, n_actions - width)])
    return replace(scores, expected_reward=np.pad(scores.expected_reward, pad), posterior_samples=samples)


def _model_dist(scores: ModelScores, mask: np.ndarray, policy: str) -> np.ndarray:
    from deepbandit.policies import make_policy

    if policy == "greedy":
        return make_policy("greedy").action_dist(scores.expected_reward, mask)
    if policy == "thompson":
        if scores.posterior_samples is None:
            raise ConfigError(
                "model_policy=thompson needs posterior samples; this model gives none (it is not an ensemble or MC-dropout model)"
            )
        return make_policy("thompson", kind=scores.thompson_kind).action_dist(scores.posterior_samples, mask)
    raise ConfigError(f"policy must be greedy or thompson, got {policy!r}")


def _plot_title(rows: LoggedRows) -> int | None:
    k = rows.candidate_mask.sum(axis=1)
    titles, counts = np.unique(rows.title_id[k >= 3], return_counts=True)
    if len(titles) == 0:
        titles, counts = np.unique(rows.title_id, return_counts=True)
    return int(titles[counts.argmax()]) if len(titles) else None


def _segments(table, rows, dists, q_hat, s: EvaluationSettings, world, contexts, source) -> dict:
    """Per segment column and value: rows, each policy's value (one estimator, normal interval), truth,
    and lift against the unpersonalised bandit."""
    out = {}
    for column in s.segments:
        codes, labels = segment_codes(table, column, source)
        values = {}
        for c, label in enumerate(labels):  # segments are few: loop over values, rows stay vectorised
            idx = np.flatnonzero(codes == c)
            entry = {"n_rows": int(len(idx)), "policies": {}}
            if len(idx) >= s.min_segment_rows:
                sub = rows.take(idx)
                sub_ctx = contexts.take(idx) if contexts is not None else None
                for name, dist in dists.items():
                    pol = {}
                    if name != "oracle":
                        est = _estimate(sub, dist[idx], q_hat[idx], [s.segment_estimator], s, "normal")
                        pol = est[s.segment_estimator]
                    if world is not None:
                        pol["true_value"] = world.policy_value(sub_ctx, sub.candidate_ids, dist[idx])
                    entry["policies"][name] = pol
                entry["on_policy"] = on_policy_value(sub.reward)
                ref = entry["policies"].get("unpersonalised", {})
                for pol in entry["policies"].values():
                    if "value" in pol and "value" in ref:
                        pol["lift_vs_unpersonalised"] = lift(pol["value"], ref["value"])
                    if pol.get("true_value") is not None and ref.get("true_value") is not None:
                        pol["true_lift_vs_unpersonalised"] = lift(pol["true_value"], ref["true_value"])
            else:
                entry["skipped"] = f"fewer than min_segment_rows={s.min_segment_rows} rows"
            values[label] = entry
        out[column] = values
    return out


def _per_image(rows: LoggedRows, rates: TakeRates, dists: dict[str, np.ndarray]) -> dict:
    """Per image on the evaluated rows: shows, observed and reweighted take rate, train-fit rate; and how
    often each deterministic personalised policy picks the unpersonalised bandit's image."""
    chosen = rows.chosen_image_id
    images, inv = np.unique(chosen, return_inverse=True)
    shows = np.bincount(inv)
    w = 1.0 / rows.pscore
    raw = np.bincount(inv, rows.reward) / shows
    rew = np.bincount(inv, w * rows.reward) / np.bincount(inv, w)
    titles = np.zeros(len(images), dtype=np.int64)
    titles[inv] = rows.title_id
    unp_choice = dists["unpersonalised"].argmax(axis=1)
    agreement = {}
    for name in ("model", "oracle"):
        if name in dists:
            d = dists[name]
            agreement[name] = float((d[np.arange(len(d)), unp_choice]).mean())
    return {
        "image_id": images.tolist(),
        "title_id": titles.tolist(),
        "shows": shows.tolist(),
        "take_rate": raw.tolist(),
        "reweighted_take_rate": rew.tolist(),
        "train_rate": rates.rate_of(images, titles).tolist(),
        "is_unpersonalised_choice": np.isin(images, rates.best_image).tolist(),
        "agreement_with_unpersonalised": agreement,
    }


def read_dataset(
    data: str | Path, *, validate: bool = True
) -> tuple[pa.Table, pa.Table, pa.Table, World | None]:
    """(impressions, titles, images, world) of a dataset folder, through the gate every command passes
    (``gate_dataset``: strict validation unless ``validate=False``); world None unless world.npz is there."""
    root = Path(data)
    if not (root / IMPRESSIONS_DIR).exists():
        raise FileNotFoundError(f"{root}: no {IMPRESSIONS_DIR}/ folder (expected a deepbandit dataset root)")
    gate_dataset(root, validate=validate)
    table = open_impressions(root / IMPRESSIONS_DIR).to_table()
    titles = read_titles(root / TITLES_FILE)
    images = read_images(root / IMAGES_FILE)
    world = World.load(root / WORLD_FILE) if (root / WORLD_FILE).exists() else None
    return table, titles, images, world
