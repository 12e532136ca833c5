"""Training throughput (impressions/s) and peak memory: default model, K=1 vs K=10 ensemble, and the
GPU-resident (index-slice) loader vs a plain DataLoader over the same tensors, in the same run.

    python scripts/bench_train.py [--rows 20000] [--steps 20] [--batch 1024] [--out benchmarks/train.json]

Simulates a tiny-world log once, converts it to an ImpressionBatch and times optimiser steps of the
LightningModule's loss (forward + backward + AdamW) with each loader. Peak memory: CUDA max allocated
on a GPU, else the process's peak RSS growth (ru_maxrss) per case, which on CPU only ever grows, so the
cases run smallest first. Writes the machine (CPU, cores, GPU, versions, load average) with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import deepbandit.cli.simulate  # noqa: F401
from deepbandit.data.simulator import SimulateConfig, simulate
from deepbandit.data.world import WorldConfig
from deepbandit.models.uncertainty import UncertaintyConfig
from deepbandit.training.config import DataConfig, TrainConfig
from deepbandit.training.datamodule import BanditDataModule, ResidentLoader
from deepbandit.training.module import BanditModule
from deepbandit.training.train import model_config


class _Rows(Dataset):
    """Row-at-a-time dataset over CPU tensors: the plain DataLoader baseline (collate + copy per batch)."""

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(module, loader, device, steps: int, warmup: int = 3) -> dict:
    opt = module.configure_optimizers()
    module.to(device).train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    it, n, t0 = iter(loader), 0, None
    for step in range(warmup + steps):
        try:
            batch, rows = next(it)
        except StopIteration:
            it = iter(loader)
            batch, rows = next(it)
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch, rows = batch.to(device, non_blocking=True), rows.to(device)
        loss = module._loss(batch, rows)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            n += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb() - rss0
    return {"impressions_per_s": n / seconds, "seconds": seconds, "steps": steps, "peak_memory_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--out", default="benchmarks/train.json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulateConfig(
            world=WorldConfig(**_tiny()), n_impressions=args.rows, out_dir=tmp, progress=False
        )
        sim.logging_policy.name = "uniform"
        simulate(sim)
        cfg = TrainConfig(data=DataConfig(path=tmp))
        dm = BanditDataModule(cfg.data, args.batch)
        dm.prepare()
        cpu_batch = dm.batch_of(dm.train_table)
    results = []
    for label, unc in (
        ("K=1 (default model)", UncertaintyConfig()),
        ("K=10 ensemble", UncertaintyConfig(kind="ensemble", n_members=10, prior_scale=1.0)),
    ):
        for path in ("resident", "dataloader"):
            torch.manual_seed(0)
            module = BanditModule(
                model_config(cfg, dm),
                unc,
                cfg.loss,
                cfg.policy,
                cfg.trainer,
                dm.image_table.embedding,
                dm.title_genres,
            ).to(device)
            if path == "resident":
                loader = ResidentLoader(cpu_batch.to(device), args.batch, shuffle=True)
            else:
                rows = _Rows(cpu_batch)
                loader = DataLoader(rows, batch_size=args.batch, shuffle=True, collate_fn=rows.collate,
                                    pin_memory=device.type == "cuda", num_workers=0)  # fmt: skip
            r = bench(module, loader, device, args.steps)
            results.append({"model": label, "path": path, "batch": args.batch} | r)
            print(json.dumps(results[-1]))
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": datetime.now(UTC).isoformat(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": args.rows, "results": results}, indent=2))
    print(f"wrote {out}")


def _tiny() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "world" / "tiny.yaml").read_text())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
