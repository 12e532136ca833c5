"""How much of the personalisation gap the quickstart recipe closes on several simulated worlds
-> benchmarks/learning.json.

    python scripts/bench_learning.py                      # every setting below, about a minute each
    python scripts/bench_learning.py --settings quickstart short_histories

For each setting: simulate (world, logging policy, impressions), train ``experiment=quickstart`` (the
quickstart pipeline's training) with any extra overrides, and read the simulator's ground truth on the
held-out days (``metrics.json`` ``true``): the greedy policy's value against the best single image per
title (for the average member, infinite data) and the oracle. ``gap_closed`` = (greedy - best image) /
(oracle - best image): the share of what personalisation can gain that the model gets. The paired
standard error of greedy - best image comes from the same rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from machine import machine

# name -> (simulate overrides, train overrides); every world starts from conf/world/learnable.yaml
SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    # the quickstart pipeline: uniform logs, 100k impressions
    "quickstart": (["world=learnable", "logging_policy=uniform", "n_impressions=100000"], []),
    # logs of a deployed unpersonalised policy (epsilon-greedy), up to 12 images per title
    "epsilon_greedy_many_images": (
        [
            "world=learnable",
            "logging_policy=epsilon_greedy",
            "world.images_max=12",
            "world.images_mean=8",
            "n_impressions=100000",
        ],
        [],
    ),  # fmt: skip
    # softmax logs of a noisy personalised scorer, short histories, more idiosyncratic theme tastes
    "softmax_short_histories": (
        [
            "world=learnable",
            "logging_policy=softmax",
            "world.history_mean=12",
            "world.theme_taste_std=0.8",
            "n_impressions=100000",
        ],
        [],
    ),  # fmt: skip
    # the quickstart world with 4x the data
    "quickstart_400k": (["world=learnable", "logging_policy=uniform", "n_impressions=400000"], []),
    # uniform logs, short histories (little taste to read from the history)
    "short_histories": (
        ["world=learnable", "logging_policy=uniform", "world.history_mean=12", "n_impressions=100000"],
        [],
    ),
}


def run(name: str, work: Path, seed: int, extra: list[str], n_impressions: int | None = None) -> dict:
    from hydra import compose, initialize_config_module

    from deepbandit.cli import simulate
    from deepbandit.cli.schemas import register_schemas
    from deepbandit.training.config import typed_config
    from deepbandit.training.train import train

    sim_over, train_over = SETTINGS[name]
    if n_impressions is not None:  # a smaller run of the same setting (tests: a smoke run)
        sim_over = [o for o in sim_over if not o.startswith("n_impressions=")] + [
            f"n_impressions={n_impressions}"
        ]
    data = work / name / "data"
    register_schemas()
    started = time.perf_counter()
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        simulate.run(
            compose("simulate", overrides=[*sim_over, f"seed={seed}", f"out_dir={data}", "overwrite=true"])
        )
        overrides = ["experiment=quickstart", f"data.path={data}", "out_dir=null", "trainer.progress=false",
                     "trainer.logger=none", f"trainer.seed={seed}", *train_over, *extra]  # fmt: skip
        cfg = typed_config(compose("train", overrides=overrides))
    metrics = train(cfg, out_dir=work / name / "train")
    true = metrics["true"]["all"]
    gain = true["greedy"] - true["best_unpersonalised"]
    return {
        "setting": name,
        "simulate": sim_over,
        "train": [*train_over, *extra],
        "seed": seed,
        "rows": true["rows"],
        "greedy": true["greedy"],
        "best_single_image": true["best_unpersonalised"],
        "oracle": true["oracle"],
        "random": true["random"],
        "greedy_minus_best_image": gain,
        "greedy_minus_best_image_se": true["greedy_minus_best_unpersonalised_se"],
        "gap_closed": gain / (true["oracle"] - true["best_unpersonalised"]),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-impressions", type=int, default=None, help="override every setting's data size")
    p.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE", help="extra train overrides")
    p.add_argument("--work", default="/tmp/bench_learning")
    p.add_argument("--out", default="benchmarks/learning.json")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    results = []
    for name in args.settings:
        results.append(run(name, Path(args.work), args.seed, args.train, args.n_impressions))
        r = results[-1]
        print(f"{name}: greedy {r['greedy']:.4f}, best image {r['best_single_image']:.4f}, oracle "
              f"{r['oracle']:.4f}: {100 * r['gap_closed']:.1f}% of the gap ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
    report = {
        "machine": machine(),
        "recipe": "experiment=quickstart",
        "extra_train": args.train,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
