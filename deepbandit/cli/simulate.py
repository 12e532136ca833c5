"""`deepbandit simulate`: simulate the artwork world and write its logs, images, titles and ground truth.

    deepbandit simulate                                        # small world, 1M rows, softmax logging
    deepbandit simulate world=tiny n_impressions=20000 logging_policy=uniform out_dir=data/tiny
    deepbandit simulate world=large n_impressions=10000000 logging_policy.sticky_window_hours=24

Writes ``out_dir`` (default ``data/sim``; no run folder) as described in docs/simulator.md, prints a summary
table (rows, take rate, true value of random / logging / best-unpersonalised / oracle) and returns it.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from deepbandit.cli._hydra import console as cli_console
from deepbandit.cli._hydra import entry_point
from deepbandit.sim.simulator import POLICY_NAMES, SimulateConfig, simulate

log = logging.getLogger(__name__)


def _typed(cfg: DictConfig | SimulateConfig) -> SimulateConfig:
    if isinstance(cfg, SimulateConfig):
        return cfg
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, SimulateConfig):  # composed without the schema: validate through it now
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SimulateConfig), cfg))
    return typed


def summary_table(summary: dict) -> Table:
    """Rows, take rate and the true policy values, overall and by prior interaction."""
    values = summary["policy_values"]
    table = Table(title=f"{summary['n_impressions']:,} impressions -> {summary['out_dir']}")
    table.add_column("true value / logged")
    for split in values:
        table.add_column(split.replace("prior_interaction_", "prior="), justify="right")
    table.add_row("rows", *(f"{v['rows']:,}" for v in values.values()))
    table.add_row(
        "take rate (logged)", *(f"{v['take_rate']:.4f}±{v['take_rate_se']:.4f}" for v in values.values())
    )
    for name in POLICY_NAMES:
        label = f"{name} ({summary['logging_policy']})" if name == "logging" else name.replace("_", " ")
        table.add_row(label, *(f"{v[name]:.4f}" for v in values.values()))
    return table


def run(cfg: DictConfig | SimulateConfig) -> dict:
    """Simulate into ``cfg.out_dir`` and return the summary (truth.json's content plus timings)."""
    config = _typed(cfg)
    console = cli_console(stderr=True)
    with Progress(
        TextColumn("simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not config.progress,
        transient=True,
    ) as progress:
        task = progress.add_task("simulate", total=config.n_impressions)
        summary = simulate(config, on_progress=lambda done: progress.update(task, completed=done))
    cli_console().print(summary_table(summary))
    log.info(
        "%d rows in %.1f s (%.0f rows/s, world %.1f s) -> %s",
        config.n_impressions,
        summary["seconds"]["total"],
        summary["rows_per_second"],
        summary["seconds"]["world"],
        summary["out_dir"],
    )
    return summary


@entry_point("simulate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
