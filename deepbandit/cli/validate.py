"""`deepbandit validate`: check a dataset against the log contract.

    deepbandit validate dataset=data/sim                        # strict: exit 1 at the first problem
    deepbandit validate dataset=data/sim mode=quarantine        # bad rows to <run dir>/quarantine, counts

Prints a table of rows read, kept and quarantined per file and per reason. docs/log-contract.md lists every
check; `deepbandit.data.validation` does the work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING, DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deepbandit.cli._hydra import (
    DATASET_ROOT,
    entry_point,
    require_dir,
)
from deepbandit.cli._hydra import (
    console as cli_console,
)
from deepbandit.data.validation import ValidationError, validate_dataset


class Mode(Enum):
    strict = "strict"
    quarantine = "quarantine"


@dataclass
class ValidateConfig:
    dataset: str = MISSING  # dataset root
    mode: Mode = Mode.strict
    quarantine_dir: str | None = (
        None  # None: outputs/<date>/<time>/quarantine (the command), required by run()
    )
    embedding_dim: int | None = None  # None: inferred from the first image, a differing one raises
    member_features_dim: int | None = None  # None: inferred from the first row, a differing one raises
    batch_size: int = 1 << 18
    progress: bool = True


def run(cfg: DictConfig) -> dict:
    """Validate ``cfg.dataset``; returns counts. Strict mode raises ValidationError at the first problem.

    Returns rows_read, rows_kept, rows_quarantined, reasons {reason: rows}, files {file: {kind, rows_read,
    rows_kept, rows_quarantined, quarantine_path}}, quarantine_dir and skipped (files under impressions/ that
    are not *.parquet, so neither validated nor read by training).
    """
    mode = cfg.mode.value if isinstance(cfg.mode, Enum) else str(cfg.mode)
    report = validate_dataset(
        cfg.dataset,
        mode,
        cfg.quarantine_dir,
        embedding_dim=cfg.embedding_dim,
        member_features_dim=cfg.member_features_dim,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
    )
    return {
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "rows_quarantined": report.rows_quarantined,
        "reasons": dict(report.reasons.most_common()),
        "files": {
            r.file: {
                "kind": r.kind,
                "rows_read": r.rows_read,
                "rows_kept": r.rows_kept,
                "rows_quarantined": r.rows_quarantined,
                "quarantine_path": None if r.quarantine_path is None else str(r.quarantine_path),
            }
            for r in report.files
        },
        "quarantine_dir": cfg.quarantine_dir,
        "skipped": report.skipped,
    }


def print_summary(summary: dict, console: Console) -> None:
    files = Table(title="rows per file")
    files.add_column("file", overflow="fold")
    files.add_column("kind")
    for name in ("read", "kept", "quarantined"):
        files.add_column(name, justify="right")
    for file, r in summary["files"].items():
        files.add_row(
            escape(file),
            r["kind"],
            f"{r['rows_read']:,}",
            f"{r['rows_kept']:,}",
            f"{r['rows_quarantined']:,}",
        )
    total = (f"{summary[k]:,}" for k in ("rows_read", "rows_kept", "rows_quarantined"))
    files.add_row("total", "", *total, style="bold")
    console.print(files)
    for path in summary["skipped"]:
        console.print(
            f"[yellow]skipped[/] {escape(path)}: not *.parquet, so neither validated nor read by training"
        )
    if summary["reasons"]:
        reasons = Table(title="quarantined rows per reason")
        reasons.add_column("reason")
        reasons.add_column("rows", justify="right")
        for reason, count in summary["reasons"].items():
            reasons.add_row(escape(reason), f"{count:,}")
        console.print(reasons)
        console.print(
            f"quarantined rows, with reason, column and row: {escape(str(summary['quarantine_dir']))}",
            soft_wrap=True,
        )


@entry_point("validate")
def _main(cfg: DictConfig) -> None:
    require_dir(cfg.dataset, "dataset", DATASET_ROOT)
    if cfg.quarantine_dir is None:  # a folder only where there is something to keep, as Hydra would name it
        cfg.quarantine_dir = time.strftime("outputs/%Y-%m-%d/%H-%M-%S/quarantine")
    try:
        summary = run(cfg)
    except ValidationError as e:
        # the data break the contract: the command's finding (exit 1), not a usage mistake (exit 2)
        cli_console(stderr=True).print(
            f"deepbandit validate: [bold red]invalid:[/] {escape(str(e))}", soft_wrap=True
        )
        raise SystemExit(1) from e
    print_summary(summary, cli_console())


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
