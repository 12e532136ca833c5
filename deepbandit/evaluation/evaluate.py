"""Evaluate policies on a logged dataset: baselines, model policies, segments, per-image tables, truth.

:func:`evaluate_rows` works on an impressions table and arrays (no models: a model enters as its scores);
:func:`evaluate_dataset` reads a dataset folder and adds the simulator's ground truth when ``world.npz`` is
there. ``deepbandit.cli.evaluate`` wraps it and writes the report (``report.py``, ``plots.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

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
    fit_take_rates,
    logged_rows,
    on_policy_value,
    one_hot,
    time_split,
    uniform_action_dist,
    unpersonalised_action_dist,
)
from deepbandit.evaluation.checks import EstimationError, SupportWarning
from deepbandit.evaluation.diagnostics import DiagnosticThresholds, weight_diagnostics
from deepbandit.evaluation.estimators import (
    DM,
    DR,
    IPS,
    MIPS,
    SNDR,
    SNIPS,
    SNMIPS,
    BalancedDR,
    BalancedIPS,
    DRos,
    Replay,
    SwitchDR,
    embedding_groups,
    estimate_all,
    mixture_pscore,
)
from deepbandit.evaluation.intervals import z_value
from deepbandit.evaluation.labels import label as policy_label
from deepbandit.evaluation.reward_models import (
    check_reward_model,
    fit_out_of_sample,
    image_codes,
    out_of_sample_rewards,
)
from deepbandit.evaluation.segments import DEFAULT_SEGMENTS, lift, segment_codes
from deepbandit.evaluation.targets import TargetPolicy
from deepbandit.sim.world import World

ESTIMATORS = {
    "ips": IPS,
    "snips": SNIPS,
    "dm": DM,
    "dr": DR,
    "sndr": SNDR,
    "switch_dr": SwitchDR,
    "replay": Replay,
    "dros": DRos,
    "mips": MIPS,
    "snmips": SNMIPS,
    "balanced_ips": BalancedIPS,
    "balanced_dr": BalancedDR,
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
    reward_model: str = "auto"  # auto | model | logistic | take_rates (reward_models.py)
    reward_model_folds: int = 5  # cross-fitting folds when every row is evaluated (train_fraction 0)
    reward_model_bootstrap: int = 0  # DM: refit the reward model on this many bootstrap resamples (0: off)
    diagnostics: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    window_start: str | None = None  # evaluate rows at or after this time (ISO 8601, UTC); None: all
    window_end: str | None = None  # and before this one
    reward_name: str = "reward"  # what the reward counts, for the report ("click", "quality play")
    mips_groups: int = 8  # MIPS, SNMIPS: k-means clusters of the image embeddings that group candidates
    extra: dict = field(default_factory=dict)


# Parameters of the estimators that take one (EvaluationSettings.estimator_params overrides these).
ESTIMATOR_PARAMS: dict[str, dict[str, float | None]] = {"switch_dr": {"tau": 10.0}, "dros": {"lam": None}}


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
        except (TypeError, ValueError) as err:
            raise ConfigError(f"estimator_params.{n}: {err}") from err
    return out


def _is_uniform_logging(rows: LoggedRows) -> bool:
    return bool(np.allclose(rows.pscore * rows.candidate_mask.sum(axis=1), 1.0, rtol=1e-6))


def _estimate(
    rows: LoggedRows, dist: np.ndarray, q_hat: np.ndarray, names, s: EvaluationSettings, interval,
    extra: dict | None = None,
):  # fmt: skip
    """{estimator: Estimate dict or {"error": why}} for one policy on ``rows``; ``extra``: the optional arrays
    (action_groups, mixture_pscore) some estimators need, None where they are not available (with why)."""
    extra = extra or {}
    deterministic = bool(np.isin(dist, (0.0, 1.0)).all())
    usable, skipped, configured = [], {}, {}
    for name, est in zip(names, make_estimators(names, s.estimator_params), strict=True):
        configured[est.name] = name
        lacking = [x for x in est.needs_inputs if x != "logging_action_dist" and extra.get(x) is None]
        if "logging_action_dist" in est.needs_inputs and rows.logging_action_dist is None:
            lacking.insert(0, "logging_action_dist")
        if name == "replay" and not (deterministic and _is_uniform_logging(rows)):
            skipped[name] = {"error": "replay needs uniformly random logging and a deterministic policy"}
        elif lacking:
            skipped[name] = {"error": "; ".join(_LACKING[x] for x in lacking), "label": est.name}
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
                    action_groups=extra.get("action_groups"),
                    mixture_pscore=extra.get("mixture_pscore"),
                    interval=interval,
                    alpha=s.alpha,
                    n_bootstrap=s.n_bootstrap,
                    seed=s.seed,
                )
                # keyed by the configured name ("switch_dr"), the parametrised one ("switch_dr(tau=10)") inside
                out = {
                    configured[e.name]: {**res[e.name].to_dict(), "label": res[e.name].estimator}
                    for e in usable
                }
            except EstimationError as err:
                out = {configured[e.name]: {"error": str(err), "label": e.name} for e in usable}
        for w in caught:
            if issubclass(w.category, SupportWarning):
                for v in out.values():
                    v.setdefault("warnings", []).append(str(w.message))
    return {**out, **skipped}


_LACKING = {
    "logging_action_dist": "needs the logs' action_dist column (the full logging distribution of every row)",
    "action_groups": "needs image embeddings (the dataset's images table) to group the candidates",
    "mixture_pscore": "needs logging_policies (every logging policy that wrote the logs, and a "
    "logging_policy column naming which one wrote each row)",
}


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
    train_fraction: float = 0.0,
    scorer: Callable[[pa.Table], ModelScores] | None = None,
    model_policy: str = "greedy",
    targets: dict[str, TargetPolicy | Callable] | None = None,
    logging_policies: dict[str, TargetPolicy | Callable] | None = None,
    images: pa.Table | None = None,
    world: World | None = None,
    source: str = "impressions",
) -> dict:
    """Evaluate the baselines, the model policy (``scorer``) and any ``targets`` on ``table``.

    ``scorer(eval_table) -> ModelScores`` (e.g. :class:`deepbandit.evaluation.model_policy.BundleScorer`)
    scores the evaluated rows for the model policy and, with ``reward_model`` auto or model, the DM/DR
    reward model. ``targets``: {name: TargetPolicy, or a callable eval_table -> (n, A) action_dist or
    TargetOutput} (``targets.py``). ``logging_policies``: every policy that wrote the logs, in the same
    forms, with the log's ``logging_policy`` column naming which one wrote each row: the balanced estimators
    weigh by their mixture. ``images`` (the dataset's images table) feeds the logistic reward model's
    embedding terms. Returns a JSON-serialisable dict: policies (estimates with intervals, diagnostics,
    true values when ``world`` is given), segments, per-image table, profile scores, notes, warnings."""
    started = time.perf_counter()
    table, rows_all, n_open = known_rows(table, settings, source, 1)
    train, evalm = time_split(rows_all.timestamp, train_fraction)
    split = train if train_fraction > 0 else None
    ev_index = np.flatnonzero(evalm)
    rows = rows_all.take(ev_index)
    ev_table = table.take(pa.array(ev_index))
    n, n_actions = rows.candidate_ids.shape
    names = list(settings.estimators)
    make_estimators(names, settings.estimator_params)  # unknown names fail before any model runs
    contexts = contexts_from_impressions(ev_table, source) if world is not None else None
    request_id = ev_table.column("request_id").to_numpy(zero_copy_only=False).astype(str)

    model_scores = _to_width(scorer(ev_table), n_actions) if scorer is not None else None
    kind = check_reward_model(settings.reward_model, model_scores is not None)
    folds, seed = settings.reward_model_folds, settings.seed
    unp_dist, cold = _unpersonalised(rows_all, split, folds, seed)
    dists: dict[str, np.ndarray] = {
        "random": uniform_action_dist(rows.candidate_mask),
        "unpersonalised": unp_dist,
    }
    sources = {"random": "uniform over each row's candidates", "unpersonalised": _UNPERSONALISED}
    if model_scores is not None:
        dists["model"] = _model_dist(model_scores, rows.candidate_mask, model_policy)
        sources["model"] = f"the trained model, {model_policy}"
    for name, target in (targets or {}).items():
        _check_target_name(name)
        target = target if isinstance(target, TargetPolicy) else TargetPolicy(target, f"callable {name}")
        out = target(ev_table, rows.candidate_mask)
        dists[name] = out.action_dist
        sources[name] = target.source

    extra = {
        "action_groups": _action_groups(rows, images, names, settings),
        "mixture_pscore": _mixture(ev_table, rows, logging_policies, source),
    }
    expected = None if model_scores is None else model_scores.expected_reward
    q_hat, reward_model = out_of_sample_rewards(
        kind, rows_all, table, titles, images, split, folds, seed, expected
    )
    notes = {
        "window": _window_note(rows, settings),
        "split": f"time split: the earliest {train_fraction:.0%} of rows by timestamp fit the unpersonalised "
        f"bandit and the reward model; the other {n:,} rows are evaluated"
        if train_fraction > 0
        else f"no split: all {n:,} rows are evaluated; the unpersonalised bandit and the reward model are "
        f"cross-fitted over {folds} random folds (each fold scored by a fit on the others)",
        "reward_model": reward_model,
        "reward_model_uncertainty": "DM, DR, SNDR, Switch-DR and DRos intervals resample the evaluated rows "
        "with the reward model held fixed: they leave out the reward model's own fitting error, so DM's "
        "interval in particular is too narrow whenever the reward model is wrong",
        "unpersonalised_cold_start_rows": cold,
        "dropped_open_reward_rows": n_open,
        "action_dist_null_rows": (
            table.column("action_dist").null_count if "action_dist" in table.column_names else None
        ),
        "logging": "on-policy mean reward of the evaluated rows (no weights): the logging policy's own value",
    }
    warned: list[str] = _assumption_warnings(ev_table, rows, names)
    if kind == "take_rates" and any(ESTIMATORS[e].needs_reward_model for e in names):
        warned.append(
            "the take_rates reward model is the same for every member: DM cannot see personalisation, and "
            "DR/SNDR lean on their weights alone (use reward_model=logistic or a trained model)"
        )

    policies: dict[str, dict] = {}
    policies["logging"] = {"kind": "logging", "on_policy": on_policy_value(rows.reward), "estimates": {}}
    if world is not None:
        if rows.logging_action_dist is not None:
            policies["logging"]["true_value"] = _true_value(world, contexts, rows, rows.logging_action_dist)
        else:  # expected reward of the images actually shown: the logging policy's truth on these draws
            q = world.expected_reward(contexts, rows.candidate_ids)
            policies["logging"]["true_value"] = float(q[np.arange(n), rows.action].mean())
    for name, dist in dists.items():
        estimates = _estimate(rows, dist, q_hat, names, settings, settings.interval, extra)
        some = next((e for e in estimates.values() if "diagnostics" in e), None)
        unsupported = some["diagnostics"]["unsupported_mass"] if some else 0.0
        diag = weight_diagnostics(
            rows.pscore, dist[np.arange(n), rows.action], rows.candidate_mask.sum(axis=1), request_id,
            unsupported, settings.diagnostics,
        )  # fmt: skip
        policies[name] = {
            "kind": "baseline" if name in ("random", "unpersonalised") else "target",
            "source": sources[name],
            "estimates": estimates,
            "weights": diag,
            "true_value": _true_value(world, contexts, rows, dist),
        }
        warned += [f"{policy_label(name)}: {w}" for w in diag["warnings"]]
    if settings.reward_model_bootstrap and "dm" in names:
        notes["reward_model_uncertainty"] = _refit_dm_intervals(
            policies, dists, kind, rows_all, table, titles, images, split, ev_index, settings
        )
    if model_scores is not None:
        policies["model"]["kind"] = "model"
        policies["model"]["policy"] = model_policy
    if world is not None:
        for name, action in (
            ("best_image", world.best_unpersonalised_action(contexts, rows.candidate_ids)),
            ("oracle", world.oracle_action(contexts, rows.candidate_ids)),
        ):
            dists[name] = one_hot(action, n_actions)
            policies[name] = {
                "kind": "oracle",
                "source": _TRUTH_ONLY[name],
                "estimates": {},
                "true_value": _true_value(world, contexts, rows, dists[name]),
            }

    segments = _segments(ev_table, rows, dists, q_hat, settings, world, contexts, source)
    rates = fit_take_rates(rows_all.take(train) if split is not None else rows_all)
    per_image = _per_image(rows, rates, dists)
    profile_scores = None
    if titles is not None and "played_title_ids" in ev_table.column_names:
        profile, labels = dominant_genre(ev_table.column("played_title_ids"), titles)
        title = settings.title_for_plot if settings.title_for_plot is not None else _plot_title(rows)
        if title is not None:
            if not (rows.title_id == title).any():
                raise ConfigError(f"title_for_plot={title}: no evaluated row shows that title")
            if model_scores is not None:
                scores, what = (
                    q_hat if kind == "model" else model_scores.expected_reward,
                    "model's predicted take probability",
                )
            elif world is not None:
                scores, what = (
                    world.expected_reward(contexts, rows.candidate_ids),
                    "true expected reward (simulator)",
                )
            else:
                scores, what = None, "observed take rate reweighted by 1/propensity"
            profile_scores = _profile_scores(int(title), rows, profile, labels, scores, what)
    for name, pol in policies.items():
        for est in pol["estimates"].values():
            warned += [f"{policy_label(name)} {est.get('label', '')}: {w}" for w in est.get("warnings", [])]
    return {
        "n_rows": int(len(table)),
        "n_train_rows": int(train.sum()) if train_fraction > 0 else 0,
        "n_eval_rows": int(n),
        "window": {
            "first": iso_time(rows.timestamp.min()),
            "last": iso_time(rows.timestamp.max()),
            "start": settings.window_start,
            "end": settings.window_end,
        },
        "estimators": names,
        "estimator_labels": {e.label: e.name for e in make_estimators(names, settings.estimator_params)},
        "interval": settings.interval,
        "alpha": settings.alpha,
        "reward_name": settings.reward_name,
        "reward_range": [float(rows_all.reward.min()), float(rows_all.reward.max())],
        "reward_model": kind,
        "policies": policies,
        "segments": segments,
        "per_image": per_image,
        "profile_scores": profile_scores,
        "notes": notes,
        "warnings": list(dict.fromkeys(warned)),
        "run": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - started,
        },
    }


MIPS_FEW_CANDIDATES = 10  # below this mean candidate count MIPS's grouping bias tends to outweigh its gain


def _assumption_warnings(table: pa.Table, rows: LoggedRows, names) -> list[str]:
    """Estimators asked for where the logs break what they assume."""
    out = []
    weighted = [n for n in names if n != "dm"]
    if weighted and "propensity_kind" in table.column_names:
        kinds = table.column("propensity_kind")
        estimated = pc.fill_null(pc.starts_with(kinds, "mc_estimate:"), False)
        if pc.any(estimated).as_py():
            draws = pc.cast(pc.utf8_slice_codeunits(kinds.filter(estimated), len("mc_estimate:")), pa.int64())
            fewest = pc.min(draws).as_py()
            estimated = estimated.to_numpy(zero_copy_only=False)
            out.append(
                f"{int(estimated.sum()):,} of {len(estimated):,} rows log a Monte Carlo estimate of the propensity "
                f"(as few as {fewest} draws): {', '.join(weighted)} assume exact propensities, and an estimated "
                "one that is small or zero-floored makes its row's weight unreliable"
            )
    mean_k = float(rows.candidate_mask.sum(axis=1).mean())
    mips = [n for n in names if n in ("mips", "snmips")]
    if mips and mean_k < MIPS_FEW_CANDIDATES:
        out.append(
            f"{', '.join(mips)} on rows with {mean_k:.1f} candidates on average: MIPS pays off where titles have "
            f"many candidates; with few, the bias from grouping unlike images usually outweighs the smaller "
            "weights (compare with snips)"
        )
    return out


def _refit_dm_intervals(
    policies: dict, dists: dict, kind: str, rows_all: LoggedRows, table: pa.Table, titles, images, split,
    ev_index: np.ndarray, s: EvaluationSettings,
) -> str:  # fmt: skip
    """DM intervals that include the reward model's fitting noise: refit it on ``reward_model_bootstrap``
    Poisson resamples of the rows (each row fitted count times, evaluated with the same weight) and take the
    percentile interval of DM over the refits. Returns the note that says what the intervals hold."""
    b = s.reward_model_bootstrap
    if isinstance(b, bool) or not isinstance(b, int) or b < 2:
        raise ConfigError(f"reward_model_bootstrap must be 0 (off) or an integer >= 2, got {b!r}")
    if kind == "model":
        return (
            "reward_model_bootstrap asks to refit the reward model, but it is the trained network, which is not "
            "refitted here: DM's interval holds it fixed (use reward_model=logistic to refit)"
        )
    rng = np.random.default_rng([s.seed, 0xB007])
    values: dict[str, list[float]] = {name: [] for name in dists}
    for _ in tqdm(range(b), desc="reward model refits", unit="fit", leave=False):
        counts = rng.poisson(1.0, len(rows_all))
        q_hat, _ = out_of_sample_rewards(
            kind, rows_all, table, titles, images, split, s.reward_model_folds, s.seed, None, counts
        )
        weight = counts[ev_index].astype(np.float64)
        for name, dist in dists.items():
            values[name].append(float(weight @ np.einsum("ij,ij->i", dist, q_hat) / weight.sum()))
    for name, v in values.items():
        est = policies[name]["estimates"].get("dm")
        if est is not None and "value" in est:
            lower, upper = np.quantile(v, [s.alpha / 2, 1 - s.alpha / 2])
            est.update(lower=float(lower), upper=float(upper), method="reward_model_refits", n_bootstrap=b)
    return (
        f"DM's intervals come from {b} refits of the reward model on bootstrap resamples of the rows: they "
        "hold the model's fitting noise as well as the rows' (not a wrong model's bias). DR, SNDR, Switch-DR "
        "and DRos intervals hold the reward model fixed"
    )


def _action_groups(rows: LoggedRows, images: pa.Table | None, names, s: EvaluationSettings):
    """MIPS's candidate groups (n, A) from k-means on the image embeddings, or None (no MIPS, no images)."""
    if not any(n in ("mips", "snmips") for n in names):
        return None
    if isinstance(s.mips_groups, bool) or not isinstance(s.mips_groups, int) or s.mips_groups < 1:
        raise ConfigError(f"mips_groups must be a positive integer, got {s.mips_groups!r}")
    codes, _, embeddings = image_codes(rows, images)
    if embeddings is None:
        return None
    return embedding_groups(embeddings, codes, rows.candidate_mask, s.mips_groups, s.seed)


def _mixture(table: pa.Table, rows: LoggedRows, policies: dict | None, source: str) -> np.ndarray | None:
    """The mixture propensity of the logging policies at each logged image (n,), checked against the logs:
    each row's own policy must give the logged image the logged propensity."""
    if not policies:
        return None
    if "logging_policy" not in table.column_names:
        raise DataError(
            f"{source}: logging_policies are given but the logs have no logging_policy column naming which "
            "policy wrote each row"
        )
    col = table.column("logging_policy")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: column 'logging_policy' is null at row {row}")
    wrote = col.to_numpy(zero_copy_only=False).astype(str)
    names = list(policies)
    unknown = sorted(set(wrote) - set(names))
    if unknown:
        row = int(np.flatnonzero(wrote == unknown[0])[0])
        raise DataError(
            f"{source}: column 'logging_policy' at row {row} names {str(unknown[0])!r}, which is not among "
            f"logging_policies {names}"
        )
    n = len(rows)
    probs = np.empty((n, len(names)))
    for k, (name, policy) in enumerate(policies.items()):
        policy = policy if isinstance(policy, TargetPolicy) else TargetPolicy(policy, f"callable {name}")
        probs[:, k] = policy(table, rows.candidate_mask).action_dist[np.arange(n), rows.action]
    index = np.searchsorted(names, wrote, sorter=np.argsort(names))
    logger = np.argsort(names)[index]
    own = probs[np.arange(n), logger]
    bad = np.abs(own - rows.pscore) > 1e-6 + 1e-4 * rows.pscore
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rid = table.column("request_id")[i].as_py()
        raise DataError(
            f"{source}: row {i} (request_id {rid}) was logged by {str(wrote[i])!r} with propensity {rows.pscore[i]:.6g}, "
            f"but that policy gives the logged image {own[i]:.6g}: logging_policies.{wrote[i]} is not the "
            "policy that wrote these rows"
        )
    return mixture_pscore(probs, logger)


_UNPERSONALISED = "per title the image with the best reweighted take rate, fitted out of sample"
_TRUTH_ONLY = {
    "best_image": "per title the image with the best true value for all members (simulator; truth only)",
    "oracle": "per row the truly best candidate (simulator; truth only)",
}
RESERVED_POLICY_NAMES = ("random", "logging", "unpersonalised", "model", "best_image", "oracle")


def _check_target_name(name: str) -> None:
    if name in RESERVED_POLICY_NAMES:
        raise ConfigError(f"targets.{name}: {name!r} names a built-in policy; choose another name")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"targets: policy name {name!r} must be letters, digits, '_' or '-'")


