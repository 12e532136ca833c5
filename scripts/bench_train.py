"""Training throughput (impressions/s) and peak memory: the default model and a 10-member ensemble, the
device-resident (index-slice) loader against a plain DataLoader over the same tensors, in one run.

    python scripts/bench_train.py                                  # CPU: fp32, batch 1024
    python scripts/bench_train.py --batch 65536 --precision 32-true bf16-mixed --compile   # a GPU

Simulates a tiny-world log once, converts it to an ImpressionBatch (repeated or cut to exactly the rows of
the warm-up and timed steps: speed does not depend on which rows repeat) and times optimiser steps of the
LightningModule's loss step (forward + backward + AdamW, through ``BanditModule.step_fn``, so
``--compile`` times the compiled step training uses) for every (model, loader, precision) case.

Each case runs in a fresh process, so its peak memory is its own: on a GPU the CUDA peak allocated during
the timed steps, on a CPU the process's peak resident memory (ru_maxrss) and how much it grew over the
resident memory before the first step (data and model already loaded). Writes the machine with the
numbers (``--out``, default benchmarks/train.json).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from machine import machine
from torch.utils.data import DataLoader, Dataset

from deepbandit.models.uncertainty import UncertaintyConfig
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig
from deepbandit.training.config import DataConfig, TrainConfig
from deepbandit.training.datamodule import BanditDataModule, ResidentLoader
from deepbandit.training.module import BanditModule
from deepbandit.training.train import build_module, model_config

MODELS = {
    "K=1 (default model)": UncertaintyConfig(),
    "K=10 ensemble": UncertaintyConfig(kind="ensemble", n_members=10, prior_scale=1.0),
}
WARMUP = 3  # untimed steps first: compilation, allocator and autotuning warm-up
TINY_WORLD = Path(__file__).resolve().parents[1] / "conf" / "world" / "tiny.yaml"


class _Rows(Dataset):
    """Row-at-a-time dataset over host tensors: the plain DataLoader baseline (gather + copy per batch)."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch)

    def __getitem__(self, i):
        return i

    def collate(self, idx):
        rows = torch.as_tensor(idx)
        return self.batch[rows], rows


def _rss_mb() -> float:
    """Resident memory now (MiB), from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(
    module: BanditModule, loader, device, steps: int, precision: str, warmup: int = WARMUP
) -> dict:
    """Time ``steps`` optimiser steps after ``warmup`` (compilation, allocator warm-up) ones."""
    opt = module.configure_optimizers()
    module.to(device).train()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    n, t0 = 0, 0.0
    rss0 = _rss_mb()
    for step, (batch, rows) in enumerate(loader):  # run_case sizes the loader to warmup + steps batches
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        batch, rows = batch.to(device, non_blocking=True), rows.to(device, non_blocking=True)
        with autocast:
            loss = module.step_fn(batch, rows)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            n += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if step + 1 != warmup + steps:
        raise RuntimeError(f"the loader gave {step + 1} batches, not warm-up + timed = {warmup + steps}")
    out = {"impressions_per_s": n / seconds, "seconds": seconds, "steps": steps}
    if device.type == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = _peak_rss_mb()
        out["peak_rss_growth_mb"] = _peak_rss_mb() - rss0
    return out


def run_case(data_dir: str, model: str, path: str, precision: str, compile_step: bool, args) -> dict:
    """One case, in this process: load the log, build the module and loader, time the steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(data=DataConfig(path=data_dir))
    cfg.trainer.compile = compile_step
    dm = BanditDataModule(cfg.data, args.batch)
    dm.prepare()
    host = dm.batch_of(dm.train_table)
    # exactly one epoch of full batches: no short last batch, whose new shape would make torch.compile
    # recompile inside the timed steps (training pays that once per run, not per step)
    n_rows = (WARMUP + args.steps) * args.batch
    host = host[torch.arange(n_rows) % len(host)]
    torch.manual_seed(0)
    cfg.uncertainty = MODELS[model]
    module = build_module(cfg, model_config(cfg, dm), dm.image_table.embedding, dm.title_genres).to(device)
    if path == "resident":
        loader = ResidentLoader(host.to(device), args.batch, shuffle=True)
    else:
        rows = _Rows(host)
        loader = DataLoader(rows, batch_size=args.batch, shuffle=True, collate_fn=rows.collate,
                            pin_memory=device.type == "cuda", num_workers=0)  # fmt: skip
    r = time_steps(module, loader, device, args.steps, precision)
    return {"model": model, "path": path, "precision": precision, "compile": compile_step,
            "batch": args.batch, "rows": len(host)} | r  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="simulated impressions")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default="benchmarks/train.json")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: JSON of one case, run in this process
    args = p.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(**case, args=args)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulateConfig(
            world=WorldConfig(**yaml.safe_load(TINY_WORLD.read_text())),
            n_impressions=args.rows,
            out_dir=tmp,
            progress=False,
        )
        sim.logging_policy.name = "uniform"
        simulate(sim)
        compiles = (False, True) if args.compile else (False,)
        for model, precision, compile_step, path in itertools.product(
            args.models, args.precision, compiles, ("resident", "dataloader")
        ):
            case = {"data_dir": tmp, "model": model, "path": path, "precision": precision,
                    "compile_step": compile_step}  # fmt: skip
            cmd = [sys.executable, __file__, *sys.argv[1:], "--case", json.dumps(case)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:  # keep going: one broken case (a compiler error, say) must not hide the rest
                failed += 1
                case.pop("data_dir")
                results.append(case | {"error": done.stderr[-2000:]})
            else:
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
            # written after every case, so that a run stopped at a time limit keeps what it measured
            report = {"machine": machine(), "simulated_rows": args.rows, "results": results}
            out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    if failed:
        sys.exit(f"{failed} case(s) failed; their errors are in {out}")


if __name__ == "__main__":
    main()
