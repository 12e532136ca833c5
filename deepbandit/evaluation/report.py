"""report.json and report.md of an evaluation result (the dict of ``evaluate_rows``)."""

from __future__ import annotations

import json
from pathlib import Path

from deepbandit.evaluation.plots import LABELS, ORDER
from deepbandit.formatting import decimals_for, fmt


def _values(result: dict) -> list[float | None]:
    """Every policy value of the result: they share one number of decimals."""
    out = []
    for pol in result["policies"].values():
        for e in [pol.get("on_policy", {}), *pol.get("estimates", {}).values()]:
            out += [e.get("value"), e.get("lower"), e.get("upper")]
        out.append(pol.get("true_value"))
    return out


def _cell(e: dict, decimals: int, interval: bool = True) -> str:
    if "error" in e:
        return "n/a"
    if e.get("lower") is None or not interval:
        return fmt(e["value"], decimals)
    return f"{fmt(e['value'], decimals)} [{fmt(e['lower'], decimals)}, {fmt(e['upper'], decimals)}]"


def summary_rows(result: dict, interval_of: str | None = "all") -> list[list[str]]:
    """One row per policy: name, each estimator's value [interval], true value (— when unknown), with the
    decimals that the scale of the values needs (``decimals_for``). ``interval_of``: "all" gives every
    estimator's interval; an estimator's name gives only that one's (a console-wide table)."""
    decimals = decimals_for(_values(result))
    rows = []
    for name in [n for n in ORDER if n in result["policies"]]:
        pol = result["policies"][name]
        if "on_policy" in pol:
            cells = [_cell(pol["on_policy"], decimals, interval_of is not None) + " (on-policy)"] + [""] * (
                len(result["estimators"]) - 1
            )
        elif not pol["estimates"]:
            cells = ["—"] * len(result["estimators"])
        else:
            cells = [
                _cell(pol["estimates"][e], decimals, interval_of in ("all", e)) for e in result["estimators"]
            ]
        rows.append([LABELS[name], *cells, fmt(pol.get("true_value"), decimals)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict, plots: list[Path], segment_estimator: str) -> str:
    """The human-readable report."""
    level = f"{1 - result['alpha']:.0%}"
    out = [
        "# Off-policy evaluation report",
        "",
        f"{result['n_rows']:,} logged impressions; {result['n_train_rows']:,} fit the data-driven baselines, "
        f"{result['n_eval_rows']:,} are evaluated. Values are take fractions (reward per impression), with "
        f"{level} {result['interval']} intervals. The true column is the simulator's exact value (— on real logs).",
        "",
        "## Policy values",
        "",
        _table(["policy", *[e.upper() for e in result["estimators"]], "true"], summary_rows(result)),
        "",
        "Notes:",
        "",
    ]
    out += [f"- **{k}**: {v}" for k, v in result["notes"].items()]
    warned = {
        w for p in result["policies"].values() for e in p["estimates"].values() for w in e.get("warnings", [])
    }
    errors = {f"{n}/{k}: {e['error']}" for n, p in result["policies"].items() for k, e in p["estimates"].items()
              if "error" in e}  # fmt: skip
    out += [f"- warning: {w}" for w in sorted(warned)] + [f"- not estimated: {e}" for e in sorted(errors)]
    out += ["", "## Diagnostics", "", _table(
        ["policy", "estimator", "ESS", "ESS / rows", "max weight", "mean weight ± se", "match rate"],
        [[LABELS[n], k, f"{d['ess']:.0f}", f"{d['ess'] / d['n_rows']:.3f}", f"{d['max_weight']:.3g}",
          f"{d['mean_weight']:.3f} ± {d['mean_weight_se']:.3f}", f"{d['match_rate']:.3f}"]
         for n, p in result["policies"].items() for k, e in list(p["estimates"].items())[:1]
         if "diagnostics" in e for d in [e["diagnostics"]]],
    )]  # fmt: skip
    out += [
        "",
        f"## Segments ({segment_estimator.upper()}, normal {level} intervals; lift vs unpersonalised)",
        "",
    ]
    decimals = decimals_for(_values(result))
    for column, values in result["segments"].items():
        rows = []
        for label, entry in values.items():
            if "skipped" in entry:
                rows.append([f"{label}", f"{entry['n_rows']:,}", "skipped: " + entry["skipped"], "", "", ""])
                continue
            for name, pol in entry["policies"].items():
                lift = pol.get("lift_vs_unpersonalised")
                true_lift = pol.get("true_lift_vs_unpersonalised")
                rows.append([
                    f"{label}", f"{entry['n_rows']:,}", LABELS[name], _cell(pol, decimals) if "value" in pol else "—",
                    "—" if lift is None else f"{100 * lift:+.1f}%",
                    fmt(pol.get("true_value"), decimals) + ("" if true_lift is None else f" ({100 * true_lift:+.1f}%)"),
                ])  # fmt: skip
        out += [
            f"### {column}",
            "",
            _table([column, "rows", "policy", "value", "lift", "true (lift)"], rows),
            "",
        ]
    pi = result["per_image"]
    out += ["## Per-image take rates", ""]
    for k, v in pi["agreement_with_unpersonalised"].items():
        out.append(f"- {LABELS[k]} picks the unpersonalised bandit's image on {100 * v:.1f}% of rows.")
    out += ["", f"{len(pi['image_id'])} images shown on evaluated rows; see report.json (`per_image`).", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(out)


def write_report(result: dict, out_dir: Path, plots: list[Path], segment_estimator: str) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "report.json", out_dir / "report.md"
    js.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    md.write_text(markdown(result, plots, segment_estimator) + "\n")
    return js, md
