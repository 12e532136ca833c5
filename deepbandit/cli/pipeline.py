"""`deepbandit pipeline`: the whole job on the built-in simulator, end to end, in one run directory.

simulate -> validate -> train -> evaluate -> export -> serve. Each step runs its own entry point's plain
`run(cfg)` on a config composed from `conf/<step>.yaml`, so the pipeline is nothing but the steps in order;
it adds no logic of its own beyond replaying some logged requests through the exported policy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from deepbandit.cli._hydra import console as cli_console
from deepbandit.cli._hydra import entry_point
from deepbandit.cli.schemas import register_schema

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    # simulated impressions (the first 80% of the timeline trains, the rest validates); more learns more
    n_impressions: int = 100_000
    seed: int = 0  # simulate's seed and train's trainer.seed; also seeds the serve step's draws
    simulate: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)  # overrides of conf/train.yaml
    evaluate: list[str] = field(default_factory=list)
    export: list[str] = field(default_factory=list)  # overrides of conf/export.yaml
    serve_requests: int = 4096  # requests replayed through the exported policy at the end (held out)
    out_dir: str = "outputs/pipeline"  # run directory: the steps write data/, train/, report/, export/ in it


def _step_config(name: str, overrides: list[str]) -> DictConfig:
    # The step's `${hydra:...}` defaults are replaced by explicit paths, so resolving needs no Hydra run.
    register_schema(name)
    cfg = compose(config_name=name, overrides=overrides)
    return cfg


def run(cfg: DictConfig | PipelineConfig) -> dict:
    """Run every step; return {step: summary} with the paths of the data, model, report and export."""
    from deepbandit.cli import evaluate, export, simulate, train
    from deepbandit.data.io import open_impressions
    from deepbandit.data.schema import IMPRESSIONS_DIR
    from deepbandit.data.validation import validate_dataset
    from deepbandit.serving import ArtworkService
    from deepbandit.training.train import train as train_model

    cfg = OmegaConf.structured(PipelineConfig) if cfg is None else cfg
    out = Path(cfg.out_dir)
    data_dir, train_dir, report_dir, export_dir = (out / n for n in ("data", "train", "report", "export"))
    console = cli_console()
    timings: dict[str, float] = {}
    result: dict = {}

    def step(name: str):
        console.rule(f"[bold]{name}")
        timings[name] = time.perf_counter()

    step("simulate")
    sim_cfg = _step_config(
        "simulate",
        [*cfg.simulate, f"n_impressions={cfg.n_impressions}", f"seed={cfg.seed}", f"out_dir={data_dir}"],
    )
    result["simulate"] = simulate.run(sim_cfg)

    step("validate")
    report = validate_dataset(data_dir, mode="strict")
    result["validate"] = {"rows_read": report.rows_read, "rows_quarantined": report.rows_quarantined}
    console.print(f"{report.rows_read:,} rows (impressions, images, titles) pass strict validation")

    step("train")
    train_cfg = _step_config(
        "train",
        [
            *cfg.train,
            f"data.path={data_dir}",
            f"out_dir={train_dir}",
            f"trainer.seed={cfg.seed}",
            "data.validate=false",
        ],  # validated just above
    )
    result["train"] = train_model(train_cfg, out_dir=train_dir)
    train.print_metrics(result["train"], train_cfg.policy.name, console)
    bundle = train_dir / "model.pt"

    step("evaluate")
    eval_cfg = _step_config(
        "evaluate",
        [*cfg.evaluate, f"dataset={data_dir}", f"bundle={bundle}", f"out_dir={report_dir}", "validate=false"],
    )  # validated above; the dataset record is still checked
    result["evaluate"] = evaluate.run(eval_cfg)
    evaluate.print_summary(result["evaluate"], console)

    step("export")
    export_cfg = _step_config("export", [*cfg.export, f"bundle={bundle}", f"out_dir={export_dir}"])
    result["export"] = export.run(export_cfg)

    step("serve")
    requests = open_impressions(data_dir / IMPRESSIONS_DIR).to_table()
    requests = requests.slice(max(0, requests.num_rows - cfg.serve_requests))  # the latest (validation) days
    service = ArtworkService.from_dir(export_dir, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    decisions = service.decide(requests, rng=np.random.default_rng(cfg.seed))
    seconds = time.perf_counter() - started
    served = service.to_impressions(decisions)
    result["serve"] = {
        "requests": requests.num_rows,
        "decided": int(decisions.ok.sum()),
        "errors": len(decisions.errors),
        "seconds": seconds,
        "mean_propensity": float(np.nanmean(decisions.propensity)),
        "propensity_kind": decisions.propensity_kind,
        "logged_columns": served.column_names,
    }
    timings = {k: round(v, 1) for k, v in _durations(timings).items()}
    result["seconds"] = timings

    table = Table(title="deepbandit pipeline", show_lines=False)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("output")
    table.add_row("simulate", str(timings["simulate"]), str(data_dir))
    table.add_row("validate", str(timings["validate"]), f"{report.rows_read:,} rows, 0 quarantined")
    table.add_row("train", str(timings["train"]), str(bundle))
    table.add_row("evaluate", str(timings["evaluate"]), str(report_dir / "report.md"))
    table.add_row("export", str(timings["export"]), str(export_dir / "model.onnx"))
    table.add_row(
        "serve",
        str(timings["serve"]),
        f"{result['serve']['decided']:,} decisions in {seconds * 1e3:.0f} ms ({result['serve']['propensity_kind']})",
    )
    console.print(table)
    for what, path in (("report", report_dir / "report.md"), ("plots", f"{report_dir}/*.png"),
                       ("ONNX", export_dir / "model.onnx"), ("everything", out)):  # fmt: skip
        console.print(f"{what}: {path}", soft_wrap=True)
    return result


def _durations(starts: dict[str, float]) -> dict[str, float]:
    names = list(starts)
    ends = [starts[n] for n in names[1:]] + [time.perf_counter()]
    return {n: end - starts[n] for n, end in zip(names, ends, strict=True)}


@entry_point("pipeline")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
