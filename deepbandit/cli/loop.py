"""`deepbandit loop`: the closed loop over an environment (artwork world or digits), see docs/loop.md.

deepbandit loop world=tiny n_rounds=5 requests_per_round=2000
deepbandit loop environment=digits agents=[random,linucb,deep_thompson] deep.serve=torch
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deepbandit.cli._hydra import console as cli_console
from deepbandit.cli._hydra import entry_point
from deepbandit.loop.loop import LoopConfig, run_loop, summary_table


def run(cfg: DictConfig | LoopConfig) -> dict:
    """Run the loop from a composed config; print the summary table; return the result (loop.json's
    content plus the agents' logged tables under "logs")."""
    if not isinstance(cfg, LoopConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoopConfig), cfg))
    result = run_loop(cfg)
    console = cli_console()
    console.print(summary_table(result))
    out = Path(result["out_dir"])
    written = [out / "loop.json", *sorted(out.glob("*.png")), *([out / "logs"] if cfg.keep_logs else [])]
    console.print(f"wrote {', '.join(p.name for p in written)} to {out}", soft_wrap=True)
    return result


@entry_point("loop")
def _main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    _main()
