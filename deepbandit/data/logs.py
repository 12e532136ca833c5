"""Reading logged impressions into arrays, on real logs as on simulated ones: the context columns the
ground truth and the baselines read (``Contexts``), and list columns as padded (B, A) arrays with masks.
(The simulator, deepbandit.sim, reads its own logs with them too.)"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.errors import DataError


@dataclass
class Contexts:
    """The logged context of B impressions: every column the ground truth reads.

    Categorical columns are codes into the vocabularies carried alongside (``device_vocab`` ...), so a
    table's dictionary encoding can be used as is; ``World`` maps them onto its own vocabularies.
    """

    member_id: np.ndarray  # (B,) int64
    title_id: np.ndarray  # (B,) int64
    timestamp: np.ndarray  # (B,) int64, microseconds since the epoch, UTC
    hour: np.ndarray  # (B,) int8, member-local hour 0..23
    weekday: np.ndarray  # (B,) int8, member-local weekday, Monday = 0
    device: np.ndarray  # (B,) int codes into device_vocab
    country: np.ndarray  # (B,) int codes into country_vocab
    language: np.ndarray  # (B,) int codes into language_vocab
    prior_interaction: np.ndarray  # (B,) bool
    recommender_score: np.ndarray  # (B,) float32
    device_vocab: tuple[str, ...]
    country_vocab: tuple[str, ...]
    language_vocab: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.member_id)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and value.shape != (n,):
                raise ValueError(f"Contexts.{f.name}: shape {value.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.member_id)

    def take(self, index: np.ndarray) -> Contexts:
        """Rows ``index`` (any numpy index) of every array field."""
        return Contexts(
            **{
                f.name: getattr(self, f.name)[index]
                if isinstance(getattr(self, f.name), np.ndarray)
                else getattr(self, f.name)
                for f in fields(self)
            }
        )


_CONTEXT_COLUMNS = (
    "member_id", "title_id", "timestamp", "hour", "weekday", "device", "country", "language",
    "prior_interaction", "recommender_score",
)  # fmt: skip


def contexts_from_impressions(table: pa.Table, source: str = "impressions") -> Contexts:
    """The ``Contexts`` of every row of an impressions table (B rows). ``source`` names it in errors.

    Numeric arrays are zero-copy (read-only) views of the table where Arrow allows; ``take`` copies."""
    missing = [c for c in _CONTEXT_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing} needed for the ground truth")
    arrays: dict[str, np.ndarray] = {}
    vocabs: dict[str, tuple[str, ...]] = {}
    for name in _CONTEXT_COLUMNS:
        column = table.column(name).combine_chunks()
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{source}: column {name!r} is null at row {row}")
        if name in ("device", "country", "language"):
            encoded = pc.dictionary_encode(column)
            arrays[name] = encoded.indices.to_numpy()
            vocabs[f"{name}_vocab"] = tuple(encoded.dictionary.to_pylist())
        elif name == "timestamp":
            arrays[name] = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        else:
            arrays[name] = column.to_numpy(zero_copy_only=False)
    return Contexts(**arrays, **vocabs)


def padded_list_column(table: pa.Table, name: str, fill, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a padded (B, A) array (A = longest list) and its (B, A) bool mask of real entries."""
    column = table.column(name).combine_chunks()
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"column {name!r} is null at row {row}")
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(lengths) else 0
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - (offsets[:-1] - offsets[0])[rows]
    out = np.full((len(lengths), width), fill, dtype=dtype)
    mask = np.zeros((len(lengths), width), dtype=bool)
    out[rows, cols] = values
    mask[rows, cols] = True
    return out, mask


def candidates_from_impressions(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``candidate_image_ids`` as (B, A) int64 padded with -1, and the (B, A) bool mask of real candidates."""
    return padded_list_column(table, "candidate_image_ids", -1, np.int64)
