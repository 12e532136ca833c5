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

from dataclasses import dataclass

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
)  # fmt: skip

INPUTS: dict[str, ModelInput] = {i.name: i for i in MODEL_INPUTS}
INPUT_NAMES: tuple[str, ...] = tuple(INPUTS)
"""Keyword inputs of every scorer's ``forward``, in export order (the optional ones last)."""
REQUIRED_INPUTS: tuple[str, ...] = tuple(i.name for i in MODEL_INPUTS if i.optional is None)
INPUT_DTYPES: dict[str, str] = {i.name: i.dtype for i in MODEL_INPUTS}
FEATURE_TRANSFORMS: dict[str, str] = {i.name: i.transform for i in MODEL_INPUTS}
# request fields the inputs are built from, in contract order (member_features only for models that have it)
REQUEST_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(i.source for i in MODEL_INPUTS if i.optional is None))


def active_inputs(image_id_hash_buckets: int, member_features_dim: int) -> list[ModelInput]:
    """The inputs of a model with these settings (``ModelConfig``), in export order."""
    present = {
        "image_id_hash_buckets": image_id_hash_buckets > 0,
        "member_features_dim": member_features_dim > 0,
    }
    return [i for i in MODEL_INPUTS if i.optional is None or present[i.optional]]


def input_shapes(inputs: list[ModelInput], embedding_dim: int, member_features_dim: int) -> dict[str, list]:
    """name -> shape with the symbolic axes "batch", "candidates", "history" and the fixed widths."""
    fixed = {EMBEDDING: embedding_dim, MEMBER_FEATURES: member_features_dim}
    return {i.name: [fixed.get(a, a) for a in i.axes] for i in inputs}


__all__ = [
    "FEATURE_TRANSFORMS",
    "INPUTS",
    "INPUT_DTYPES",
    "INPUT_NAMES",
    "MODEL_INPUTS",
    "REQUEST_FIELDS",
    "REQUIRED_INPUTS",
    "ModelInput",
    "active_inputs",
    "input_shapes",
]