def iso_time(us: int) -> str:
    return datetime.fromtimestamp(int(us) / 1e6, UTC).isoformat(timespec="seconds")


def _parse_time(value: str, name: str) -> int:
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError as err:
        raise ConfigError(f"{name}={value!r} is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)") from err
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def known_rows(
    table: pa.Table, s: EvaluationSettings, source: str, at_least: int
) -> tuple[pa.Table, LoggedRows, int]:
    """The window's rows whose reward is known (table and arrays), and how many were dropped with reward null;
    fewer than ``at_least`` is an error (evaluate needs 1 row, the gate's interval 2)."""
    table, n_open = drop_open_rewards(window_rows(table, s, source))
    if table.num_rows < at_least:
        known = "no row has" if table.num_rows == 0 else f"only {table.num_rows} rows have"
        raise DataError(
            f"{source}: {known} a known reward in the window ({n_open} with reward null, the attribution window "
            f"still open); at least {at_least} needed"
        )
    return table, logged_rows(table, source), n_open


def window_rows(table: pa.Table, s: EvaluationSettings, source: str) -> pa.Table:
    """The rows of [window_start, window_end); all rows without a window."""
    if s.window_start is None and s.window_end is None:
        return table
    lo = _parse_time(s.window_start, "window_start") if s.window_start is not None else None
    hi = _parse_time(s.window_end, "window_end") if s.window_end is not None else None
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"window_start={s.window_start} is not before window_end={s.window_end}")
    ts = table.column("timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    keep = np.ones(len(ts), bool)
    if lo is not None:
        keep &= ts >= lo
    if hi is not None:
        keep &= ts < hi
    if not keep.any():
        first, last = (iso_time(ts.min()), iso_time(ts.max())) if len(ts) else ("-", "-")
        raise DataError(
            f"{source}: no row in the window [{s.window_start}, {s.window_end}); the logs run from {first} to "
            f"{last}"
        )
    return table.filter(pa.array(keep))


def _window_note(rows: LoggedRows, s: EvaluationSettings) -> str:
    window = (
        f" (window [{s.window_start or 'start'}, {s.window_end or 'end'}))"
        if s.window_start or s.window_end
        else ""
    )
    return f"{len(rows):,} evaluated rows logged from {iso_time(rows.timestamp.min())} to {iso_time(rows.timestamp.max())}{window}"


def _unpersonalised(
    rows_all: LoggedRows, split: np.ndarray | None, folds: int, seed: int
) -> tuple[np.ndarray, int]:
    """The unpersonalised bandit's (n_eval, A) action_dist, out of sample, and its cold-start rows."""
    cold = [0]

    def fit_predict(fit_index: np.ndarray, score_index: np.ndarray) -> np.ndarray:
        dist, n_cold = unpersonalised_action_dist(
            rows_all.take(score_index), fit_take_rates(rows_all.take(fit_index))
        )
        cold[0] += n_cold
        return dist

    dist = fit_out_of_sample(fit_predict, len(rows_all), split, folds, seed)
    return dist, cold[0]


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
                    if name not in _TRUTH_ONLY:
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
                        if pol is not ref:
                            pol.update(_lift_interval(pol, ref, s.alpha))
                    if pol.get("true_value") is not None and ref.get("true_value") is not None:
                        pol["true_lift_vs_unpersonalised"] = lift(pol["true_value"], ref["true_value"])
            else:
                entry["skipped"] = f"fewer than min_segment_rows={s.min_segment_rows} rows"
            values[label] = entry
        out[column] = values
    return out


def _lift_interval(pol: dict, ref: dict, alpha: float) -> dict:
    """Normal interval of the relative lift V / V_ref - 1 by the delta method, treating the two estimates
    as independent (they share rows, so with positively correlated estimates it is conservative)."""
    v, r = pol["value"], ref["value"]
    if r == 0 or not (math.isfinite(pol.get("se", math.nan)) and math.isfinite(ref.get("se", math.nan))):
        return {}
    se = abs(v / r) * math.sqrt((pol["se"] / v) ** 2 + (ref["se"] / r) ** 2) if v else abs(pol["se"] / r)
    z = z_value(alpha)
    return {"lift_lower": v / r - 1 - z * se, "lift_upper": v / r - 1 + z * se}


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


def reward_name_of(data: str | Path) -> str:
    """What a reward of 1 counts in a dataset folder: clicks for an Open Bandit Dataset import, quality plays
    for the simulator's logs, plain "reward" otherwise (``reward_name`` overrides it)."""
    root = Path(data)
    if (root / "obd_import.json").exists():
        return "click"
    if (root / WORLD_FILE).exists():
        return "quality play"
    return "reward"
