"""`deepbandit train`: train the artwork scorer on logged impressions (see docs/training.md).

    deepbandit train data.path=data/sim
    deepbandit train data.path=data/sim uncertainty=ensemble trainer=gpu
    deepbandit train -m data.path=data/sim model.hidden=64,256 loss.clip=10,100    # a sweep

Every run writes ``model.pt``, ``metrics.json``, checkpoints and logs into its Hydra run directory.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from deepbandit.cli._hydra import CONFIG_PATH, HYDRA_VERSION_BASE, run_dir
from deepbandit.training.config import register
from deepbandit.training.train import train

register()


def metrics_table(metrics: dict) -> Table:
    table = Table(title="validation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.get("val", {}).items():
        if not k.endswith(("_lower", "_upper")):
            table.add_row(k, f"{v:.4f}")
    for split, values in metrics.get("true", {}).items():
        for k, v in values.items():
            if k != "rows" and not k.endswith("_se") and v is not None:
                table.add_row(f"true/{split}/{k}", f"{v:.4f}")
    return table


def run(cfg: DictConfig) -> dict:
    """Train into the Hydra run directory and return the metrics."""
    metrics = train(cfg, out_dir=run_dir())
    if metrics:
        Console().print(metrics_table(metrics))
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base=HYDRA_VERSION_BASE)
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    # the value a sweeper (Optuna) maximises
    return metrics.get("best_score") if metrics else None


if __name__ == "__main__":
    main()
