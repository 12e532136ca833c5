"""`deepbandit train`: train the artwork scorer on logged impressions (see docs/training.md).

    deepbandit train data.path=data/sim
    deepbandit train data.path=data/sim uncertainty=ensemble trainer=gpu
    deepbandit train -m data.path=data/sim model.hidden=64,256 loss.clip=10,100    # a sweep

Every run writes ``model.pt``, ``metrics.json``, checkpoints and logs into its Hydra run directory.
"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from deepbandit.cli._hydra import (
    DATASET_ROOT,
    entry_point,
    require_dir,
    run_dir,
)
from deepbandit.cli._hydra import (
    console as cli_console,
)
from deepbandit.formatting import decimals_for, fmt
from deepbandit.training.config import check_choices, typed_config

# (row label, estimate key in metrics["val"] or None, true-value key in metrics["true"]["all"] or None)
_POLICY_ROWS = (
    ("model: greedy", "greedy", "greedy"),
    ("model: {policy}", "{policy}", None),
    ("logging policy (observed)", None, None),
    ("random", None, "random"),
    ("unpersonalised bandit", None, "unpersonalised_bandit"),
    ("best single image", None, "best_unpersonalised"),
    ("oracle", None, "oracle"),
)


def metrics_rows(metrics: dict, policy: str = "epsilon_greedy") -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the validation policy values (SNIPS and DR with their intervals) beside the
    baselines: the logging policy's observed mean reward and, on simulated data, the true values of the model
    and of random, the unpersonalised bandit, the best image and the oracle. All values share the decimals
    their scale needs."""
    val, truth = metrics.get("val", {}), metrics.get("true", {}).get("all", {})
    numbers = [v for k, v in val.items() if k.startswith(("val/snips_", "val/dr_"))]
    numbers += [v for k, v in truth.items() if k != "rows" and not k.endswith("_se")]
    d = decimals_for(numbers)

    def estimate(name: str) -> str:
        v = val.get(name)
        if v is None:
            return ""
        lower, upper = val.get(f"{name}_lower"), val.get(f"{name}_upper")
        return fmt(v, d) + ("" if lower is None else f" [{fmt(lower, d)}, {fmt(upper, d)}]")

    header = ["policy", "SNIPS [95%]", "DR [95%]", *(["true"] if truth else [])]
    rows = []
    for label, key, true_key in _POLICY_ROWS:
        if key == "{policy}" and policy == "greedy":
            continue
        key = key.format(policy=policy) if key else None
        cells = [estimate(f"val/snips_{key}"), estimate(f"val/dr_{key}")] if key else ["", ""]
        if label.startswith("logging"):
            cells = [fmt(val.get("val/calibration_mean_reward"), d), ""]
        if truth:
            cells.append(fmt(truth.get(true_key), d) if true_key else "")
        if any(cells):
            rows.append([label.format(policy=policy), *cells])
    return header, rows


def metrics_table(metrics: dict, policy: str = "epsilon_greedy") -> Table:
    """``metrics_rows`` as a rich table."""
    header, rows = metrics_rows(metrics, policy)
    rows_val = metrics.get("rows", {}).get("val")
    table = Table(title=f"policy values on {rows_val:,} held-out impressions" if rows_val else "validation")
    for column in header:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def fit_table(metrics: dict) -> Table:
    """How well the model's predicted take rates fit the held-out rewards."""
    val = metrics.get("val", {})
    table = Table(title="fit on held-out impressions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "val/logloss",
        "val/calibration_ece",
        "val/calibration_mean_pred",
        "val/calibration_mean_reward",
    ):
        if key in val:
            table.add_row(key.removeprefix("val/"), f"{val[key]:.4g}")
    return table


def print_metrics(metrics: dict, policy: str, console: Console | None = None) -> None:
    console = console or cli_console()
    console.print(metrics_table(metrics, policy))
    console.print(fit_table(metrics))


def run(cfg: DictConfig) -> dict:
    """Train into the Hydra run directory and return the metrics."""
    require_dir(cfg.data.path, "data.path", DATASET_ROOT)
    check_choices(typed_config(cfg))
    from deepbandit.training.train import train  # Lightning loads only once the options are known to be good

    out_dir = run_dir()
    metrics = train(cfg, out_dir=out_dir)
    if metrics:
        print_metrics(metrics, cfg.policy.name)
        cli_console().print(
            f"model: {out_dir / 'model.pt'}  metrics: {out_dir / 'metrics.json'}", highlight=False
        )
    return metrics


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    # the value a sweeper (Optuna) maximises
    return metrics.get("best_score") if metrics else None


if __name__ == "__main__":
    main()
