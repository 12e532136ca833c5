"""report.json and report.md of an evaluation result (the dict of ``evaluate_rows``)."""

from __future__ import annotations

import json
from pathlib import Path

from deepbandit.evaluation.labels import label as policy_label
from deepbandit.evaluation.labels import policy_order
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
    for name in policy_order(result["policies"]):
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
        rows.append([policy_label(name), *cells, fmt(pol.get("true_value"), decimals)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# One plain-language line per estimator and diagnostic (the report prints those a run used).
EXPLAIN = {
    "ips": "IPS reweights each logged reward by target / logging probability of the shown image: unbiased "
    "with right propensities and full support, noisy when weights are large.",
    "snips": "SNIPS is IPS divided by the mean weight: slightly biased, much steadier, always inside the "
    "range of observed rewards.",
    "dm": "DM averages the reward model's prediction for the policy's choices: no weights, so low variance, "
    "but exactly as right as the reward model.",
    "dr": "DR is DM plus an IPS correction of the reward model's error on the shown images: right if either "
    "the propensities or the reward model are right.",
    "sndr": "SNDR is DR with the correction self-normalised like SNIPS.",
    "switch_dr": "Switch-DR uses DR's correction only on rows whose weight is at most tau, DM elsewhere.",
    "replay": "Replay is the mean reward of rows where the policy picks the shown image (uniform logs only).",
    "dros": "DRos is DR with each weight shrunk (lambda w / (w^2 + lambda), lambda picked on the data to "
    "minimise estimated error): less variance, some bias towards DM, so its interval can miss the truth.",
    "mips": "MIPS reweights by the probability of the shown image's embedding cluster instead of the image: "
    "far smaller weights when a title has many candidates, biased when images of a cluster differ in reward.",
    "snmips": "SNMIPS is MIPS self-normalised like SNIPS.",
    "balanced_ips": "Balanced IPS divides by the mixture of all logging policies' propensities (logs "
    "from several policies).",
    "balanced_dr": "Balanced DR is DR with the mixture propensity of balanced IPS.",
}
DIAGNOSTICS_EXPLAINED = [
    "**ESS** (effective sample size, (sum w)^2 / sum w^2): how many equally weighted rows the weights are "
    "worth; under 1% of the rows an estimate rests on a handful of rows.",
    "**top-10 share**: share of all weight held by the ten heaviest rows (named in report.json, "
    "`policies.<name>.weights.heaviest_rows`).",
    "**mean weight** should be 1 within a few standard errors when propensities are right and the support "
    "is covered.",
    "**floor rows**: logged propensities far below uniform (a clipped or zero Monte Carlo count), whose "
    "weights explode.",
    "**unsupported**: the policy's mean mass on candidates the logging policy never shows; weighted "
    "estimators cannot see it.",
]


def markdown(result: dict, plots: list[Path], segment_estimator: str) -> str:
    """The human-readable report."""
    level = f"{1 - result['alpha']:.0%}"
    reward = result.get("reward_name", "reward")
    run = result.get("run", {})
    model = result.get("model") or {}
    out = [
        "# Off-policy evaluation report",
        "",
        f"- **data**: {result['notes'].get('window', '')}; {result['n_rows']:,} logged impressions, "
        f"{result['n_train_rows']:,} fit the data-driven baselines only, {result['n_eval_rows']:,} evaluated.",
        f"- **reward**: {reward} (values are mean {reward} per impression, with {level} "
        f"{result['interval']} intervals; the true column is the simulator's exact value, — on real logs).",
        f"- **model**: {model.get('bundle') or 'none'}"
        + (f" ({model['policy']} policy)" if model.get("policy") else ""),
        f"- **run**: {run.get('date', '?')}, {run.get('seconds', float('nan')):.1f} s; reward model "
        f"{result.get('reward_model', '?')}.",
        "",
        "## Policy values",
        "",
        _table(["policy", *[e.upper() for e in result["estimators"]], "true"], summary_rows(result)),
        "",
    ]
    sources = [(n, p["source"]) for n, p in result["policies"].items() if p.get("source")]
    if sources:
        out += ["Policies:", ""] + [f"- **{policy_label(n)}**: {src}" for n, src in sources] + [""]
    warned = list(result.get("warnings", []))
    errors = {f"{policy_label(n)} / {k}: {e['error']}" for n, p in result["policies"].items()
              for k, e in p["estimates"].items() if "error" in e}  # fmt: skip
    if warned or errors:
        out += (
            ["## Warnings", ""]
            + [f"- {w}" for w in warned]
            + [f"- not estimated: {e}" for e in sorted(errors)]
        )
        out += [""]
    out += ["## How to read the estimators", ""]
    out += [f"- {EXPLAIN[e]}" for e in result["estimators"] if e in EXPLAIN] + [""]
    out += ["Notes:", ""] + [f"- **{k}**: {v}" for k, v in result["notes"].items()] + [""]
    out += ["## Diagnostics", "", _table(
        ["policy", "ESS", "ESS / rows", "top-10 share", "max weight", "mean weight ± se", "match rate",
         "floor rows", "unsupported"],
        [[policy_label(n), f"{w['ess']:.0f}", f"{w['ess_fraction']:.3f}", f"{w['top_weight_share']:.1%}",
          f"{d['max_weight']:.3g}", f"{d['mean_weight']:.3f} ± {d['mean_weight_se']:.3f}", f"{d['match_rate']:.3f}",
          f"{w['floor_propensity_rows']:,}", f"{w['unsupported_mass']:.2%}"]
         for n, p in result["policies"].items() if "weights" in p
         for e in [next((e for e in p["estimates"].values() if "diagnostics" in e), None)] if e is not None
         for d, w in [(e["diagnostics"], p["weights"])]],
    ), ""]  # fmt: skip
    out += [f"- {line}" for line in DIAGNOSTICS_EXPLAINED] + [""]
    out += [
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
                rows.append([
                    f"{label}", f"{entry['n_rows']:,}", policy_label(name), _cell(pol, decimals) if "value" in pol else "—",
                    _lift(pol), fmt(pol.get("true_value"), decimals) + _true_lift(pol),
                ])  # fmt: skip
        out += [
            f"### {column}",
            "",
            _table([column, "rows", "policy", "value", "lift [interval]", "true (lift)"], rows),
            "",
        ]
    pi = result["per_image"]
    out += ["## Per-image take rates", ""]
    for k, v in pi["agreement_with_unpersonalised"].items():
        out.append(f"- {policy_label(k)} picks the unpersonalised bandit's image on {100 * v:.1f}% of rows.")
    out += ["", f"{len(pi['image_id'])} images shown on evaluated rows; see report.json (`per_image`).", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(out)


def _lift(pol: dict) -> str:
    lift = pol.get("lift_vs_unpersonalised")
    if lift is None:
        return "—"
    if pol.get("lift_lower") is None:
        return f"{100 * lift:+.1f}%"
    return f"{100 * lift:+.1f}% [{100 * pol['lift_lower']:+.1f}%, {100 * pol['lift_upper']:+.1f}%]"


def _true_lift(pol: dict) -> str:
    true_lift = pol.get("true_lift_vs_unpersonalised")
    return "" if true_lift is None else f" ({100 * true_lift:+.1f}%)"


def write_report(result: dict, out_dir: Path, plots: list[Path], segment_estimator: str) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "report.json", out_dir / "report.md"
    js.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    md.write_text(markdown(result, plots, segment_estimator) + "\n")
    return js, md
