"""Training throughput (impressions per second and per CPU-second) and peak memory, in one run:

* the default model and a 10-member ensemble, the device-resident (index-slice) loader against a plain
  DataLoader over the same tensors;
* packed candidates (the scorer runs its image tower and head on real candidates only) against the padded
  path on the same rows: ``packed_over_padded``, impressions per CPU-second;
* the whole Lightning loop of ``deepbandit train`` (``build_trainer``: its callbacks, logger and progress)
  against the bare loop (the same step, backward and AdamW in plain torch) at batch 64 and ``--batch``:
  ``lightning_over_bare``, CPU-seconds per timed step (1.0: Lightning costs nothing).

    python scripts/bench_train.py                                  # CPU: fp32, batch 1024
    python scripts/bench_train.py --batch 65536 --precision 32-true bf16-mixed --compile   # a GPU

Simulates a log of the default world (``conf/world/small.yaml``: 3..24 candidates, 7.4 on average) once,
converts it to an ImpressionBatch (repeated or cut to exactly the rows of the warm-up and timed steps:
speed does not depend on which rows repeat) and times optimiser steps of the LightningModule's loss step
(forward + backward + AdamW, through ``BanditModule.step_fn``, so ``--compile`` times the compiled step
training uses) for every case.

Each case runs in a fresh process, so its peak memory is its own: on a GPU the CUDA peak allocated during
the timed steps, on a CPU the process's peak resident memory (ru_maxrss) and how much it grew over the
resident memory before the first step (data and model already loaded). CPU-seconds are the process's
(every thread), so load from other processes cancels out of the ratios. Writes the machine with the
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

import lightning as L
import torch
import yaml
from machine import machine
from torch.utils.data import DataLoader, Dataset

from deepbandit.data.tensors import tune_allocator
from deepbandit.models.scorer import ArtworkScorer
from deepbandit.models.uncertainty import UncertaintyConfig
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig
from deepbandit.training.config import DataConfig, TrainConfig
from deepbandit.training.datamodule import BanditDataModule, ResidentLoader
from deepbandit.training.module import BanditModule
from deepbandit.training.train import build_module, build_trainer, model_config

MODELS = {
    "K=1 (default model)": UncertaintyConfig(),
    "K=10 ensemble": UncertaintyConfig(kind="ensemble", n_members=10, prior_scale=1.0),
}
WARMUP = 3  # untimed steps first: compilation, allocator and autotuning warm-up
DEFAULT_WORLD = Path(__file__).resolve().parents[1] / "conf" / "world" / "small.yaml"


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
    n, t0, cpu0 = 0, 0.0, 0.0
    rss0 = _rss_mb()
    for step, (batch, rows) in enumerate(loader):  # run_case sizes the loader to warmup + steps batches
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0, cpu0 = time.perf_counter(), time.process_time()
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
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    if step + 1 != warmup + steps:
        raise RuntimeError(f"the loader gave {step + 1} batches, not warm-up + timed = {warmup + steps}")
    out = {"impressions_per_s": n / seconds, "impressions_per_cpu_s": n / cpu_seconds, "seconds": seconds,
           "cpu_seconds": cpu_seconds, "steps": steps}  # fmt: skip
    if device.type == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = _peak_rss_mb()
        out["peak_rss_growth_mb"] = _peak_rss_mb() - rss0
    return out


class _StepClock(L.Callback):
    """Wall and CPU time from the start of batch ``warmup`` to the end of the last batch of a fit."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.cpu0, self.t1, self.cpu1, self.steps = warmup, 0.0, 0.0, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1, self.cpu1, self.steps = time.perf_counter(), time.process_time(), batch_idx + 1 - self.warmup


