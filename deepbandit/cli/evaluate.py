"""`deepbandit evaluate`: off-policy evaluation report of the baselines (and a trained model) on a dataset.

    deepbandit evaluate dataset=data/sim
    deepbandit evaluate dataset=data/sim bundle=outputs/2026-01-01/12-00-00/model.pt model_policy=thompson

Writes report.md, report.json and PNG plots into the run directory (``out_dir``) and prints a summary
table. docs/evaluation.md explains how to read them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from deepbandit.cli._hydra import (
    BUNDLE_FILE,
    DATASET_ROOT,
    entry_point,
    require_dir,
    require_file,
    run_dir,
)
from deepbandit.cli._hydra import (
    console as cli_console,
)
from deepbandit.cli.targets import target_from_path
from deepbandit.errors import ConfigError
from deepbandit.evaluation.diagnostics import DiagnosticThresholds
from deepbandit.evaluation.estimators import INTERVAL_METHODS
from deepbandit.evaluation.evaluate import (
    ESTIMATOR_PARAMS,
    EvaluationSettings,
    evaluate_rows,
    make_estimators,
    read_dataset,
    reward_name_of,
)
from deepbandit.evaluation.plots import write_plots
from deepbandit.evaluation.report import summary_rows, write_report


@dataclass
class EvaluateConfig:
    dataset: str = MISSING
    validate: bool = True  # validate as `deepbandit validate` does first (false: logs validated before)
    bundle: str | None = None
    model_policy: str = "greedy"
    estimators: list[str] = field(default_factory=lambda: ["ips", "snips", "dm", "dr", "sndr"])
    # parameters of the estimators that take one, e.g. estimator_params.switch_dr.tau=5
    estimator_params: dict[str, dict[str, float | None]] = field(
        default_factory=lambda: copy.deepcopy(ESTIMATOR_PARAMS)
    )
    # other target policies, name: path (a bundle .pt, an export folder or a Parquet of action_dist)
    targets: dict[str, str] = field(default_factory=dict)
    # every policy that wrote the logs, name: path or uniform (names as in the logs' logging_policy column)
    logging_policies: dict[str, str] = field(default_factory=dict)
    mips_groups: int = 8  # mips, snmips: k-means clusters of the image embeddings that group candidates
    reward_model: str = "auto"
    reward_model_folds: int = 5  # cross-fitting folds when every row is evaluated (train_fraction=0)
    reward_model_bootstrap: int = (
        0  # DM: refits of the reward model on bootstrap resamples for its interval; 0: off
    )
    interval: str = "bootstrap"
    alpha: float = 0.05
    n_bootstrap: int = 200  # resamples of interval=bootstrap (>= 2), shared by all estimators
    seed: int = 0  # seeds the bootstrap resamples and the model's posterior draws
    train_fraction: float = 0.0
    window_start: str | None = None  # evaluate rows at or after this time (ISO 8601, UTC)
    window_end: str | None = None  # and before this time
    reward_name: str | None = None  # what a reward of 1 is, for the report; null: from the dataset
    diagnostics: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    segments: list[str] = field(default_factory=lambda: ["prior_interaction", "device", "country"])
    # estimator of the per-segment values, normal intervals: ips | snips | dm | dr | sndr | switch_dr
    segment_estimator: str = "snips"
    min_segment_rows: int = 100
    title_for_plot: int | None = None
    plot_estimator: str | None = (
        None  # estimator of the policy-value plot; null: snips if listed, else the first
    )
    plots: bool = True
    out_dir: str | None = None


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.dataset`` and write the report into ``cfg.out_dir``; returns the result dict plus
    ``files`` (paths written)."""
    if cfg.out_dir is None:
        raise ValueError("out_dir is required when calling run() directly (the command uses the run dir)")
    # every EvaluationSettings field that the command exposes, by name (tuples where the settings hold them)
    given = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvaluationSettings) if hasattr(cfg, f.name)
    }
    given["reward_name"] = cfg.reward_name or reward_name_of(cfg.dataset)
    settings = EvaluationSettings(
        **{k: tuple(v) if isinstance(v, list | ListConfig) else v for k, v in given.items()}
        | {
            "estimator_params": {k: dict(v) for k, v in cfg.estimator_params.items()},
            "diagnostics": DiagnosticThresholds(**OmegaConf.to_container(cfg.diagnostics)),
        }
    )
    # unknown names first: the plot's choice is checked against them
    chosen = make_estimators(cfg.estimators, settings.estimator_params)
    if cfg.interval not in INTERVAL_METHODS:
        raise ConfigError(f"interval must be one of {', '.join(INTERVAL_METHODS)}; got {cfg.interval!r}")
    ratios = [e.label for e in chosen if not e.is_mean]
    if cfg.interval == "bernstein" and ratios:
        raise ConfigError(
            f"interval=bernstein bounds means of per-row terms; {', '.join(ratios)} are ratios: drop them from "
            "estimators or use interval=bootstrap"
        )
    if not 0 < cfg.alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1) (1 - the intervals' coverage); got {cfg.alpha}")
    if cfg.model_policy not in ("greedy", "thompson"):
        raise ConfigError(f"model_policy must be greedy or thompson; got {cfg.model_policy!r}")
    if cfg.plot_estimator is None:
        cfg.plot_estimator = "snips" if "snips" in cfg.estimators else cfg.estimators[0]
    if cfg.plot_estimator not in cfg.estimators:
        raise ConfigError(
            f"plot_estimator={cfg.plot_estimator!r} is not among estimators {list(cfg.estimators)}"
        )
    table, titles, images, world = read_dataset(cfg.dataset, validate=cfg.validate)
    scorer = None
    if cfg.bundle is not None:
        from deepbandit.evaluation.model_policy import BundleScorer  # torch models only when one is evaluated

        scorer = BundleScorer.from_path(
            cfg.bundle, images, posterior=cfg.model_policy == "thompson", seed=cfg.seed
        )
    targets = {name: target_from_path(path, images, cfg.seed) for name, path in cfg.targets.items()}
    loggers = {name: target_from_path(path, images, cfg.seed) for name, path in cfg.logging_policies.items()}
    result = evaluate_rows(
        table,
        titles,
        settings,
        train_fraction=cfg.train_fraction,
        scorer=scorer,
        model_policy=cfg.model_policy,
        targets=targets,
        logging_policies=loggers,
        images=images,
        world=world,
        source=str(Path(cfg.dataset) / "impressions"),
    )
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    result["model"] = {"bundle": cfg.bundle, "policy": cfg.model_policy if cfg.bundle else None}
    out = Path(cfg.out_dir)
    plots = write_plots(result, out, cfg.plot_estimator) if cfg.plots else []
    js, md = write_report(result, out, plots, cfg.segment_estimator)
    result["files"] = [str(p) for p in (md, js, *plots)]
    return result


def print_summary(result: dict, console: Console | None = None) -> None:
    console = console or cli_console()
    # one estimator's interval fits a console line; report.md has them all
    shown = "snips" if "snips" in result["estimators"] else result["estimators"][0]
    table = Table(title=f"Policy values on {result['n_eval_rows']:,} evaluated impressions")
    for e in ["policy", *result["estimators"], "true"]:
        table.add_column(e.upper() + (" [95%]" if e == shown else "") if e != "policy" else e)
    for row in summary_rows(result, interval_of=shown):
        table.add_row(*row)
    console.print(table)
    console.print(result["notes"]["window"])
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for path in result["files"]:
        console.print(f"wrote {path}")


@entry_point("evaluate")
def _main(cfg: DictConfig) -> None:
    require_dir(cfg.dataset, "dataset", DATASET_ROOT)
    if cfg.bundle is not None:
        require_file(cfg.bundle, "bundle", BUNDLE_FILE)
    if cfg.out_dir is None:
        cfg.out_dir = str(run_dir())
    print_summary(run(cfg))


def main() -> None:
    _main()
