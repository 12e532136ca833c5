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
    a = torch.load(out / "single" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(out / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
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
