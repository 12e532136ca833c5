"""Train the same config with 1 and with N CPU processes (DDP over gloo) and compare the final weights.

    python -m deepbandit.training.ddp_check <data dir> <out dir> [processes=2]

Each DDP rank takes its interleaved half of every global batch (``ResidentLoader``), gradients are averaged,
so with the same global batch the N-process run follows the 1-process run up to floating-point summation
order (and the uneven split of a final partial batch). Prints a JSON line with the largest absolute weight
difference; exits 1 when it exceeds the tolerance. Lightning's DDP launcher re-runs this module in its
child processes, which is why this is a module and not a function called from pytest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from deepbandit.training.config import DataConfig, ModelGroupConfig, TrainConfig, TrainerConfig
from deepbandit.training.train import train

TOLERANCE = 1e-3


def even_batches_worker(
    rank: int, world_size: int, init_file: str, rows: list[list[int]], out_dir: str
) -> None:
    """One process of an ``EvenBatches`` check (``torch.multiprocessing.spawn`` target): rank r streams
    batches of ``rows[r]`` rows and writes what it stepped on and skipped to ``<out_dir>/rank<r>.json``."""
    import torch.distributed as dist

    from deepbandit.training.datamodule import EvenBatches

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        loader = EvenBatches([(torch.zeros(n), None) for n in rows[rank]])
        stepped = []
        for batch, _ in loader:
            total = torch.tensor([float(len(batch))])
            dist.all_reduce(total)  # what a DDP gradient all-reduce does every step: every rank must join
            stepped.append(len(batch))
        result = {
            "stepped": stepped,
            "skipped_batches": loader.skipped_batches,
            "skipped_rows": loader.skipped_rows,
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def config(data: str, processes: int) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(path=data, validate=False),
        model=ModelGroupConfig(hidden=32, tower_dim=16, head_dim=32, id_dim=8),
        trainer=TrainerConfig(
            max_epochs=2, batch_size=512, lr=3e-3, accelerator="cpu", devices=processes, progress=False,
            logger="none", strategy="ddp" if processes > 1 else "auto", val_interval="none",
        ),
    )  # fmt: skip


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(1)
    if "LOCAL_RANK" not in os.environ:  # the launcher's children skip the reference run
        train(config(data, 1), out_dir=out / "single")
    multi = train(config(data, processes), out_dir=out / "ddp")
    if not multi:  # a non-zero rank: rank 0 compares
        return
    a = torch.load(out / "single" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(out / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    diff = max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in a["state_dict"])
    result = {
        "processes": processes,
        "global_step": [a["global_step"], b["global_step"]],
        "max_abs_diff": diff,
    }
    print(json.dumps(result))
    sys.exit(0 if diff <= TOLERANCE and a["global_step"] == b["global_step"] else 1)


if __name__ == "__main__":
    main()
