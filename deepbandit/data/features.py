"""The model-input contract: every input of the scorer, declared once (numpy only, no torch).

Each ``ModelInput`` names the scorer keyword (= ONNX graph input), the log or request field it is built
from, its dtype at the graph boundary, its axes, how the field becomes the input (``transform``), the
vocabulary it is looked up in, the range its values must lie in, and whether every model has it. Derived
from this table, so nothing else lists the inputs: the scorer's ``INPUT_NAMES``, the export's input specs
and dtypes and the manifest's ``feature_transforms``, the range checks of ``validate_inputs``, the log
columns ``table_to_batch`` reads and the request fields serving requires.

Adding a context column that reaches the model: a row here, its conversion in ``data/tensors.py``
(training) and ``serving/features.py`` (requests), the encoder that reads it, the simulator that writes
it; docs/architecture.md walks through an example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

# Symbolic axes: B requests, A candidates, H played titles (all dynamic in the graph); D and F are the
# model's embedding and member-feature widths.
BATCH, CANDIDATES, HISTORY, EMBEDDING, MEMBER_FEATURES = (
    "batch",
    "candidates",
    "history",
    "embedding",
    "features",
)


@dataclass(frozen=True)
class ModelInput:
    """One scorer input. ``optional``: None (every model), or the ``ModelConfig`` field that must be > 0
    for the model to have it. ``bounds``: inclusive range of the values (indices: the vocabulary)."""

    name: str
    source: str  # log/request field it is built from
    dtype: str  # numpy dtype at the graph boundary
    axes: tuple[str, ...]
    transform: str  # how the source becomes the input (the manifest's feature_transforms)
    vocab: str | None = None  # FeatureVocabs entry the source is looked up in
    bounds: tuple[float, float] | None = None
    optional: str | None = None


MODEL_INPUTS: tuple[ModelInput, ...] = (
    ModelInput(
        "history_title_idx", "played_title_ids", "int64", (BATCH, HISTORY),
        "vocabularies.title lookup of played_title_ids (most recent first), first max_history kept, "
        "left-aligned, padded with 0; H = max length in batch (>= 1)",
        vocab="title",
    ),
    ModelInput("history_mask", "played_title_ids", "bool", (BATCH, HISTORY), "True on real history entries"),
    ModelInput("country_idx", "country", "int64", (BATCH,), "vocabularies.country lookup (unknown -> 1)",
               vocab="country"),
    ModelInput("language_idx", "language", "int64", (BATCH,), "vocabularies.language lookup (unknown -> 1)",
               vocab="language"),
    ModelInput("device_idx", "device", "int64", (BATCH,), "vocabularies.device lookup (unknown -> 1)",
               vocab="device"),
    ModelInput("hour", "hour", "int64", (BATCH,), "member-local hour 0..23 (the graph applies sin/cos)",
               bounds=(0, 23)),
    ModelInput("weekday", "weekday", "int64", (BATCH,), "0..6, Monday = 0", bounds=(0, 6)),
    ModelInput("recommender_score", "recommender_score", "float32", (BATCH,),
               "raw upstream score (the graph applies a signed log1p)"),
    ModelInput("prior_interaction", "prior_interaction", "float32", (BATCH,), "bool as 0/1", bounds=(0, 1)),
    ModelInput("title_idx", "title_id", "int64", (BATCH,), "vocabularies.title lookup of title_id (unknown -> 1)",
               vocab="title"),
    ModelInput(
        "candidate_embeddings", "candidate_image_ids", "float32", (BATCH, CANDIDATES, EMBEDDING),
        "rows of images.npy at vocabularies.image lookup of candidate_image_ids (or embeddings added at "
        "serving time), left-aligned, zero-padded",
    ),
    ModelInput("candidate_mask", "candidate_image_ids", "bool", (BATCH, CANDIDATES), "True on real candidates"),
    ModelInput(
        "candidate_image_idx", "candidate_image_ids", "int64", (BATCH, CANDIDATES),
        "vocabularies.image index of each candidate; 1 (unknown) for images added after training, so their "
        "hashed id embedding is never read; 0 on padding",
        vocab="image", optional="image_id_hash_buckets",
    ),
    ModelInput("member_features", "member_features", "float32", (BATCH, MEMBER_FEATURES),
               "dense vector of member_features_dim per request", optional="member_features_dim"),
    ModelInput("member_id", "member_id", "int64", (BATCH,),
               "the raw member id; the graph takes it modulo member_id_hash_buckets for a learned member "
               "embedding", bounds=(-(2**63), 2**63 - 1), optional="member_id_hash_buckets"),
)  # fmt: skip

INPUTS: dict[str, ModelInput] = {i.name: i for i in MODEL_INPUTS}
INPUT_NAMES: tuple[str, ...] = tuple(INPUTS)
"""Keyword inputs of every scorer's ``forward``, in export order (the optional ones last)."""
REQUIRED_INPUTS: tuple[str, ...] = tuple(i.name for i in MODEL_INPUTS if i.optional is None)
INPUT_DTYPES: dict[str, str] = {i.name: i.dtype for i in MODEL_INPUTS}
FEATURE_TRANSFORMS: dict[str, str] = {i.name: i.transform for i in MODEL_INPUTS}
# request fields the inputs are built from, in contract order (member_features only for models that have it)
REQUEST_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(i.source for i in MODEL_INPUTS if i.optional is None))


@dataclass(eq=False)
class ModelInputs(MutableMapping):
    """The scorer's inputs for B requests: one field per ``MODEL_INPUTS`` entry, in its order (tensors in
    training and the torch path, numpy arrays in serving). Every scorer takes one.

    ``candidate_embeddings`` is None in a logged ``ImpressionBatch``, which carries image indices into the
    catalogue's table instead (``with_embeddings``); the optional inputs are None for models without them.
    It is also a mapping of its present (non-None) fields (setting a name that is not an input fails), so ``{**inputs, "hour": h}`` and
    ``ModelInputs.of`` round-trip, and serving feeds it to onnxruntime by name.
    """

    history_title_idx: Any
    history_mask: Any
    country_idx: Any
    language_idx: Any
    device_idx: Any
    hour: Any
    weekday: Any
    recommender_score: Any
    prior_interaction: Any
    title_idx: Any
    candidate_embeddings: Any = None
    candidate_mask: Any = None
    candidate_image_idx: Any = None
    member_features: Any = None
    member_id: Any = None

    @classmethod
    def of(cls, inputs: ModelInputs | Mapping[str, Any]) -> ModelInputs:
        """``inputs`` as it is, or a mapping of input names converted (an unknown name is refused)."""
        if isinstance(inputs, cls):
            return inputs
        unknown = sorted(set(inputs) - set(INPUT_NAMES))
        if unknown:
            raise ValueError(f"unknown model inputs {unknown}; the inputs are {list(INPUT_NAMES)}")
        return cls(**inputs)

    def replace(self, **changes: Any) -> ModelInputs:
        return replace(self, **changes)

    def apply(self, fn: Callable[[Any], Any]) -> ModelInputs:
        """A copy with ``fn`` applied to every present input."""
        return ModelInputs(**{k: None if v is None else fn(v) for k, v in self._fields()})

    def _fields(self) -> Iterator[tuple[str, Any]]:
        return ((f.name, getattr(self, f.name)) for f in fields(self))

    # Mapping of the present inputs
    def __getitem__(self, name: str) -> Any:
        value = getattr(self, name) if name in INPUTS else None
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in INPUTS:
            raise KeyError(f"{name!r} is not a model input; the inputs are {list(INPUT_NAMES)}")
        setattr(self, name, value)

    def __delitem__(self, name: str) -> None:
        self[name]  # KeyError when absent
        setattr(self, name, None)

    def __iter__(self) -> Iterator[str]:
        return (k for k, v in self._fields() if v is not None)

    def __len__(self) -> int:
        return sum(v is not None for _, v in self._fields())


def active_inputs(
    image_id_hash_buckets: int, member_features_dim: int, member_id_hash_buckets: int = 0
) -> list[ModelInput]:
    """The inputs of a model with these settings (``ModelConfig``), in export order."""
    present = {
        "image_id_hash_buckets": image_id_hash_buckets > 0,
        "member_features_dim": member_features_dim > 0,
        "member_id_hash_buckets": member_id_hash_buckets > 0,
    }
    return [i for i in MODEL_INPUTS if i.optional is None or present[i.optional]]


def input_shapes(inputs: list[ModelInput], embedding_dim: int, member_features_dim: int) -> dict[str, list]:
    """name -> shape with the symbolic axes "batch", "candidates", "history" and the fixed widths."""
    fixed = {EMBEDDING: embedding_dim, MEMBER_FEATURES: member_features_dim}
    return {i.name: [fixed.get(a, a) for a in i.axes] for i in inputs}


