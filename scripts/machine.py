"""What machine a benchmark ran on: one description shared by every ``scripts/bench_*.py``."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra: object) -> dict[str, object]:
    """Platform, CPU, memory, GPU (None without CUDA), library versions, load average and date.

    ``extra`` adds fields of the benchmark's own (onnxruntime providers, pyarrow version, ...).
    """
    import torch  # here, so that benchmarks whose workers never touch torch do not load it

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        # other work on the machine skews every figure: record how busy it was
        "load_average_1m_5m_15m": list(os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }
