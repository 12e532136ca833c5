"""Breaking an evaluation down by segment: prior interaction, device, country, or any impressions column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.errors import ConfigError, DataError

DEFAULT_SEGMENTS = ("prior_interaction", "device", "country")


def segment_codes(table: pa.Table, column: str, source: str = "impressions") -> tuple[np.ndarray, list[str]]:
    """Codes (n,) int64 of ``column``'s values and their labels (as strings, in first-seen order).

    Any scalar column works (strings, booleans, integers); list columns are refused, as are nulls (a null
    is not a segment: name the row)."""
    if column not in table.column_names:
        raise ConfigError(f"{source}: segment column {column!r} not found; columns are {table.column_names}")
    values = table.column(column).combine_chunks()
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        raise ConfigError(
            f"{source}: segment column {column!r} is a list column ({values.type}); pick a scalar one"
        )
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: segment column {column!r} is null at row {row}")
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    encoded = pc.dictionary_encode(values)
    labels = [str(v) for v in encoded.dictionary.to_pylist()]
    return encoded.indices.to_numpy().astype(np.int64), labels


def lift(value: float, reference: float) -> float | None:
    """Relative lift value / reference - 1; None when the reference is 0 (no lift defined)."""
    return None if reference == 0 else value / reference - 1.0
