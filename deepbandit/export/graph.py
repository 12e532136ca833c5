"""The ONNX graph of a trained ``ModelBundle``: its inputs and outputs, the export module, the metadata.

Graph inputs are the scorer's ``INPUT_NAMES`` (B requests, A candidates, H history, D embedding width):
candidate *embeddings* enter the graph, so serving scores any image it has an embedding for, including
images added after training. ``candidate_image_idx`` is an input only when the model hashes image ids,
``member_features`` only when the model has them. Batch, candidate and history axes are dynamic.

A neural-linear model's graph takes one more input, ``posterior_noise`` float32 (S, P): standard-normal
noise from the host, one row per posterior draw (P = head_dim + 1). The graph turns it into the draws
w_s = mean + L eps_s of the Bayesian last layer (mean and Cholesky factor L are initializers: the
posterior travels with the model), so serving draws with its own seeded generator and logs the share of
the S draws as ``mc_estimate:S``. The manifest names it under ``posterior_noise``.

Outputs:
    scores            float32 (B, A)    point logits (mean over members), padding = PAD_LOGIT
    posterior_samples float32 (B, K, A) ensembles: every member's logits (Thompson "ensemble");
                              (B, S, A) neural-linear: the logits of the S draws
    winners           int64   (B, K|S)  each member's / draw's argmax over the masked logits
                                        (ONNX ArgMax, first position among ties, like ``masked_argmax``)

MC dropout models export their mean prediction only: an ONNX graph has no reproducible dropout
(RandomUniform draws are neither seedable per request nor identical across runtimes). Their Thompson
policy is not served; greedy, epsilon-greedy and softmax on the mean are. The manifest says which outputs
exist (``outputs``).

fp16: the model is converted with ``.half()`` and exported with float32 inputs and outputs (casts at the
boundary), so the serving code feeds the same arrays to both variants.

The precomputed variant (``model_precomputed.onnx``): the image tower depends on the image alone, so its
output for every catalogue image (rows of images.npy, K members) is computed once at export and stored in
the graph as a table; the graph takes ``candidate_image_idx`` (the image vocabulary index, also the row of
images.npy) instead of ``candidate_embeddings`` and gathers the table, skipping the tower's two layers per
candidate. It gives the embedding graph's outputs on catalogue images (parity-tested); images added after
export have no row in it, so serving sends batches holding them to ``model.onnx``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepbandit.atomic import atomic_file
from deepbandit.data.features import (
    INPUT_DTYPES,
    INPUT_NAMES,
    INPUTS,
    ModelInputs,
    active_inputs,
    input_shapes,
)
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import random_inputs
from deepbandit.models.scorer import precompute_image_towers
from deepbandit.models.uncertainty import capabilities

OPSET = 17


def _inputs(bundle: ModelBundle, precomputed: bool = False) -> list:
    cfg = bundle.model_cfg
    inputs = active_inputs(cfg.image_id_hash_buckets, cfg.member_features_dim, cfg.member_id_hash_buckets)
    if not precomputed:
        return inputs
    names = {i.name for i in inputs} - {"candidate_embeddings"} | {"candidate_image_idx"}
    return [INPUTS[n] for n in INPUT_NAMES if n in names]


def input_names(bundle: ModelBundle, precomputed: bool = False) -> list[str]:
    """The graph's inputs for this bundle, in ``INPUT_NAMES`` order (``data.features.active_inputs``); the
    precomputed graph's take ``candidate_image_idx`` in place of ``candidate_embeddings``."""
    return [i.name for i in _inputs(bundle, precomputed)]


def input_specs(bundle: ModelBundle, precomputed: bool = False) -> dict[str, dict[str, Any]]:
    """name -> {"dtype", "shape"} with symbolic axes "batch", "candidates", "history" (from the contract)."""
    cfg = bundle.model_cfg
    inputs = _inputs(bundle, precomputed)
    shapes = input_shapes(inputs, cfg.embedding_dim, cfg.member_features_dim)
    return {i.name: {"dtype": i.dtype, "shape": shapes[i.name]} for i in inputs}


def noise_spec(bundle: ModelBundle) -> dict[str, Any] | None:
    """{"dtype", "shape": ["samples", P]} of the ``posterior_noise`` input, or None (no such input)."""
    if not capabilities(bundle.uncertainty_cfg).posterior_noise:
        return None
    return {"dtype": "float32", "shape": ["samples", bundle.model_cfg.head_dim + 1]}


def output_specs(bundle: ModelBundle) -> dict[str, dict[str, Any]]:
    """name -> {"dtype", "shape"}; a served posterior adds posterior_samples and winners (K members, or
    the "samples" axis of the posterior noise)."""
    specs: dict[str, dict[str, Any]] = {"scores": {"dtype": "float32", "shape": ["batch", "candidates"]}}
    if capabilities(bundle.uncertainty_cfg).exported_posterior:
        k = "samples" if noise_spec(bundle) else bundle.uncertainty_cfg.n_members
        specs["posterior_samples"] = {"dtype": "float32", "shape": ["batch", k, "candidates"]}
        specs["winners"] = {"dtype": "int64", "shape": ["batch", k]}
    return specs


