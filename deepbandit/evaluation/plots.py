"""PNG plots of an evaluation result (the dict of ``evaluate_rows``), drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

ORDER = ("random", "logging", "unpersonalised", "model", "oracle")
LABELS = {
    "random": "uniform random",
    "logging": "logging policy (on-policy)",
    "unpersonalised": "unpersonalised bandit",
    "model": "model policy",
    "oracle": "oracle (true value only)",
}


def _point(policy: dict, estimator: str) -> tuple[float, float, float] | None:
    """(value, lower, upper) of a policy row: the chosen estimator, or the on-policy mean for logging."""
    e = policy["on_policy"] if "on_policy" in policy else policy["estimates"].get(estimator, {})
    if "value" not in e:
        return None
    lo = e["lower"] if e.get("lower") is not None else e["value"]
    hi = e["upper"] if e.get("upper") is not None else e["value"]
    return e["value"], lo, hi


def plot_policy_values(result: dict, estimator: str, path: Path) -> Path:
    """Take fraction of each policy with its interval; the true value as a diamond when known."""
    names = [n for n in ORDER if n in result["policies"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        pol = result["policies"][name]
        p = _point(pol, estimator)
        if p is not None:
            v, lo, hi = p
            ax.bar(i, v, color="C0" if name != "model" else "C2", alpha=0.8)
            ax.errorbar(i, v, yerr=[[v - lo], [hi - v]], color="black", capsize=6, lw=1.5)
        if pol.get("true_value") is not None:
            ax.scatter(i, pol["true_value"], marker="D", color="C3", zorder=3, s=40)
    handles = [
        Line2D([], [], color="black", marker="_", markersize=12, label=f"{1 - result['alpha']:.0%} interval")
    ]
    if any(result["policies"][n].get("true_value") is not None for n in names):
        handles.append(Line2D([], [], marker="D", color="C3", lw=0, label="true value (simulator)"))
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=15, ha="right")
    ax.set_ylabel("take fraction (quality plays per impression)")
    ax.set_title(
        f"Policy value on {result['n_eval_rows']:,} evaluated impressions ({estimator.upper()} estimate)"
    )
    ax.set_ylim(bottom=0)
    ax.legend(handles=handles, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_profile_scores(result: dict, path: Path) -> Path | None:
    """For one title, each image's score by member profile (dominant genre of the viewing history)."""
    ps = result.get("profile_scores")
    if not ps:
        return None
    scores = np.array([[np.nan if v is None else v for v in row] for row in ps["scores"]], dtype=float)
    n_prof, n_img = scores.shape
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * n_prof + 3), 4.5))
    width = 0.8 / n_img
    x = np.arange(n_prof)
    for j, image in enumerate(ps["image_ids"]):
        ax.bar(x + (j - (n_img - 1) / 2) * width, scores[:, j], width, label=f"image {image}")
    best = np.nanargmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    for i in range(n_prof):
        ax.text(x[i] + (best[i] - (n_img - 1) / 2) * width, scores[i, best[i]], "★", ha="center", va="bottom")
    labels = [f"{p}\n(n={n:,})" for p, n in zip(ps["profiles"], ps["profile_rows"], strict=True)]
    ax.set_xticks(x, labels)
    ax.set_xlabel("member profile (dominant genre in viewing history)")
    ax.set_ylabel(f"{ps['source']}\n(quality plays per impression)")
    ax.set_title(f"Title {ps['title_id']}: which image suits which members (★ = best per profile)")
    ax.legend(title="candidate image", fontsize="small", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_segment_lift(result: dict, path: Path) -> Path | None:
    """Relative lift over the unpersonalised bandit per segment value, for each personalised policy."""
    bars = []  # (label, policy, estimated lift, true lift)
    for column, values in result["segments"].items():
        for label, entry in values.items():
            for name in ("random", "model", "oracle"):
                pol = entry.get("policies", {}).get(name)
                if pol is None:
                    continue
                bars.append((f"{column}={label}", name, pol.get("lift_vs_unpersonalised"),
                             pol.get("true_lift_vs_unpersonalised")))  # fmt: skip
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
            ax.bar(pos, ys, width, hatch=hatch, label=f"{LABELS[name]}, {which}", alpha=0.85)
            k += 1
    if k == 0:  # no lift defined anywhere (e.g. the unpersonalised value is 0 in every segment)
        plt.close(fig)
        return None
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(segments)), segments, rotation=20, ha="right")
    ax.set_ylabel("lift over unpersonalised bandit (%)")
    ax.set_title("Lift per segment (estimated and, when known, true)")
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
    ax.set_ylabel("take fraction (quality plays per impression)")
    agree = ", ".join(
        f"{LABELS[k]} agrees {100 * v:.0f}% of rows" for k, v in pi["agreement_with_unpersonalised"].items()
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