def time_lightning(module: BanditModule, loader, cfg: TrainConfig, steps: int, batch: int) -> dict:
    """The same steps through ``deepbandit train``'s Trainer (its callbacks, CSV logger and progress
    report; no validation loader, so no validation runs)."""
    with tempfile.TemporaryDirectory() as out:
        cfg.trainer.max_epochs, clock = 1, _StepClock(WARMUP)
        logger = L.pytorch.loggers.CSVLogger(out, name="logs")
        trainer = build_trainer(cfg, Path(out), logger, [clock])
        trainer.fit(module, train_dataloaders=loader)
    if clock.steps != steps:
        raise RuntimeError(f"Lightning ran {clock.steps} timed steps, not {steps}")
    seconds, cpu_seconds = clock.t1 - clock.t0, clock.cpu1 - clock.cpu0
    return {"impressions_per_s": steps * batch / seconds, "impressions_per_cpu_s": steps * batch / cpu_seconds,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": steps}  # fmt: skip


def run_case(
    data_dir: str, model: str, precision: str, compile_step: bool, args,
    variants: list[dict], batch: int | None = None,
) -> list[dict]:  # fmt: skip
    """One case, in this process: load the log once, then time each variant (``path``: resident,
    dataloader or lightning; ``packed``) ``--repeats`` times, the variants alternating so that a slow
    spell of the machine hits them alike; each keeps its least CPU-seconds. Every timing builds a fresh
    module (the same initial weights)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.threads:
        # one thread: CPU-seconds are then work, not OpenMP threads spinning while a neighbour holds a core
        torch.set_num_threads(args.threads)
    batch = batch or args.batch
    cfg = TrainConfig(data=DataConfig(path=data_dir))
    cfg.trainer.compile = compile_step
    cfg.trainer.precision = precision
    cfg.trainer.batch_size = batch
    cfg.uncertainty = MODELS[model]
    if cfg.trainer.tune_allocator:  # as `deepbandit train` does
        tune_allocator()
    dm = BanditDataModule(cfg.data, batch)
    dm.prepare()
    host = dm.batch_of(dm.train_table)
    # exactly one epoch of full batches: no short last batch, whose new shape would make torch.compile
    # recompile inside the timed steps (training pays that once per run, not per step)
    n_rows = (WARMUP + args.steps) * batch
    host = host[torch.arange(n_rows) % len(host)]
    resident = host.to(device)

    def timed(path: str, packed: bool) -> dict:
        torch.manual_seed(0)
        module = build_module(cfg, model_config(cfg, dm), dm.image_table.embedding, dm.title_genres).to(
            device
        )
        for part in module.modules():
            if isinstance(part, ArtworkScorer):
                part.pack_candidates = packed
        if path in ("resident", "lightning"):
            loader = ResidentLoader(resident, batch, shuffle=True)
        else:
            rows = _Rows(host)
            loader = DataLoader(rows, batch_size=batch, shuffle=True, collate_fn=rows.collate,
                                pin_memory=device.type == "cuda", num_workers=0)  # fmt: skip
        if path == "lightning":
            return time_lightning(module, loader, cfg, args.steps, batch)
        return time_steps(module, loader, device, args.steps, precision)

    best: list[dict | None] = [None] * len(variants)
    for _ in range(args.repeats):
        for i, v in enumerate(variants):
            r = timed(v["path"], v.get("packed", True))
            if best[i] is None or r["cpu_seconds"] < best[i]["cpu_seconds"]:
                best[i] = r
    mean_candidates = float(host.candidate_mask.sum(1).double().mean())
    return [
        {"model": model, "path": v["path"], "precision": precision, "compile": compile_step,
         "packed": v.get("packed", True), "batch": batch, "rows": len(host), "mean_candidates": mean_candidates,
         "padded_candidates": host.n_actions, "repeats": args.repeats} | r
        for v, r in zip(variants, best, strict=True)
    ]  # fmt: skip


def ratios(results: list[dict], batch: int) -> dict:
    """The side-by-side figures of one run, from CPU-seconds measured in one process."""

    def rate(**key) -> float | None:
        hits = [r for r in results if "error" not in r and all(r.get(k) == v for k, v in key.items())]
        return hits[0]["impressions_per_cpu_s"] if hits else None

    out: dict = {}
    for model in MODELS:
        key = {"model": model, "path": "resident", "precision": "32-true", "compile": False, "batch": batch}
        packed, padded = rate(**key, packed=True), rate(**key, packed=False)
        if packed and padded:
            out.setdefault("packed_over_padded", {})[model] = packed / padded
    for b in sorted({64, batch}):
        key = {
            "model": "K=1 (default model)",
            "precision": "32-true",
            "compile": False,
            "packed": True,
            "batch": b,
        }
        bare, lit = rate(**key, path="resident"), rate(**key, path="lightning")
        if bare and lit:
            out.setdefault("lightning_over_bare", {})[f"batch {b}"] = bare / lit
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="simulated impressions")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--repeats", type=int, default=3, help="timings of each variant; the least CPU time is kept"
    )
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (0: torch's default)")
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
            world=WorldConfig(**yaml.safe_load(DEFAULT_WORLD.read_text())),
            n_impressions=args.rows,
            out_dir=tmp,
            progress=False,
        )
        sim.logging_policy.name = "uniform"
        simulate(sim)
        compiles = (False, True) if args.compile else (False,)
        default = "K=1 (default model)"
        cases = []
        for model, precision, compile_step in itertools.product(args.models, args.precision, compiles):
            variants = [{"path": "resident"}, {"path": "dataloader"}]
            if precision == "32-true" and not compile_step:  # the padded reference beside the packed path
                variants.append({"path": "resident", "packed": False})
                if model == default:  # and the Lightning loop beside the bare one
                    variants.append({"path": "lightning"})
            cases.append({"model": model, "precision": precision, "compile_step": compile_step,
                          "variants": variants})  # fmt: skip
        if default in args.models and args.batch != 64:
            cases.append({"model": default, "precision": "32-true", "compile_step": False, "batch": 64,
                          "variants": [{"path": "resident"}, {"path": "lightning"}]})  # fmt: skip
        for case in cases:
            case = {"data_dir": tmp, **case}
            cmd = [sys.executable, __file__, *sys.argv[1:], "--case", json.dumps(case)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:  # keep going: one broken case (a compiler error, say) must not hide the rest
                failed += 1
                case.pop("data_dir")
                results.append(case | {"error": done.stderr[-2000:]})
            else:
                results.extend(json.loads(done.stdout.strip().splitlines()[-1]))
            for r in results[-len(case["variants"]) :] if not done.returncode else results[-1:]:
                print(json.dumps(r), flush=True)
            # written after every case, so that a run stopped at a time limit keeps what it measured
            report = {"machine": machine(), "simulated_rows": args.rows, "world": DEFAULT_WORLD.stem,
                      "ratios": ratios(results, args.batch), "results": results}  # fmt: skip
            out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    if failed:
        sys.exit(f"{failed} case(s) failed; their errors are in {out}")


if __name__ == "__main__":
    main()
