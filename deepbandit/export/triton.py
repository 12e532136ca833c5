"""A model repository for NVIDIA Triton Inference Server: ``<root>/<name>/config.pbtxt`` and
``<root>/<name>/1/model.onnx``, served by the onnxruntime backend with dynamic batching.

Triton owns the batch axis (``max_batch_size`` > 0), so dims list the other axes, -1 where dynamic.
Per-request scalars (B,) are declared ``dims: [1]`` with ``reshape: { shape: [] }``, Triton's way of
feeding a rank-1 batched tensor. Requests batched together by Triton must share the candidate and history
widths: pad client-side to fixed widths (e.g. 25 candidates, max_history) to let requests batch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from deepbandit.data.layout import checked_name

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}


def _dims(shape: list[Any]) -> tuple[list[int], bool]:
    """Triton dims (without the batch axis) and whether the tensor needs the rank-1 reshape."""
    rest = [-1 if isinstance(s, str) else int(s) for s in shape[1:]]
    return (rest, False) if rest else ([1], True)


def _tensor(name: str, spec: dict[str, Any]) -> str:
    dims, reshape = _dims(spec["shape"])
    lines = [
        "  {",
        f'    name: "{name}"',
        f"    data_type: {TRITON_DTYPES[spec['dtype']]}",
        f"    dims: [ {', '.join(map(str, dims))} ]",
    ]
    if reshape:
        lines.append("    reshape: { shape: [ ] }")
    lines.append("  }")
    return "\n".join(lines)


def triton_config(
    manifest: dict[str, Any],
    model_name: str,
    *,
    max_batch_size: int = 16384,
    preferred_batch_sizes: tuple[int, ...] = (256, 1024, 4096),
    max_queue_delay_us: int = 500,
    gpu: bool = True,
) -> str:
    """The text of config.pbtxt for the graph described by ``manifest["inputs"]`` / ``["outputs"]``."""
    preferred = [p for p in preferred_batch_sizes if p <= max_batch_size]
    inputs = ",\n".join(_tensor(n, s) for n, s in manifest["inputs"].items())
    outputs = ",\n".join(_tensor(n, s) for n, s in manifest["outputs"].items())
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return (
        f'name: "{model_name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
        f"instance_group [ {{ count: 1, kind: {kind} }} ]\n"
    )


def write_triton_repository(
    onnx_path: str | os.PathLike,
    manifest: dict[str, Any],
    root: str | os.PathLike,
    model_name: str,
    **config: Any,
) -> Path:
    """Write ``<root>/<model_name>/config.pbtxt`` and ``<root>/<model_name>/1/model.onnx``; return the
    model folder. ``config``: keyword arguments of :func:`triton_config`."""
    folder = Path(root) / checked_name(model_name, "model_name")
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(triton_config(manifest, model_name, **config))
    return folder
