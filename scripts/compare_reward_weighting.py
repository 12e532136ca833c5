"""Does importance-weighting the reward regression help? The simulator's true value of the trained greedy
policy with ``loss.importance_weight_reward`` false (the default) and true, side by side.

    python scripts/compare_reward_weighting.py [--seeds 0 1 2] [--out benchmarks/reward_weighting.json]

The setup of the learning-quality tests (tests/training/test_train.py): ``world=learnable``, 100k
impressions logged by a uniform or an epsilon-greedy policy, 70/30 time split, ``model=small``, 6 epochs,
batch 1024, lr 5e-3, weight decay 1e-4. Each (logging policy, seed) simulates one log and trains on it
twice, once per setting; everything else is equal. About 15 s per training on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from machine import machine
from omegaconf import OmegaConf

import deepbandit.cli.simulate  # noqa: F401  (registers simulate_schema)
from deepbandit.data.simulator import simulate
from deepbandit.training.config import DataConfig, ModelGroupConfig, TrainConfig, TrainerConfig
from deepbandit.training.train import train


def simulate_log(out: Path, logging_policy: str, seed: int) -> None:
    overrides = ["world=learnable", f"logging_policy={logging_policy}", "n_impressions=100000",
                 f"out_dir={out}", "progress=false", f"seed={seed}"]  # fmt: skip
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        simulate(OmegaConf.to_object(compose("simulate", overrides=overrides)))


def train_once(data: Path, out: Path, weighted: bool) -> dict:
    trainer = TrainerConfig(max_epochs=6, batch_size=1024, lr=5e-3, weight_decay=1e-4, progress=False,
                            logger="none")  # fmt: skip
    model = ModelGroupConfig(hidden=64, tower_dim=32, head_dim=64, id_dim=16)  # conf/model/small.yaml
    cfg = TrainConfig(data=DataConfig(path=str(data), val_fraction=0.3), model=model, trainer=trainer)
    cfg.loss.importance_weight_reward = weighted
    return train(cfg, out_dir=out)["true"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--logging-policies", nargs="+", default=["uniform", "epsilon_greedy"])
    p.add_argument("--out", default="benchmarks/reward_weighting.json")
    args = p.parse_args()
    runs = []
    for policy in args.logging_policies:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                simulate_log(Path(tmp) / "data", policy, seed)
                true = {w: train_once(Path(tmp) / "data", Path(tmp) / w, w == "weighted")
                        for w in ("unweighted", "weighted")}  # fmt: skip
            a, b = true["unweighted"]["all"]["greedy"], true["weighted"]["all"]["greedy"]
            best = true["unweighted"]["all"]["best_unpersonalised"]
            print(
                f"{policy:15s} seed {seed}: greedy unweighted {a:.4f}, weighted {b:.4f}, best image {best:.4f}"
            )
            runs.append({"logging_policy": policy, "seed": seed, "true": true})
    unweighted_better = sum(
        r["true"]["unweighted"]["all"]["greedy"] > r["true"]["weighted"]["all"]["greedy"] for r in runs
    )
    summary = {"runs": len(runs), "unweighted_greedy_better": unweighted_better}
    print(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "summary": summary, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
