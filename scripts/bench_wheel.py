"""The Wheel bandit (Riquelme, Tucker & Snoek 2018) through ``run_loop``: normalised regret (uniform = 100)
per agent and delta, with wall time and decisions per second -> benchmarks/wheel.json.

    python scripts/bench_wheel.py                                  # n = 80,000, the paper's deltas, 2 seeds
    python scripts/bench_wheel.py --n 20000 --deltas 0.5 0.9 --seeds 0 --agents random linucb deep_greedy

Every agent of one (delta, seed) sees the same contexts and reward noise (common random numbers). The deep
agents retrain every round with ``--steps-per-round`` minibatch steps from their whole log (the online
update) and decide with the torch model (``deep.serve=torch``; ``--onnx`` serves them through export). The
paper's figures (80k steps) for reference: NeuralLinear 0.95 / 1.60 / 4.65 / 9.56 / 49.63 and LinFullPost
1.82 / 3.99 / 14.56 / 28.77 / 83.90 at delta 0.5 / 0.7 / 0.9 / 0.95 / 0.99.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import machine
from omegaconf import OmegaConf

from deepbandit.loop.loop import LoopConfig, WheelConfig, run_loop
from deepbandit.loop.vw_agent import vw_available

PAPER = {
    "NeuralLinear": {0.5: 0.95, 0.7: 1.60, 0.9: 4.65, 0.95: 9.56, 0.99: 49.63},
    "LinFullPost": {0.5: 1.82, 0.7: 3.99, 0.9: 14.56, 0.95: 28.77, 0.99: 83.90},
}


def run(delta: float, seed: int, args) -> dict:
    cfg = LoopConfig(
        environment="wheel",
        wheel=WheelConfig(delta=delta),
        n_rounds=args.n // args.requests_per_round,
        requests_per_round=args.requests_per_round,
        agents=[a for a in args.agents if a != "vw" or vw_available()],
        seed=seed,
        keep_logs=False,
        plots=False,
        progress=False,
    )
    cfg.deep.serve = "onnx" if args.onnx else "torch"
    cfg.deep.steps_per_round = args.steps_per_round
    cfg.deep.optim.lr = args.lr
    if args.set:  # loop config overrides, as on the command line (typed: a misspelt key fails)
        cfg = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(args.set))
        )
    started = time.perf_counter()
    result = run_loop(cfg, out_dir=Path(args.work) / f"d{delta}-s{seed}")
    return {
        "delta": delta,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "agents": {
            name: {
                "normalized_regret": a["normalized_regret"],
                "seconds": result["seconds"]["per_agent"][name],
                "decisions_per_s": a["decisions_per_s"],
            }
            for name, a in result["agents"].items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=80_000, help="requests per run")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95, 0.99])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--agents", nargs="+", default=["random", "linucb", "vw", "deep_greedy",
                                                   "deep_epsilon_greedy", "deep_thompson"])  # fmt: skip
    p.add_argument("--requests-per-round", type=int, default=500)
    p.add_argument("--steps-per-round", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="loop config overrides, e.g. deep.posteriors.neural_linear.noise_variance=0.1",
    )
    p.add_argument("--onnx", action="store_true", help="serve the deep agents through ONNX export")
    p.add_argument("--work", default="/tmp/bench_wheel")
    p.add_argument("--out", default="benchmarks/wheel.json")
    args = p.parse_args()
    runs = []
    for delta in args.deltas:
        for seed in args.seeds:
            runs.append(run(delta, seed, args))
            summary = {k: round(v["normalized_regret"], 2) for k, v in runs[-1]["agents"].items()}
            print(f"delta {delta} seed {seed}: {summary} ({runs[-1]['seconds']:.0f} s)", flush=True)
    report = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "paper": {name: {str(d): v for d, v in row.items()} for name, row in PAPER.items()},
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