def check_input_values(
    inputs: Mapping[str, Any],
    *,
    required: Sequence[str],
    vocab_rows: Mapping[str, int],
    embedding_dim: int,
    member_features_dim: int,
    exact_dtypes: bool = True,
) -> None:
    """Check scorer (= graph) inputs (numpy arrays) against this contract; raise ValueError naming the
    input, the row and the value. The one checker of the graph's inputs: serving's
    ``check_graph_inputs`` (for clients that feed the ONNX graph directly, such as Triton's) and the
    models' ``validate_inputs`` both call it.

    required: the inputs this model takes (others are refused); vocab_rows: rows of each vocabulary's
    embedding (its keys + 2 reserved); exact_dtypes: the graph's dtypes exactly (else any integer type
    for indices and any float type for floats, as torch accepts).

    Checked: names, dtypes, shapes (B, A, H >= 1, fixed widths), indices inside their vocabulary, bounded
    values inside their bounds, finite floats, and at least one valid candidate per request. The graph
    itself checks none of this: an index of -1 would silently read the last embedding row.
    """
    import numpy as np

    missing = [n for n in required if inputs.get(n) is None]
    if missing:
        raise ValueError(f"missing scorer inputs: {missing}")
    unknown = sorted(n for n, v in inputs.items() if v is not None and n not in required)
    if unknown:
        raise ValueError(f"inputs this model does not take: {unknown} (it takes {list(required)})")
    arrays = {n: np.asarray(inputs[n]) for n in required}
    mask = arrays["candidate_mask"]
    if mask.ndim != 2:
        raise ValueError(f"candidate_mask must be (B, A), got shape {mask.shape}")
    axis = {BATCH: mask.shape[0], CANDIDATES: mask.shape[1], HISTORY: arrays["history_title_idx"].shape[-1],
            EMBEDDING: embedding_dim, MEMBER_FEATURES: member_features_dim}  # fmt: skip
    for name, size in ((BATCH, axis[BATCH]), (CANDIDATES, axis[CANDIDATES]), (HISTORY, axis[HISTORY])):
        if size < 1:
            raise ValueError(
                f"the {name} axis is empty (size 0); every input needs B, A, H >= 1 (pad with 0/False)"
            )
    for name in required:
        spec, x = INPUTS[name], arrays[name]
        shape = tuple(axis[a] for a in spec.axes)
        if x.shape != shape:
            raise ValueError(f"{name} has shape {x.shape}, expected {shape} ({', '.join(spec.axes)})")
        expected = np.dtype(spec.dtype)
        kind = expected.kind
        if exact_dtypes or kind == "b":
            same = x.dtype == expected
        else:  # torch's side: any integer type for integers, floats (or bool flags) for floats
            same = x.dtype.kind in ("iu" if kind == "i" else "fb")
        if not same:
            what = {"b": "bool", "i": "an integer index" if spec.vocab else "an integer"}.get(
                kind, spec.dtype
            )
            raise ValueError(f"{name} must be {what}, got {x.dtype}")
        if kind == "b":
            continue
        if kind == "f" and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{name} is not finite at row {bad[0]} (index {bad.tolist()}): {x[tuple(bad)]}")
        if spec.vocab is not None:
            low, high = 0, vocab_rows[spec.vocab] - 1
        elif spec.bounds is not None:
            low, high = spec.bounds
        else:
            continue
        outside = (x < low) | (x > high)
        if outside.any():
            bad = np.argwhere(outside)[0]
            raise ValueError(
                f"{name} at row {bad[0]} (index {bad.tolist()}) is {x[tuple(bad)]}, outside [{low}, {high}]"
            )
    empty = ~mask.any(1)
    if empty.any():
        raise ValueError(f"candidate_mask row {int(np.flatnonzero(empty)[0])} has no valid candidate")


__all__ = [
    "FEATURE_TRANSFORMS",
    "INPUTS",
    "INPUT_DTYPES",
    "INPUT_NAMES",
    "MODEL_INPUTS",
    "REQUEST_FIELDS",
    "REQUIRED_INPUTS",
    "ModelInput",
    "ModelInputs",
    "active_inputs",
    "check_input_values",
    "input_shapes",
]

assert tuple(f.name for f in fields(ModelInputs)) == INPUT_NAMES, (
    "ModelInputs has one field per MODEL_INPUTS entry"
)
