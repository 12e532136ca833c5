"""Which training objective learns the best policy? The simulator's true value of the trained greedy
policy for each objective, trained on the same logs.

    python scripts/compare_objectives.py [--seeds 0 1 2] [--variants reward reward_weighted ips snips dr]
                                         [--out benchmarks/objectives.json]

Variants: ``reward`` (the default: unweighted cross-entropy on the shown image), ``reward_weighted`` (the
same weighted by the importance weights, ``loss.importance_weight_reward=true``), and the policy objectives
``ips``, ``snips`` and ``dr`` (cross-entropy + counterfactual policy loss, conf/loss/*.yaml defaults).
The setup of the learning-quality tests (tests/training/test_train.py): ``world=learnable``, 100k
impressions logged by a uniform or an epsilon-greedy policy, 70/30 time split, ``model=small``, 6 epochs,
batch 1024, lr 5e-3, weight decay 1e-4. Each (logging policy, seed) simulates one log and trains every
variant on it; everything else is equal. About 15 s per training on 2 CPU cores.
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
from deepbandit.sim.simulator import simulate
from deepbandit.training.config import DataConfig, ModelGroupConfig, TrainConfig, TrainerConfig
from deepbandit.training.train import train


def simulate_log(out: Path, logging_policy: str, seed: int) -> None:
    overrides = ["world=learnable", f"logging_policy={logging_policy}", "n_impressions=100000",
                 f"out_dir={out}", "progress=false", f"seed={seed}"]  # fmt: skip
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        simulate(OmegaConf.to_object(compose("simulate", overrides=overrides)))


VARIANTS = {
    "reward": {"name": "reward"},
    "reward_weighted": {"name": "reward", "importance_weight_reward": True},
    "ips": {"name": "ips"},
    "snips": {"name": "snips"},
    "dr": {"name": "dr"},
}


def train_once(data: Path, out: Path, loss: dict) -> dict:
    trainer = TrainerConfig(max_epochs=6, batch_size=1024, lr=5e-3, weight_decay=1e-4, progress=False,
                            logger="none")  # fmt: skip
    model = ModelGroupConfig(hidden=64, tower_dim=32, head_dim=64, id_dim=16)  # conf/model/small.yaml
    cfg = TrainConfig(data=DataConfig(path=str(data), val_fraction=0.3), model=model, trainer=trainer)
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    return train(cfg, out_dir=out)["true"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--logging-policies", nargs="+", default=["uniform", "epsilon_greedy"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default="benchmarks/objectives.json")
    args = p.parse_args()
    runs = []
    for policy in args.logging_policies:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                simulate_log(Path(tmp) / "data", policy, seed)
                true = {v: train_once(Path(tmp) / "data", Path(tmp) / v, VARIANTS[v]) for v in args.variants}
            greedy = {v: round(t["all"]["greedy"], 4) for v, t in true.items()}
            best = true[args.variants[0]]["all"]["best_unpersonalised"]
            print(f"{policy:15s} seed {seed}: greedy {greedy}, best image {best:.4f}", flush=True)
            runs.append({"logging_policy": policy, "seed": seed, "true": true})
    # per variant: runs where it learned the best policy, and its mean true value over all runs
    summary = {
        v: {
            "best_in_runs": sum(
                max(r["true"], key=lambda u: r["true"][u]["all"]["greedy"]) == v for r in runs
            ),
            "mean_greedy": sum(r["true"][v]["all"]["greedy"] for r in runs) / len(runs),
        }
        for v in args.variants
    }
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "variants": {v: VARIANTS[v] for v in args.variants}, "summary": summary,
              "runs": runs}  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
