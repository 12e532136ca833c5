"""PNG plots of an evaluation result (the dict of ``evaluate_rows``), drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from deepbandit.evaluation.labels import ORDER, label, policy_order  # noqa: E402

TOP_IMAGES = 8  # images drawn per title in the profile plot: a legend of 80 entries reads as noise


def reward_axis(result: dict) -> str:
    return f"{result.get('reward_name', 'reward')}s per impression"


def _point(
    policy: dict, estimator: str, bounds: tuple[float, float]
) -> tuple[float, float, float, bool] | None:
    """(value, lower, upper, clipped) of a policy row: the chosen estimator, or the on-policy mean for logging.
    The interval is clipped to the rewards' range (a normal interval can reach below 0), and says so."""
    e = policy["on_policy"] if "on_policy" in policy else policy["estimates"].get(estimator, {})
    if "value" not in e:
        return None
    lo = e["lower"] if e.get("lower") is not None else e["value"]
    hi = e["upper"] if e.get("upper") is not None else e["value"]
    clipped = lo < bounds[0] or hi > bounds[1]
    return e["value"], max(lo, bounds[0]), min(hi, bounds[1]), clipped


def plot_policy_values(result: dict, estimator: str, path: Path) -> Path:
    """Take fraction of each policy with its interval; the true value as a diamond when known."""
    names = policy_order(result["policies"])
    bounds = tuple(result.get("reward_range", (0.0, 1.0)))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names) + 2), 4.5))
    any_clipped = False
    for i, name in enumerate(names):
        pol = result["policies"][name]
        p = _point(pol, estimator, bounds)
        if p is not None:
            v, lo, hi, clipped = p
            any_clipped |= clipped
            color = "C2" if name == "model" else "C0" if name in ORDER else "C1"
            ax.bar(i, v, color=color, alpha=0.8)
            ax.errorbar(i, v, yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], color="black", capsize=6, lw=1.5)
        if pol.get("true_value") is not None:
            ax.scatter(i, pol["true_value"], marker="D", color="C3", zorder=3, s=40)
    handles = [
        Line2D([], [], color="black", marker="_", markersize=12, label=f"{1 - result['alpha']:.0%} interval")
    ]
    if any(result["policies"][n].get("true_value") is not None for n in names):
        handles.append(Line2D([], [], marker="D", color="C3", lw=0, label="true value (simulator)"))
    if any_clipped:
        handles.append(
            Line2D([], [], lw=0, label=f"intervals cut at the reward range {bounds[0]:g}..{bounds[1]:g}")
        )
    ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=15, ha="right")
    ax.set_ylabel(reward_axis(result))
    ax.set_title(
        f"Policy value on {result['n_eval_rows']:,} evaluated impressions ({estimator.upper()} estimate)"
    )
    ax.set_ylim(bottom=min(0, bounds[0]))
    ax.legend(handles=handles, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_profile_scores(result: dict, path: Path, top: int = TOP_IMAGES) -> Path | None:
    """For one title, each image's score by member profile (dominant genre of the viewing history): the
    ``top`` images by their best score over the profiles (a title may have 80 candidates); one profile
    only (e.g. logs without viewing histories) draws the images as ranked horizontal bars."""
    ps = result.get("profile_scores")
    if not ps:
        return None
    scores = np.array([[np.nan if v is None else v for v in row] for row in ps["scores"]], dtype=float)
    if np.isnan(scores).all():
        return None
    n_prof, n_img = scores.shape
    best_over_profiles = np.where(np.isnan(scores), -np.inf, scores).max(axis=0)
    keep = np.argsort(-best_over_profiles, kind="stable")[: min(top, n_img)]
    shown = f"the {len(keep)} best of {n_img} images" if len(keep) < n_img else f"all {n_img} images"
    ylabel = f"{ps['source']}\n({reward_axis(result)})"
    if n_prof == 1:
        rows = keep[::-1]  # best at the top
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.8))
        ax.barh(np.arange(len(rows)), scores[0, rows], color="C0")
        ax.set_yticks(np.arange(len(rows)), [f"image {ps['image_ids'][j]}" for j in rows])
        ax.set_xlabel(ylabel.replace("\n", " "))
        ax.set_title(f"Title {ps['title_id']}: {shown}, one member profile ({ps['profiles'][0]}, "
                     f"n={ps['profile_rows'][0]:,})")  # fmt: skip
        ax.grid(axis="x", alpha=0.3)
        return _save(fig, path)
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * n_prof + 3), 4.5))
    width = 0.8 / len(keep)
    x = np.arange(n_prof)
    for k, j in enumerate(keep):
        ax.bar(
            x + (k - (len(keep) - 1) / 2) * width, scores[:, j], width, label=f"image {ps['image_ids'][j]}"
        )
    masked = np.where(np.isnan(scores), -np.inf, scores)
    for i in range(n_prof):
        b = int(np.argmax(masked[i]))
        if b in keep:
            k = int(np.flatnonzero(keep == b)[0])
            ax.text(x[i] + (k - (len(keep) - 1) / 2) * width, scores[i, b], "★", ha="center", va="bottom")
    labels = [f"{p}\n(n={n:,})" for p, n in zip(ps["profiles"], ps["profile_rows"], strict=True)]
    ax.set_xticks(x, labels)
    ax.set_xlabel("member profile (dominant genre in viewing history)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Title {ps['title_id']}: which image suits which members ({shown}; ★ = best per profile)")
    ax.legend(title="candidate image", fontsize="small", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_segment_lift(result: dict, path: Path) -> Path | None:
    """Relative lift over the unpersonalised bandit per segment value, for each personalised policy."""
    bars = []  # (label, policy, estimated lift, true lift, (lower, upper) or None)
    for column, values in result["segments"].items():
        for value, entry in values.items():
            for name, pol in entry.get("policies", {}).items():
                if name in ("unpersonalised", "logging"):
                    continue
                bounds = (pol["lift_lower"], pol["lift_upper"]) if "lift_lower" in pol else None
                bars.append((f"{column}={value}", name, pol.get("lift_vs_unpersonalised"),
                             pol.get("true_lift_vs_unpersonalised"), bounds))  # fmt: skip
    if not bars:
        return None
    segments = list(dict.fromkeys(b[0] for b in bars))
    policies = list(dict.fromkeys(b[1] for b in bars))
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(segments) + 3), 4.5))
    width = 0.8 / (2 * len(policies))
    k = 0
    for name in policies:
        for which, idx, hatch in (("estimated", 2, None), ("true", 3, "//")):
            ys = [next((b[idx] for b in bars if b[0] == s and b[1] == name), None) for s in segments]
            if all(y is None for y in ys):
                continue
            ys = [np.nan if y is None else 100 * y for y in ys]
            pos = np.arange(len(segments)) + (k - (2 * len(policies) - 1) / 2) * width
            ax.bar(pos, ys, width, hatch=hatch, label=f"{label(name)}, {which}", alpha=0.85)
            if which == "estimated":  # the delta-method interval of the lift, where the segment has one
                for p, y, s in zip(pos, ys, segments, strict=True):
                    b = next((b[4] for b in bars if b[0] == s and b[1] == name), None)
                    if b is not None and np.isfinite(y):
                        ax.errorbar(p, y, yerr=[[y - 100 * b[0]], [100 * b[1] - y]], color="black", lw=0.8,
                                    capsize=2)  # fmt: skip
            k += 1
    if k == 0:  # no lift defined anywhere (e.g. the unpersonalised value is 0 in every segment)
        plt.close(fig)
        return None
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(segments)), segments, rotation=20, ha="right")
    ax.set_ylabel("lift over unpersonalised bandit (%)")
    ax.set_title(
        f"Lift per segment (estimated with its {1 - result['alpha']:.0%} interval and, when known, true)"
    )
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_per_image(result: dict, path: Path, top: int = 30) -> Path:
    """Take rate of the most-shown images, observed and reweighted; the unpersonalised choices marked."""
    pi = result["per_image"]
    order = np.argsort(pi["shows"])[::-1][:top]
    order = order[np.lexsort((np.array(pi["image_id"])[order], np.array(pi["title_id"])[order]))]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(order) + 3), 4.5))
    x = np.arange(len(order))
    raw = np.array(pi["take_rate"])[order]
    rew = np.array(pi["reweighted_take_rate"])[order]
    ax.bar(x - 0.2, raw, 0.4, label="observed take rate")
    ax.bar(x + 0.2, rew, 0.4, label="take rate reweighted by 1/propensity")
    chosen = np.array(pi["is_unpersonalised_choice"])[order]
    ax.scatter(x[chosen], np.maximum(raw, rew)[chosen] * 1.05 + 1e-3, marker="v", color="black",
               label="unpersonalised bandit's image")  # fmt: skip
    ax.set_xticks(x, [f"t{t}/i{i}" for t, i in zip(np.array(pi["title_id"])[order],
                                                    np.array(pi["image_id"])[order], strict=True)],
                  rotation=90, fontsize="small")  # fmt: skip
    ax.set_xlabel("title / image (most shown images)")
    ax.set_ylabel(reward_axis(result))
    agree = ", ".join(
        f"{label(k)} agrees {100 * v:.0f}% of rows" for k, v in pi["agreement_with_unpersonalised"].items()
    )
    ax.set_title("Per-image take rates" + (f"\n{agree} with the unpersonalised choice" if agree else ""))
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(result: dict, out_dir: Path, estimator: str) -> list[Path]:
    """All four plots into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        plot_policy_values(result, estimator, out_dir / "policy_values.png"),
        plot_profile_scores(result, out_dir / "profile_scores.png"),
        plot_segment_lift(result, out_dir / "segment_lift.png"),
        plot_per_image(result, out_dir / "per_image.png"),
    ]
    return [p for p in made if p is not None]
