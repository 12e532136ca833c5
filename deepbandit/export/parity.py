"""Parity of the exported graph with the torch model: onnxruntime vs torch on random padded inputs."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from deepbandit.export.graph import ExportModule, graph_input_names, output_specs, sample_inputs
from deepbandit.models.bundle import ModelBundle

FP32_ATOL = 1e-5  # max |onnxruntime - torch| on logits, fp32 on CPU
# fp16 (vs the fp32 torch model) keeps ~3 significant digits: measured 3e-5..2.4e-4 on the test models
# (logits of order 1, tower width 16); wider models add rounding per layer, hence the 1e-2 bound. Near-ties
# may change the argmax in fp16, so the fp16 check does not require the same choice.
FP16_ATOL = 1e-2


def check_parity(
    model: nn.Module,
    bundle: ModelBundle,
    onnx_path: str | os.PathLike,
    batch_sizes: tuple[int, ...],
    candidate_counts: tuple[int, ...],
    *,
    history_len: int = 8,
    atol: float = FP32_ATOL,
    label: str = "fp32",
    same_choice: bool = True,
    seed: int = 0,
    providers: list[str] | None = None,
    precomputed: bool = False,
) -> list[dict[str, Any]]:
    """Run onnxruntime and torch on random inputs (random padding of candidates and history) for every
    (batch size, candidate count) and compare every output. With ``precomputed`` the graph is the variant
    with the image tower's outputs stored (it takes image indices), and torch runs the embedding path on
    the same catalogue images: the check that precomputing changed nothing.

    Returns one record per case: batch, candidates, max_abs_diff (over valid candidates and members),
    same_choice (the graph's argmax over valid candidates, and each member's winner, is torch's up to ties
    within ``atol``), label, atol.
    Raises AssertionError naming the case when max_abs_diff > atol or (same_choice) the choice differs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
    names = graph_input_names(bundle)
    graph_names = graph_input_names(bundle, precomputed)
    outputs = list(output_specs(bundle))
    module = ExportModule.of(model.eval(), bundle)
    records = []
    for i, b in enumerate(batch_sizes):
        for j, a in enumerate(candidate_counts):
            feeds = sample_inputs(bundle, b, a, history_len, seed=seed + 1000 * i + j)
            got = dict(zip(outputs, session.run(outputs, {n: feeds[n] for n in graph_names}), strict=True))
            with torch.no_grad():
                ref = module(*(torch.from_numpy(feeds[n]) for n in names))
            ref = {n: r.numpy() for n, r in zip(outputs, ref, strict=True)}
            mask = feeds["candidate_mask"]
            diff = float(np.abs(got["scores"] - ref["scores"])[mask].max())
            if "posterior_samples" in got:
                member_mask = np.broadcast_to(mask[:, None, :], got["posterior_samples"].shape)
                diff = max(
                    diff,
                    float(np.abs(got["posterior_samples"] - ref["posterior_samples"])[member_mask].max()),
                )
            choice_ok = _same_choice(got["scores"], ref["scores"], mask, atol)
            if "winners" in got:
                member_mask = np.broadcast_to(mask[:, None, :], ref["posterior_samples"].shape)
                refs = np.where(member_mask, ref["posterior_samples"], -np.inf)
                won = np.take_along_axis(refs, got["winners"][..., None], -1)[..., 0]
                choice_ok &= bool((won >= refs.max(-1) - atol).all())
            record = {"label": label, "batch": b, "candidates": a, "max_abs_diff": diff, "atol": atol}
            record["same_choice"] = choice_ok
            records.append(record)
            if diff > atol or (same_choice and not choice_ok):
                raise AssertionError(
                    f"{onnx_path}: onnxruntime disagrees with torch ({label}) at batch={b}, candidates={a}: "
                    f"max abs diff {diff:.3g} (allowed {atol:g}), same choice {choice_ok}"
                )
    return records


def _same_choice(got: np.ndarray, ref: np.ndarray, mask: np.ndarray, atol: float) -> bool:
    """The graph's argmax over valid candidates is torch's, up to ties within ``atol``: a request may hold
    the same image twice, and two positions' equal scores can round apart differently in each runtime."""
    refs = np.where(mask, ref, -np.inf)
    chosen = np.where(mask, got, -np.inf).argmax(1)
    return bool((refs[np.arange(len(refs)), chosen] >= refs.max(1) - atol).all())
