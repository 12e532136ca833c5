"""`deepbandit sweep-report <multirun dir>`: rank the runs of a sweep by validation policy value.

Reads every ``metrics.json`` under the directory (one per run of ``deepbandit train -m ...``) and prints a
table sorted by the monitored validation value (SNIPS of the greedy policy by default) with its interval,
the run's overrides, and when the data are simulated the true greedy value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.table import Table

from deepbandit.cli._hydra import console as cli_console
from deepbandit.formatting import decimals_for, fmt


def collect(root: str | Path, metric: str | None = None) -> list[dict]:
    """One row per run under ``root``, best first: dir, overrides, value, lower, upper, true value."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (pass the multirun folder of a sweep)")
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        m = json.loads(path.read_text())
        key = metric or m.get("monitor", "val/snips_greedy")
        val = m.get("val", {})
        # report the epoch the checkpoint kept (the best), falling back to the last
        history = [h for h in m.get("val_history", []) if h.get(key) is not None]
        best = max(history, key=lambda h: h[key]) if history else val
        overrides = path.parent / ".hydra" / "overrides.yaml"
        rows.append(
            {
                "run": str(path.parent.relative_to(root)),
                "overrides": " ".join(
                    line.strip("- \n") for line in overrides.read_text().splitlines() if line.strip()
                )
                if overrides.exists()
                else "",
                "metric": key,
                "value": best.get(key),
                "lower": best.get(f"{key}_lower"),
                "upper": best.get(f"{key}_upper"),
                "true_greedy": m.get("true", {}).get("all", {}).get("greedy"),
            }
        )
    if not rows:
        raise FileNotFoundError(f"{root}: no metrics.json found (did the sweep's runs finish?)")
    rows.sort(key=lambda r: -float("inf") if r["value"] is None else -r["value"])
    return rows


def table(rows: list[dict]) -> Table:
    t = Table(title=f"runs ranked by {rows[0]['metric']}")
    for name in ("#", "run", "overrides", "value", "95% interval", "true greedy"):
        t.add_column(name, justify="right" if name in ("#", "value") else "left")
    d = decimals_for(v for r in rows for v in (r["value"], r["lower"], r["upper"], r["true_greedy"]))
    for i, r in enumerate(rows, 1):
        interval = "-" if r["lower"] is None else f"[{fmt(r['lower'], d)}, {fmt(r['upper'], d)}]"
        t.add_row(str(i), r["run"], r["overrides"], fmt(r["value"], d), interval, fmt(r["true_greedy"], d))
    return t


def run(root: str | Path, metric: str | None = None) -> list[dict]:
    rows = collect(root, metric)
    cli_console().print(table(rows))
    return rows


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print("usage: deepbandit sweep-report <multirun dir> [metric, default: each run's monitor]")
        sys.exit(0 if args else 2)
    try:
        run(*args)
    except FileNotFoundError as err:
        print(f"deepbandit sweep-report: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
