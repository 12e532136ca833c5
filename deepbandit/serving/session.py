"""The onnxruntime session: CUDA with IO binding when the CUDA provider is available, CPU otherwise."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort


def default_providers() -> list[str]:
    """CUDA then CPU when onnxruntime has the CUDA provider, else CPU only."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxSession:
    """One InferenceSession; ``run(feeds, outputs)`` returns numpy arrays.

    On CUDA the inputs are copied to the device once per call and the requested outputs are bound and
    copied back (IO binding), so onnxruntime does no extra staging and only the outputs the policy needs
    (e.g. the (B, K) winners instead of (B, K, A) samples) cross the bus.
    """

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
    ):
        opts = ort.SessionOptions()
        # Spinning worker threads cut latency between back-to-back runs but burn the cores that feature
        # building and the policy need between runs; off by default.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        requested = providers or default_providers()
        # a provider listed by onnxruntime may still fail to load (no driver): keep what actually loaded
        # bytes: a serialised model (the closed loop serves new weights in the same graph this way)
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, opts, providers=requested)
        self.providers = self.session.get_providers()
        self.cuda = self.providers[0] == "CUDAExecutionProvider"

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if not self.cuda:
            return dict(zip(outputs, self.session.run(outputs, feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
            )
        for name in outputs:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))