def graph_input_names(bundle: ModelBundle, precomputed: bool = False) -> list[str]:
    """Every input of the graph: the model inputs, then ``posterior_noise`` when the model takes it."""
    return input_names(bundle, precomputed) + (["posterior_noise"] if noise_spec(bundle) else [])


class ExportModule(nn.Module):
    """Positional-input wrapper of a scorer for ``torch.onnx.export``: float inputs are cast to the model's
    dtype (fp16 variant) and float outputs back to float32, so both variants share one interface."""

    def __init__(self, model: nn.Module, names: list[str], posterior: bool, noise: bool = False):
        super().__init__()
        self.model = model
        self.names = names
        self.posterior, self.noise = posterior, noise
        self.dtype = next(model.parameters()).dtype

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        noise = args[len(self.names)] if self.noise else None
        inputs = ModelInputs(
            **{
                n: a.to(self.dtype) if a.is_floating_point() else a
                for n, a in zip(self.names, args[: len(self.names)], strict=True)
            }
        )
        if not self.posterior:
            return (self.model(inputs).float(),)
        if noise is not None:  # neural-linear: the draws of the host's noise, (B, S, A)
            draws = self.model.posterior_from_noise(inputs, noise)
            return self.model(inputs).float(), draws.float(), draws.argmax(-1)
        members = self.model.member_logits(inputs)  # (B, K, A), padding = PAD_LOGIT
        scores = members.mean(1)
        return scores.float(), members.float(), members.argmax(-1)

    @classmethod
    def of(cls, model: nn.Module, bundle: ModelBundle, precomputed: bool = False) -> ExportModule:
        """The export wrapper of ``model`` for ``bundle``'s graph (its inputs and posterior outputs)."""
        offers = capabilities(bundle.uncertainty_cfg)
        return cls(model, input_names(bundle, precomputed), offers.exported_posterior, offers.posterior_noise)


def sample_inputs(
    bundle: ModelBundle, batch: int, candidates: int, history: int, seed: int = 0, samples: int = 4
) -> dict:
    """Random graph inputs as numpy arrays with the boundary dtypes (for tracing, parity and benchmarks),
    with ``samples`` rows of posterior noise when the graph takes it. The candidates are catalogue images:
    ``candidate_embeddings`` are their rows of the bundle's table, so the embedding graph and the
    precomputed one score the same candidates."""
    g = torch.Generator().manual_seed(seed)
    cfg = bundle.model_cfg
    inputs = random_inputs(
        cfg, batch, candidates, history, generator=g, image_embeddings=bundle.image_embedding
    )
    names = dict.fromkeys(input_names(bundle) + input_names(bundle, precomputed=True))
    feeds = {n: inputs[n].numpy().astype(INPUT_DTYPES[n]) for n in names}
    spec = noise_spec(bundle)
    if spec:
        feeds["posterior_noise"] = torch.randn(samples, spec["shape"][1], generator=g).numpy()
    return feeds


def export_graph(
    bundle: ModelBundle,
    path: str | os.PathLike,
    *,
    fp16: bool = False,
    opset: int = OPSET,
    fold_constants: bool = True,
    precomputed: bool = False,
) -> Path:
    """Write the ONNX graph of ``bundle`` (float32, or fp16 inside with float32 boundary) to ``path``;
    ``precomputed``: the variant with the image tower's outputs for the catalogue stored in the graph.

    fold_constants False keeps every parameter and buffer as an initializer named ``model.<state_dict
    key>`` with its own shape (folding merges some into derived constants), so a serving session can take
    new weights without a new export (``OnnxSession.with_weights``; the closed loop does this)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = bundle.build_model()
    if precomputed:
        precompute_image_towers(model.eval(), bundle.image_embedding)
    if fp16:
        model = model.half()
    names = graph_input_names(bundle, precomputed)
    module = ExportModule.of(model, bundle, precomputed).eval()
    example = sample_inputs(bundle, 3, 4, 5)
    outputs = list(output_specs(bundle))
    dynamic: dict[str, dict[int, str]] = {}
    specs = input_specs(bundle, precomputed)
    specs |= {"posterior_noise": noise_spec(bundle)} if noise_spec(bundle) else {}
    for n, spec in specs.items():
        dynamic[n] = {i: s for i, s in enumerate(spec["shape"]) if isinstance(s, str)}
    for n, spec in output_specs(bundle).items():
        dynamic[n] = {i: s for i, s in enumerate(spec["shape"]) if isinstance(s, str)}
    # The tracer warns about Python-level shape branches (stacked layers pick einsum vs bmm by K, which
    # is fixed per model); they are constant for a given model, so the traced graph is general.
    with torch.no_grad(), warnings.catch_warnings(), atomic_file(path) as sink:
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is chosen on purpose (see above)
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(example[n]) for n in names),
            sink,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=fold_constants,
            dynamo=False,  # the legacy tracer: fast, and verified with dynamic axes (docs/models-and-losses.md)
        )
    return path


def embed_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into the ONNX file's metadata_props (one JSON string per top-level key)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    with atomic_file(path) as sink:
        sink.write(model.SerializeToString())  # onnx.save wants a named file; the graph is far below 2 GB


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Inverse of :func:`embed_metadata`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}
