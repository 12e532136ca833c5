"""`deepbandit gate`: a yes/no for a release pipeline. Does the candidate policy beat the incumbent on the
logs, by more than a margin, with confidence and with sound weights?

    deepbandit gate dataset=data/sim candidate=runs/sim/export
    deepbandit gate dataset=data/sim candidate=new.parquet incumbent=old.parquet min_lift=0.002

Exit code 0 when the gate passes, 1 when it refuses (the reasons are printed and written to gate.md and
gate.json in the run directory), 2 on a usage mistake. ``deepbandit.evaluation.gate`` does the work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf

from deepbandit.cli._hydra import DATASET_ROOT, entry_point, require_dir, run_dir
from deepbandit.cli._hydra import console as cli_console
from deepbandit.evaluation.diagnostics import DiagnosticThresholds


@dataclass
class GateConfig:
    dataset: str = MISSING  # dataset root (impressions/, titles.parquet, images.parquet)
    candidate: str = MISSING  # the policy to ship: a bundle .pt, an export folder or a Parquet of action_dist
    incumbent: str = "logging"  # logging (the policy that wrote the logs) or a path like candidate's
    validate: bool = True  # validate as `deepbandit validate` does first
    estimator: str = "snips"  # ips | snips | dr | sndr (unbiased or consistent only)
    min_lift: float = 0.0  # the lift's lower bound must be above this (absolute, reward per impression)
    alpha: float = 0.05  # one-sided: the lower bound holds with probability 1 - alpha
    interval: str = "bootstrap"  # bootstrap | normal | bernstein
    n_bootstrap: int = 1000  # bootstrap resamples (paired: the same for both policies)
    seed: int = 0  # seeds the bootstrap, the reward model's folds and a stochastic policy's draws
    reward_model: str = "logistic"  # for dr, sndr: logistic | take_rates
    reward_model_folds: int = 5  # cross-fitting folds of the reward model
    estimator_params: dict[str, dict[str, float | None]] = field(default_factory=dict)  # e.g. dr: {clip: 50}
    window_start: str | None = None  # gate on rows at or after this time (ISO 8601, UTC)
    window_end: str | None = None  # and before this time
    diagnostics: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    out_dir: str | None = None  # null: the Hydra run directory


def run(cfg: DictConfig) -> dict:
    """Gate ``cfg.candidate`` on ``cfg.dataset``; writes gate.json and gate.md into ``cfg.out_dir`` and
    returns the result (``passed``, ``checks``, ``files``)."""
    from deepbandit.cli.targets import target_from_path
    from deepbandit.evaluation.evaluate import read_dataset
    from deepbandit.evaluation.gate import GateSettings, gate_markdown, run_gate

    if cfg.out_dir is None:
        raise ValueError("out_dir is required when calling run() directly (the command uses the run dir)")
    names = {f.name for f in dataclasses.fields(GateSettings)}
    given = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in names}
    given["diagnostics"] = DiagnosticThresholds(**given["diagnostics"])
    settings = GateSettings(**given)
    settings.check()  # before reading data or loading models
    table, titles, images, _ = read_dataset(cfg.dataset, validate=cfg.validate)
    candidate = target_from_path(cfg.candidate, images, cfg.seed)
    incumbent = None if cfg.incumbent == "logging" else target_from_path(cfg.incumbent, images, cfg.seed)
    result = run_gate(
        table, candidate, settings, incumbent=incumbent, titles=titles, images=images,
        source=str(Path(cfg.dataset) / "impressions"),
    )  # fmt: skip
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gate.md").write_text(gate_markdown(result))
    result["files"] = [str(out / "gate.md"), str(out / "gate.json")]
    return result


def print_result(result: dict) -> None:
    console = cli_console()
    verdict = "[green]PASS[/green]" if result["passed"] else "[red]FAIL[/red]"
    console.print(f"gate: {verdict}  {result['candidate']} vs {result['incumbent']}")
    console.print(
        f"{result['n_rows']:,} rows logged from {result['window']['first']} to {result['window']['last']}"
    )
    for check in result["checks"]:
        mark = "pass" if check["passed"] else "[red]FAIL[/red]"
        console.print(f"  {check['check']}: {mark}: {check['detail']}")
    for path in result["files"]:
        console.print(f"wrote {path}")


@entry_point("gate")
def _main(cfg: DictConfig) -> None:
    require_dir(cfg.dataset, "dataset", DATASET_ROOT)
    if cfg.out_dir is None:
        cfg.out_dir = str(run_dir())
    result = run(cfg)
    print_result(result)
    if not result["passed"]:
        raise SystemExit(1)


def main() -> None:
    _main()
