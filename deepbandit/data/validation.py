"""Validation of tables and datasets against the log contract (`deepbandit.data.schema`).

Two modes. ``strict`` raises a `ValidationError` at the first problem (the lowest bad row of the first file
that has one). ``quarantine`` keeps the good rows, sets the bad ones aside with a ``reason`` column and
reports counts; ``rows_read == rows_kept + rows_quarantined`` always holds.

Problems come in two kinds:

* **Table-level** problems cannot be pinned on single rows, so they raise in both modes: an unreadable or
  truncated file, a missing, unknown or mistyped column, a time zone-naive timestamp, another contract
  version in the file's metadata, schema drift between the files of a dataset, and list columns whose
  width was not given and differs between rows (embedding, member_features).
* **Row-level** problems (nulls where the contract forbids them, NaN/inf, values out of range, bad
  candidate lists, unknown ids, duplicated keys) name the first failing row in strict mode and send the row
  to quarantine otherwise. A row with several problems is counted once, under its first problem in the
  contract's column order.

Rows are numbered from 0 within their file. Nothing is clamped, coerced or dropped silently: the only type
changes made are the lossless ones listed in ``docs/log-contract.md`` (e.g. ``large_string`` to ``string``,
``int32`` ids to ``int64``), applied by Arrow's safe casts.

Every check is vectorised with pyarrow.compute/numpy; list columns are checked through their flattened
values and per-row lengths, never row by row in Python.

(One module of about 1,100 lines on purpose: it is the executable form of the whole contract, and every
check shares the first-problem-per-row bookkeeping that keeps strict and quarantine modes in agreement;
split by column group, the order of problems, which the contract defines, would live in several files.)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepbandit.data.io import (
    IGNORED_PREFIXES,
    check_dataset_record,
    check_partition_keys,
    list_parquet_files,
    write_parquet_atomic,
)
from deepbandit.data.layout import DATASET_RECORD_FILE
from deepbandit.data.schema import (
    IMAGES_FILE,
    IMPRESSIONS_DIR,
    MAX_CANDIDATES,
    MAX_HISTORY,
    MAX_TIMESTAMP_US,
    METADATA_TABLE_KEY,
    METADATA_VERSION_KEY,
    MIN_PROPENSITY,
    MIN_TIMESTAMP_US,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    TABLE_KINDS,
    TITLES_FILE,
)
from deepbandit.errors import ConfigError, DataError, UserError

MODES = ("strict", "quarantine")
PROBABILITY_TOL = 1e-6  # |sum(action_dist) - 1| and |action_dist[chosen] - propensity| must not exceed this
# propensity_kind is an open vocabulary ("exact", "logged", ...); only Monte Carlo kinds have a fixed form
MC_PREFIX = "mc_estimate:"
MC_PATTERN = r"^mc_estimate:[1-9][0-9]*$"
QUARANTINE_SUFFIX = ".quarantine.parquet"
# Columns appended to quarantined rows; they cannot clash with data because unknown columns are rejected.
QUARANTINE_COLUMNS = ("reason", "column", "row")

# integer types whose every value is exact in int64 and in float64
_SMALL_INTS = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32())
_STRINGS = (pa.string(), pa.large_string(), pa.string_view())
_SMALL_INT_COLUMNS = ("hour", "weekday")  # contract int8: any integer is checked for range, then narrowed


class ValidationError(UserError, ValueError):
    """A breach of the log contract, saying where it is.

    ``file`` is the file's path relative to the dataset root (or the name given to `validate_table`),
    ``column`` is None for problems with the file as a whole, ``row`` is the 0-based row number within the
    file (None for table-level problems), ``request_id`` is given for impression rows that have one.
    """

    def __init__(
        self, file: str, column: str | None, row: int | None, reason: str, request_id: str | None = None
    ):
        self.file, self.column, self.row, self.reason, self.request_id = file, column, row, reason, request_id
        where = []
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}" + (f" (request_id {request_id!r})" if request_id is not None else ""))
        super().__init__(f"{file}: {', '.join(where)}: {reason}" if where else f"{file}: {reason}")

    def __reduce__(self):  # keep the structured fields through pickling (multiprocessing, loggers)
        return type(self), (self.file, self.column, self.row, self.reason, self.request_id)


@dataclass
class ValidationReport:
    """Outcome of validating one table or file.

    ``reasons`` counts quarantined rows per reason (each row once, under its first problem), so its values
    sum to ``rows_quarantined``. ``kept`` holds the good rows normalised to the contract's types (None when
    validating a dataset, which does not hold files in memory). ``quarantined`` holds the bad rows exactly as
    read plus ``reason`` (str), ``column`` (str) and ``row`` (int64, 0-based within the file); a dataset
    writes it to ``quarantine_path`` instead of keeping it.
    """

    file: str
    kind: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    kept: pa.Table | None = None
    quarantined: pa.Table | None = None
    quarantine_path: Path | None = None


@dataclass
class DatasetReport:
    """Outcome of `validate_dataset`: one `ValidationReport` per file (titles, images, impressions...).

    ``skipped`` lists the files under impressions/ that neither validation nor the readers look at (names not
    ending in .parquet; hidden ones, starting with '.' or '_', are not listed).
    """

    root: Path
    mode: str
    files: list[ValidationReport]
    skipped: list[str] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return sum(r.rows_read for r in self.files)

    @property
    def rows_kept(self) -> int:
        return sum(r.rows_kept for r in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(r.rows_quarantined for r in self.files)

    @property
    def reasons(self) -> Counter[str]:
        return sum((r.reasons for r in self.files), Counter())


# --- types ------------------------------------------------------------------------------------------


def _accepts(found: pa.DataType, expected: pa.DataType, column: str) -> bool:
    """Whether ``found`` converts to ``expected`` without loss (the documented accepted variants)."""
    if found == expected:
        return True
    if pa.types.is_string(expected):
        if pa.types.is_dictionary(found):
            return found.value_type in _STRINGS
        return found in _STRINGS
    if column in _SMALL_INT_COLUMNS:
        return pa.types.is_integer(found) and found != pa.uint64()
    if expected == pa.int64():
        return found in _SMALL_INTS
    if expected == pa.float64():
        return found in (pa.float32(), pa.float16(), *_SMALL_INTS)
    if expected == pa.float32():
        return found == pa.float16()
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found) and found.tz is not None
    if pa.types.is_list(expected):
        is_list = (
            pa.types.is_list(found) or pa.types.is_large_list(found) or pa.types.is_fixed_size_list(found)
        )
        return is_list and _accepts(found.value_type, expected.value_type, "")
    return False


def _expected_text(f: pa.Field) -> str:
    """'expected T (also accepted: ...)' for a mistyped-column message."""
    t = f.type
    element = t.value_type if pa.types.is_list(t) else t
    if f.name in _SMALL_INT_COLUMNS:
        also = "any integer type but uint64 (range-checked, then stored as int8)"
    elif element == pa.int64():
        also = "int8/16/32, uint8/16/32"
    elif element == pa.float64():
        also = "float32, float16, int8/16/32, uint8/16/32"
    elif element == pa.float32():
        also = "float16; float64 is refused because narrowing loses precision: cast explicitly if that is acceptable"
    elif element == pa.string():
        also = "large_string, string_view, dictionary of strings"
    elif pa.types.is_timestamp(element):
        also = "any unit and any time zone (values are UTC instants); ns only without sub-microsecond parts"
    else:
        also = "nothing else"
    lists = "; lists may also be large_list or fixed_size_list" if pa.types.is_list(t) else ""
    nulls = "; an all-null column of type null" if f.nullable else ""
    return f"expected {t} (also accepted: {also}{lists}{nulls})"


def _check_type(field_: pa.Field) -> pa.DataType:
    """Type the checks run on: the contract type, except int8 columns, range-checked as int64 first."""
    return pa.int64() if field_.name in _SMALL_INT_COLUMNS else field_.type


def _conform_schema(schema: pa.Schema, kind: str, file: str) -> list[pa.Field]:
    """Check ``schema`` against the contract for ``kind``; returns the contract fields present, in order.

    Raises ValidationError (table-level) on foreign metadata, unknown, duplicated, missing or mistyped columns.
    """
    meta = schema.metadata or {}
    version = meta.get(METADATA_VERSION_KEY)
    if version is not None and version.decode(errors="replace") != SCHEMA_VERSION:
        raise ValidationError(
            file,
            None,
            None,
            f"written under log contract version {version.decode(errors='replace')!r} "
            f"(metadata key {METADATA_VERSION_KEY.decode()}), this deepbandit reads version {SCHEMA_VERSION!r}",
        )
    table = meta.get(METADATA_TABLE_KEY)
    if table is not None and table.decode(errors="replace") != kind:
        raise ValidationError(
            file,
            None,
            None,
            f"metadata says this is a {table.decode(errors='replace')!r} table, expected {kind!r}",
        )
    required, optional = REQUIRED_FIELDS[kind], OPTIONAL_FIELDS[kind]
    contract = {f.name: f for f in required + optional}
    names = schema.names
    for name in names:
        if names.count(name) > 1:
            raise ValidationError(file, name, None, "column appears more than once")
        if name not in contract:
            raise ValidationError(
                file,
                name,
                None,
                f"column is not part of the {kind} contract (columns: {', '.join(contract)}); "
                "drop it before validating, or propose adding it to the contract",
            )
    for f in required:
        if f.name not in names:
            raise ValidationError(file, f.name, None, f"required column is missing (expected type {f.type})")
    present = [f for f in required + optional if f.name in names]
    for f in present:
        found = schema.field(f.name).type
        if pa.types.is_timestamp(found) and found.tz is None:
            raise ValidationError(
                file,
                f.name,
                None,
                f"timestamp has no time zone ({found}); naive timestamps are ambiguous. If the values are UTC, "
                "declare it before writing: pyarrow.compute.assume_timezone(col, 'UTC') or pandas "
                "Series.dt.tz_localize('UTC')",
            )
        if not (_accepts(found, f.type, f.name) or (pa.types.is_null(found) and f.nullable)):
            raise ValidationError(file, f.name, None, f"column has type {found}, {_expected_text(f)}")
    return present


def _cast(arr: pa.Array, target: pa.DataType, file: str, column: str, row_offset: int) -> pa.Array:
    """Lossless cast to ``target`` (Arrow's safe cast); a lossy one raises naming the column (and row)."""
    if arr.type == target:
        return arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    try:
        return arr.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        if pa.types.is_timestamp(arr.type) and arr.type.unit == "ns":
            sub_us = _values(arr.cast(pa.int64()), 0) % 1000 != 0
            if sub_us.any():
                raise ValidationError(
                    file,
                    column,
                    row_offset + int(np.argmax(sub_us)),
                    "timestamp has sub-microsecond precision; the contract stores microseconds, so truncate "
                    "explicitly (pyarrow.compute.floor_temporal(col, unit='microsecond')) before writing",
                ) from e
        raise ValidationError(
            file, column, None, f"cannot convert {arr.type} to {target} losslessly: {e}"
        ) from e


# --- array helpers ----------------------------------------------------------------------------------


def _nulls(arr: pa.Array) -> np.ndarray:
    """(n,) bool, True where ``arr`` is null."""
    if arr.null_count == 0:
        return np.zeros(len(arr), dtype=bool)
    return arr.is_null().to_numpy(zero_copy_only=False)


def _values(arr: pa.Array, fill) -> np.ndarray:
    """(n,) numpy values of a primitive array, nulls replaced by ``fill`` (their own check reports them)."""
    if arr.null_count:
        arr = pc.fill_null(arr, fill)
    return arr.to_numpy(zero_copy_only=False)


@dataclass
class _List:
    """A list column taken apart: ``flat`` holds the values of the non-null rows in row order.

    null, lengths, starts: (n,) per row (lengths 0 on null rows, starts index into flat);
    flat: (m,) pyarrow array, m = lengths.sum().
    """

    null: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray
    flat: pa.Array

    @classmethod
    def of(cls, arr: pa.Array) -> _List:
        lengths = _values(pc.list_value_length(arr), 0).astype(np.int64)
        starts = np.zeros(len(arr), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        flat = pc.list_flatten(arr)  # skips null rows, honours slicing
        return cls(_nulls(arr), lengths, starts, flat)

    def per_value(self, row_values: np.ndarray) -> np.ndarray:
        """(m,) the per-row ``row_values`` (n,) repeated for each value of the row."""
        return np.repeat(row_values, self.lengths)

    def row_of(self, flat_index: np.ndarray) -> np.ndarray:
        """Row of each flat index (searching the row ends: cheap when few values are asked about)."""
        return np.searchsorted(self.starts + self.lengths, flat_index, side="right")

    def rows(self, flat_mask: np.ndarray) -> np.ndarray:
        """(n,) bool: rows having at least one flat value where ``flat_mask`` (m,) is True."""
        out = np.zeros(len(self.lengths), dtype=bool)
        out[self.row_of(np.flatnonzero(flat_mask))] = True
        return out

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(n,) float64 per-row sums of the flat ``values`` (m,); 0 for empty and null rows."""
        out = np.zeros(len(self.lengths))
        nonempty = np.flatnonzero(self.lengths)
        if nonempty.size:  # reduceat over strictly increasing starts: each segment runs to the next start
            out[nonempty] = np.add.reduceat(values.astype(np.float64), self.starts[nonempty])
        return out

    def first(self, row: int, flat_mask: np.ndarray) -> int:
        """Flat index of the first value of ``row`` where ``flat_mask`` is True."""
        start = self.starts[row]
        return int(start + np.argmax(flat_mask[start : start + self.lengths[row]]))


def _earlier_duplicate(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n,) int64: for each later occurrence of a key, the position of its first occurrence; else -1.

    keys: (n,) integers; rows where ``valid`` (n,) is False take no part. Stable sort keeps first = earliest.
    """
    out = np.full(len(keys), -1, dtype=np.int64)
    pos = np.flatnonzero(valid)
    if pos.size < 2:
        return out
    order = np.argsort(keys[pos], kind="stable")
    sorted_keys = keys[pos][order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first_of = np.empty(len(order), dtype=np.int64)
    first_of[order] = pos[order][new][np.cumsum(new) - 1]
    later = first_of != pos
    out[pos[later]] = first_of[later]
    return out


def _rows_with_repeats(lst: _List, values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """(n,) bool: eligible rows whose list holds a value twice. values: (m,) int64 flat values.

    Rows of each length L (at most MAX_CANDIDATES distinct lengths) are gathered into an (rows, L) matrix,
    in blocks to bound memory, sorted along axis 1, and adjacent equal values looked for.
    """
    out = np.zeros(len(lst.lengths), dtype=bool)
    candidates = eligible & (lst.lengths > 1)
    for width in np.unique(lst.lengths[candidates]):
        rows = np.flatnonzero(candidates & (lst.lengths == width))
        block = max(1, (1 << 22) // int(width))
        for a in range(0, rows.size, block):
            r = rows[a : a + block]
            if r[-1] - r[0] + 1 == r.size:  # consecutive rows of one width: one contiguous run of values
                start = lst.starts[r[0]]
                mat = values[start : start + r.size * width].reshape(r.size, width)
            else:
                mat = values[lst.starts[r][:, None] + np.arange(width)]
            mat = np.sort(mat, axis=1)
            out[r[(mat[:, 1:] == mat[:, :-1]).any(axis=1)]] = True
    return out


class _IdIndex:
    """Id lookup through Arrow's hash table. ids: (k,) int64 unique; payload: (k,) int64 aligned values."""

    def __init__(self, ids: np.ndarray, payload: np.ndarray | None = None):
        self.ids = pa.array(np.asarray(ids, dtype=np.int64))
        self.payload = None if payload is None else np.asarray(payload, dtype=np.int64)

    def find(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (m,) bool, index (m,) int64 into ids, valid where found)."""
        index = pc.index_in(pa.array(values, pa.int64()), value_set=self.ids)
        return ~_nulls(index), _values(index, 0).astype(np.int64)


# --- row-level checks -------------------------------------------------------------------------------


@dataclass
class _Problem:
    """One row-level check: rows (n,) bool marks the failing rows; detail(i) describes row i's failure."""

    column: str
    reason: str  # stable category: counted, and written to the quarantine `reason` column
    rows: np.ndarray
    detail: Callable[[int], str]


@dataclass
class _Context:
    """What the checks of one file need beyond its own columns; widths found in one batch carry to the next."""

    file: str
    kind: str
    images: _IdIndex | None = None  # known image ids, payload = their title ids (or None)
    titles: _IdIndex | None = None  # known title ids
    widths: dict[str, int] = field(default_factory=dict)  # list column -> required length
    widths_given: frozenset[str] = frozenset()  # widths the caller fixed (others were inferred)


def _not_null(cols: dict[str, pa.Array], name: str) -> Iterator[_Problem]:
    yield _Problem(name, f"{name} is null", _nulls(cols[name]), lambda i: f"{name} is null (not allowed)")


def _timestamp_range(cols: dict[str, pa.Array], name: str) -> _Problem:
    """Timestamps from 1970 up to 2262 (the contract's range): outside it a unit was mixed up."""
    us = _values(cols[name].cast(pa.int64()), MIN_TIMESTAMP_US)
    bad = (us < MIN_TIMESTAMP_US) | (us >= MAX_TIMESTAMP_US)
    return _Problem(
        name,
        f"{name} is outside 1970..2261",
        bad,
        lambda i: (
            f"{name} {np.datetime64(int(us[i]), 'us')} is outside 1970-01-01..2261-12-31 (UTC); check the unit "
            "it was written in (seconds, milliseconds, microseconds or nanoseconds)"
        ),
    )


def _finite(name: str, values: np.ndarray, null: np.ndarray) -> _Problem:
    bad = ~np.isfinite(values) & ~null
    return _Problem(
        name, f"{name} is NaN or infinite", bad, lambda i: f"{name} is {values[i]} (must be finite)"
    )


def _list_entries(name: str, lst: _List, *, numeric: bool) -> Iterator[_Problem]:
    """Null entries inside a list, and NaN/inf entries of float lists."""
    flat_null = _nulls(lst.flat)
    yield _Problem(
        name,
        f"{name} contains a null entry",
        lst.rows(flat_null),
        lambda i: f"{name} has a null at position {lst.first(i, flat_null) - lst.starts[i]}",
    )
    if numeric and pa.types.is_floating(lst.flat.type):
        flat = _values(lst.flat, 0.0)
        bad = ~np.isfinite(flat)
        yield _Problem(
            name,
            f"{name} contains NaN or infinity",
            lst.rows(bad),
            lambda i: f"{name} has {flat[lst.first(i, bad)]} at position {lst.first(i, bad) - lst.starts[i]}",
        )


def _width(name: str, lst: _List, ctx: _Context, row_offset: int) -> Iterator[_Problem]:
    """Every non-null row of a list column must have the same length.

    A width the caller gave makes odd rows row-level problems; an inferred width (from the first non-null
    row seen) makes them a table-level error, since which rows are the odd ones is then a guess.
    """
    have = np.flatnonzero(~lst.null)
    if name not in ctx.widths:
        if have.size == 0:
            return
        ctx.widths[name] = int(lst.lengths[have[0]])
        if ctx.widths[name] == 0:
            raise ValidationError(ctx.file, name, row_offset + int(have[0]), f"{name} is empty")
    width = ctx.widths[name]
    bad = ~lst.null & (lst.lengths != width)
    if name in ctx.widths_given:
        yield _Problem(
            name,
            f"{name} has the wrong length",
            bad,
            lambda i: f"{name} has {lst.lengths[i]} values, expected {width}",
        )
    elif bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(
            ctx.file,
            name,
            row_offset + i,
            f"{name} has {lst.lengths[i]} values but earlier rows have {width}; every row must have the same "
            f"length (give the expected length explicitly to quarantine the odd rows instead)",
        )


def _impression_checks(
    cols: dict[str, pa.Array], ctx: _Context, row_offset: int, dup_first: np.ndarray | None, locate
) -> Iterator[_Problem]:
    n = len(cols["request_id"])
    rid = cols["request_id"]
    yield from _not_null(cols, "request_id")
    yield _Problem(
        "request_id",
        "request_id is empty",
        _values(pc.binary_length(rid), 1) == 0,
        lambda i: "request_id is the empty string",
    )
    if dup_first is not None:
        yield _Problem(
            "request_id",
            "request_id is duplicated",
            dup_first >= 0,
            lambda i: f"request_id {rid[i].as_py()!r} already appears at {locate(int(dup_first[i]))}",
        )
    for name in ("timestamp", "member_id", "title_id"):
        yield from _not_null(cols, name)
    yield _timestamp_range(cols, "timestamp")

    # candidates: 1..MAX_CANDIDATES unique known ids of the impression's title
    cand = _List.of(cols["candidate_image_ids"])
    yield from _not_null(cols, "candidate_image_ids")
    yield _Problem(
        "candidate_image_ids",
        "candidate_image_ids is empty",
        ~cand.null & (cand.lengths == 0),
        lambda i: "candidate_image_ids is empty",
    )
    yield _Problem(
        "candidate_image_ids",
        f"more than {MAX_CANDIDATES} candidates",
        cand.lengths > MAX_CANDIDATES,
        lambda i: f"{cand.lengths[i]} candidates, at most {MAX_CANDIDATES} allowed",
    )
    cand_null = _nulls(cand.flat)
    yield from _list_entries("candidate_image_ids", cand, numeric=False)
    cand_ids = _values(cand.flat, 0)
    yield _Problem(
        "candidate_image_ids",
        "candidate_image_ids has duplicates",
        _rows_with_repeats(cand, cand_ids, cand.lengths <= MAX_CANDIDATES),
        lambda i: (
            f"candidate_image_ids repeats an image id: {cand.flat[cand.starts[i] : cand.starts[i] + cand.lengths[i]].to_pylist()}"
        ),
    )
    title_null = _nulls(cols["title_id"])
    title = _values(cols["title_id"], 0)
    if ctx.images is not None:
        found, pos = ctx.images.find(cand_ids)
        unknown = ~found & ~cand_null
        yield _Problem(
            "candidate_image_ids",
            "candidate image id not in the images table",
            cand.rows(unknown),
            lambda i: f"candidate image id {cand_ids[cand.first(i, unknown)]} is not in the images table",
        )
        if ctx.images.payload is not None:
            # pos is 0 where not found: an empty index (every image quarantined) still needs a row to read
            image_title = ctx.images.payload[pos] if len(ctx.images.payload) else np.zeros(len(pos), np.int64)
            other = found & (image_title != cand.per_value(title))
            if title_null.any():  # a null title is reported by its own check
                other &= ~cand.per_value(title_null)
            yield _Problem(
                "candidate_image_ids",
                "candidate image belongs to another title",
                cand.rows(other),
                lambda i: (
                    f"candidate image {cand_ids[cand.first(i, other)]} belongs to title "
                    f"{image_title[cand.first(i, other)]}, not to this impression's title {title[i]}"
                ),
            )

    chosen_null = _nulls(cols["chosen_image_id"])
    chosen = _values(cols["chosen_image_id"], 0)
    yield from _not_null(cols, "chosen_image_id")
    is_chosen = (cand_ids == cand.per_value(chosen)) & ~cand_null  # (m,) flat positions of the chosen image
    yield _Problem(
        "chosen_image_id",
        "chosen_image_id is not among the candidates",
        ~chosen_null & ~cand.null & ~cand.rows(is_chosen),
        lambda i: f"chosen_image_id {chosen[i]} is not among candidate_image_ids",
    )

    p_null = _nulls(cols["propensity"])
    p = _values(cols["propensity"], 1.0)
    yield from _not_null(cols, "propensity")
    yield _finite("propensity", p, p_null)
    yield _Problem(
        "propensity",
        "propensity is outside (0, 1]",
        np.isfinite(p) & ((p <= 0) | (p > 1)),
        lambda i: f"propensity {p[i]} is outside (0, 1]",
    )
    yield _Problem(
        "propensity",
        f"propensity is below {MIN_PROPENSITY:g}",
        np.isfinite(p) & (p > 0) & (p < MIN_PROPENSITY),
        lambda i: (
            f"propensity {p[i]:.3g} is below the contract's floor {MIN_PROPENSITY:g} (an importance weight over "
            f"{1 / MIN_PROPENSITY:.0e}); drop the row or log the propensity the policy really had"
        ),
    )
    r_null = _nulls(cols["reward"])  # null reward is allowed: the attribution window is still open
    r = _values(cols["reward"], 0.0)
    yield _finite("reward", r, r_null)
    yield _Problem(
        "reward",
        "reward is outside [0, 1]",
        np.isfinite(r) & ((r < 0) | (r > 1)),
        lambda i: f"reward {r[i]} is outside [0, 1]",
    )

    played = _List.of(cols["played_title_ids"])
    yield from _not_null(cols, "played_title_ids")
    yield from _list_entries("played_title_ids", played, numeric=False)
    yield _Problem(
        "played_title_ids",
        f"more than {MAX_HISTORY} played titles",
        played.lengths > MAX_HISTORY,
        lambda i: f"{played.lengths[i]} played titles, at most {MAX_HISTORY} allowed",
    )
    for name in ("country", "language", "device"):
        yield from _not_null(cols, name)
    for name, top in (("hour", 23), ("weekday", 6)):
        v = _values(cols[name], 0)
        yield from _not_null(cols, name)
        yield _Problem(
            name,
            f"{name} is outside 0..{top}",
            (v < 0) | (v > top),
            lambda i, v=v, name=name, top=top: f"{name} {v[i]} is outside 0..{top}",
        )
    yield from _not_null(cols, "recommender_score")
    yield _finite(
        "recommender_score", _values(cols["recommender_score"], 0.0), _nulls(cols["recommender_score"])
    )
    yield from _not_null(cols, "prior_interaction")

    if "action_dist" in cols:  # optional column; null rows allowed
        ad = _List.of(cols["action_dist"])
        yield from _list_entries("action_dist", ad, numeric=True)
        ad_values = _values(ad.flat, 0.0)
        negative = ad_values < 0
        yield _Problem(
            "action_dist",
            "action_dist has a negative entry",
            ad.rows(negative),
            lambda i: (
                f"action_dist has {ad_values[ad.first(i, negative)]} at position {ad.first(i, negative) - ad.starts[i]}"
            ),
        )
        aligned = ~ad.null & ~cand.null & (ad.lengths == cand.lengths)
        yield _Problem(
            "action_dist",
            "action_dist and candidate_image_ids differ in length",
            ~ad.null & ~cand.null & ~aligned,
            lambda i: f"action_dist has {ad.lengths[i]} entries for {cand.lengths[i]} candidates",
        )
        sums = ad.sums(ad_values)
        yield _Problem(
            "action_dist",
            f"action_dist does not sum to 1 (tolerance {PROBABILITY_TOL:g})",
            ~ad.null & (ad.lengths > 0) & ~(np.abs(sums - 1.0) <= PROBABILITY_TOL),
            lambda i: f"action_dist sums to {sums[i]}, not 1 (tolerance {PROBABILITY_TOL:g})",
        )
        # entry at the chosen position vs propensity; only on rows where both lists line up
        at = np.flatnonzero(is_chosen)
        row_of = cand.row_of(at)
        ok = aligned[row_of]
        at, row_of = at[ok], row_of[ok]
        entry = ad_values[ad.starts[row_of] + (at - cand.starts[row_of])]
        off = np.zeros(n, dtype=bool)
        off[row_of[~(np.abs(entry - p[row_of]) <= PROBABILITY_TOL)]] = True
        off &= ~p_null
        chosen_entry = np.full(n, np.nan)
        chosen_entry[row_of] = entry
        yield _Problem(
            "action_dist",
            "action_dist disagrees with propensity at the chosen image",
            off,
            lambda i: f"action_dist gives the chosen image {chosen_entry[i]} but propensity is {p[i]}",
        )
    if "member_features" in cols:
        mf = _List.of(cols["member_features"])
        yield from _list_entries("member_features", mf, numeric=True)
        yield from _width("member_features", mf, ctx, row_offset)
    if "propensity_kind" in cols:  # null allowed (unknown); otherwise non-empty, MC kinds name their samples
        kind = cols["propensity_kind"]
        yield _Problem(
            "propensity_kind",
            "propensity_kind is empty",
            _values(pc.binary_length(kind), 1) == 0,
            lambda i: "propensity_kind is the empty string",
        )
        malformed = _values(pc.starts_with(kind, MC_PREFIX), False) & ~_values(
            pc.match_substring_regex(kind, MC_PATTERN), True
        )
        yield _Problem(
            "propensity_kind",
            "propensity_kind is not mc_estimate:<samples>",
            malformed,
            lambda i: f"propensity_kind {kind[i].as_py()!r} is not {MC_PREFIX}<samples> with samples >= 1",
        )
    if "logging_policy" in cols:  # null allowed (unknown); a name is never empty
        yield _Problem(
            "logging_policy",
            "logging_policy is empty",
            _values(pc.binary_length(cols["logging_policy"]), 1) == 0,
            lambda i: "logging_policy is the empty string",
        )


def _key_checks(cols: dict[str, pa.Array], name: str, locate) -> Iterator[_Problem]:
    """Non-null unique int64 key (image_id, title_id of titles)."""
    null = _nulls(cols[name])
    keys = _values(cols[name], 0)
    yield from _not_null(cols, name)
    first = _earlier_duplicate(keys, ~null)
    yield _Problem(
        name,
        f"{name} is duplicated",
        first >= 0,
        lambda i: f"{name} {keys[i]} already appears at {locate(first[i])}",
    )


def _image_checks(cols: dict[str, pa.Array], ctx: _Context, row_offset: int, locate) -> Iterator[_Problem]:
    yield from _key_checks(cols, "image_id", locate)
    if "launched_at" in cols:
        yield _timestamp_range(cols, "launched_at")
    yield from _not_null(cols, "title_id")
    if ctx.titles is not None:
        title = _values(cols["title_id"], 0)
        unknown = ~ctx.titles.find(title)[0] & ~_nulls(cols["title_id"])
        yield _Problem(
            "title_id",
            "title_id not in the titles table",
            unknown,
            lambda i: f"title_id {title[i]} is not in the titles table",
        )
    emb = _List.of(cols["embedding"])
    yield from _not_null(cols, "embedding")
    yield from _list_entries("embedding", emb, numeric=True)
    yield from _width("embedding", emb, ctx, row_offset)


def _title_checks(cols: dict[str, pa.Array], ctx: _Context, row_offset: int, locate) -> Iterator[_Problem]:
    yield from _key_checks(cols, "title_id", locate)
    if "launched_at" in cols:
        yield _timestamp_range(cols, "launched_at")
    genres = _List.of(cols["genres"])  # an empty list is allowed: a title may have no genre
    yield from _not_null(cols, "genres")
    yield from _list_entries("genres", genres, numeric=False)


# --- validating one batch ---------------------------------------------------------------------------


@dataclass
class _BatchResult:
    """bad: (b,) int64 batch-local bad rows; problem: (b,) index into ``problems`` of each one's first problem."""

    cols: dict[str, pa.Array]
    problems: list[_Problem]
    bad: np.ndarray
    problem: np.ndarray


def _validate_batch(
    batch: pa.Table | pa.RecordBatch,
    fields: list[pa.Field],
    ctx: _Context,
    *,
    row_offset: int,
    strict: bool,
    dup_first: np.ndarray | None = None,
    locate: Callable[[int], str] | None = None,
) -> _BatchResult:
    """Run every row-level check on ``batch`` (columns already conformed to ``fields``' contract)."""
    cols = {}
    for f in fields:
        arr = batch.column(f.name)
        if isinstance(arr, pa.ChunkedArray):  # combine_chunks copies even a single chunk
            arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
        cols[f.name] = _cast(arr, _check_type(f), ctx.file, f.name, row_offset)
    if locate is None:

        def locate(pos: int) -> str:
            return f"row {row_offset + pos}"

    if ctx.kind == "impressions":
        problems = list(_impression_checks(cols, ctx, row_offset, dup_first, locate))
    elif ctx.kind == "images":
        problems = list(_image_checks(cols, ctx, row_offset, locate))
    else:
        problems = list(_title_checks(cols, ctx, row_offset, locate))
    first = np.full(batch.num_rows, -1, dtype=np.int32)  # first failing check of each row
    for k, prob in enumerate(problems):
        if prob.rows.any():
            first[prob.rows & (first < 0)] = k
    bad = np.flatnonzero(first >= 0)
    if strict and bad.size:
        i = int(bad[0])
        prob = problems[first[i]]
        request_id = cols["request_id"][i].as_py() if ctx.kind == "impressions" else None
        raise ValidationError(ctx.file, prob.column, row_offset + i, prob.detail(i), request_id)
    return _BatchResult(cols, problems, bad, first[bad])


def _quarantine_rows(raw: pa.Table, result: _BatchResult, row_offset: int) -> pa.Table:
    """The bad rows as read, plus reason, column and row (0-based within the file)."""
    reasons = pa.array([p.reason for p in result.problems], pa.string())
    columns = pa.array([p.column for p in result.problems], pa.string())
    which = pa.array(result.problem)
    out = raw.take(pa.array(result.bad))
    out = out.append_column("reason", reasons.take(which))
    out = out.append_column("column", columns.take(which))
    return out.append_column("row", pa.array(result.bad + row_offset, pa.int64()))


def _output_fields(kind: str, fields: list[pa.Field], widths: dict[str, int]) -> list[pa.Field]:
    """Contract fields as stored: hour/weekday int8, embedding a fixed-size list of the dataset's width."""
    out = []
    for f in fields:
        if kind == "images" and f.name == "embedding" and "embedding" in widths:
            f = pa.field("embedding", pa.list_(pa.float32(), widths["embedding"]), nullable=False)
        out.append(f)
    return out


def _kept_table(result: _BatchResult, kind: str, fields: list[pa.Field], widths: dict[str, int]) -> pa.Table:
    """Good rows, cast to the contract's stored types (lossless: every value was range-checked)."""
    keep = np.ones(len(next(iter(result.cols.values()))), dtype=bool)
    keep[result.bad] = False
    mask = pa.array(keep)
    out_fields = _output_fields(kind, fields, widths)
    cols = result.cols if keep.all() else {name: col.filter(mask) for name, col in result.cols.items()}
    arrays = [cols[f.name].cast(f.type, safe=True) for f in out_fields]
    meta = {METADATA_VERSION_KEY: SCHEMA_VERSION.encode(), METADATA_TABLE_KEY: kind.encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(out_fields, metadata=meta))


def _request_id_duplicates(ids: pa.ChunkedArray, file: str) -> np.ndarray:
    """(n,) int64: position of the first occurrence for every repeated request id, else -1 (nulls: -1)."""
    ids = pa.chunked_array(
        [_cast(c, pa.large_string(), file, "request_id", 0) for c in ids.chunks], pa.large_string()
    )
    encoded = pc.dictionary_encode(ids)  # one dictionary across chunks, so codes are comparable
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    codes = np.concatenate(
        [np.zeros(0, dtype=np.int64)] + [_values(c.indices, -1).astype(np.int64) for c in chunks]
    )
    return _earlier_duplicate(codes, codes >= 0)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _context(
    kind: str,
    file: str,
    known_image_ids: np.ndarray | None,
    image_title_ids: np.ndarray | None,
    known_title_ids: np.ndarray | None,
    embedding_dim: int | None,
    member_features_dim: int | None,
) -> _Context:
    if kind not in TABLE_KINDS:
        raise ValueError(f"kind must be one of {TABLE_KINDS}, got {kind!r}")
    if (known_image_ids is not None or member_features_dim is not None) and kind != "impressions":
        raise ValueError("known_image_ids and member_features_dim apply to impressions tables only")
    if (known_title_ids is not None or embedding_dim is not None) and kind != "images":
        raise ValueError("known_title_ids and embedding_dim apply to images tables only")
    if image_title_ids is not None and (
        known_image_ids is None or np.shape(image_title_ids) != np.shape(known_image_ids)
    ):
        raise ValueError("image_title_ids must be given with known_image_ids and have the same shape")
    widths = {}
    for name, width in (("embedding", embedding_dim), ("member_features", member_features_dim)):
        if width is not None:
            if width < 1:
                raise ValueError(f"{name} length must be >= 1, got {width}")
            widths[name] = int(width)
    return _Context(
        file=file,
        kind=kind,
        images=None if known_image_ids is None else _IdIndex(known_image_ids, image_title_ids),
        titles=None if known_title_ids is None else _IdIndex(known_title_ids),
        widths=widths,
        widths_given=frozenset(widths),
    )


def validate_table(
    table: pa.Table,
    kind: str,
    *,
    file: str = "<table>",
    mode: str = "strict",
    known_image_ids: np.ndarray | None = None,
    image_title_ids: np.ndarray | None = None,
    known_title_ids: np.ndarray | None = None,
    embedding_dim: int | None = None,
    member_features_dim: int | None = None,
) -> ValidationReport:
    """Validate one in-memory table of ``kind`` ("impressions", "images" or "titles").

    known_image_ids: (k,) int64 image ids the candidates must come from (impressions); with
    image_title_ids (k,) int64, their titles, every candidate must belong to the impression's title.
    known_title_ids: (t,) int64 title ids the images' title_id must come from (images).
    embedding_dim / member_features_dim: required list lengths; rows of another length are row-level problems.
    Without them the first row sets the length and a row that differs raises (table-level).
    Request ids (impressions) and image/title ids must be unique within the table; the first occurrence is
    kept, later ones are the bad rows. ``file`` names the table in messages.
    """
    _check_mode(mode)
    ctx = _context(
        kind, file, known_image_ids, image_title_ids, known_title_ids, embedding_dim, member_features_dim
    )
    fields = _conform_schema(table.schema, kind, file)
    dup_first = _request_id_duplicates(table.column("request_id"), file) if kind == "impressions" else None
    result = _validate_batch(table, fields, ctx, row_offset=0, strict=mode == "strict", dup_first=dup_first)
    report = ValidationReport(file=file, kind=kind, rows_read=table.num_rows)
    report.kept = _kept_table(result, kind, fields, ctx.widths)
    report.quarantined = _quarantine_rows(table, result, 0)
    _count(report, result)
    return report


def _count(report: ValidationReport, result: _BatchResult) -> None:
    counts = np.bincount(result.problem, minlength=len(result.problems))
    report.reasons.update({p.reason: int(c) for p, c in zip(result.problems, counts, strict=True) if c})
    report.rows_quarantined += int(result.bad.size)
    report.rows_kept = report.rows_read - report.rows_quarantined


# --- datasets ---------------------------------------------------------------------------------------


def _impression_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(files read, files skipped) under <root>/impressions, a file or a (hive-partitioned) folder.

    The files read are exactly those the readers in `deepbandit.data.io` read (``*.parquet``, no part of the
    path starting with '.' or '_'), so what passes validation is what training sees. The others are returned
    that are not hidden, so that the report can list them rather than pass over them in silence.
    """
    base = root / IMPRESSIONS_DIR
    try:
        files = list_parquet_files(base)
    except FileNotFoundError as e:
        raise ValidationError(IMPRESSIONS_DIR, None, None, str(e)) from e
    skipped = []
    if base.is_dir():  # hidden names (temporary files, _SUCCESS markers) are skipped by design, not listed
        visible = {p for p in base.rglob("*") if p.is_file() and not _hidden(p.relative_to(base))}
        skipped = sorted(visible - set(files))
    return files, skipped


def _hidden(rel: Path) -> bool:
    return any(part.startswith(IGNORED_PREFIXES) for part in rel.parts)


def _open(path: Path, rel: str) -> pq.ParquetFile:
    if not path.is_file():
        raise ValidationError(rel, None, None, f"file not found: {path}")
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise ValidationError(
            rel, None, None, f"unreadable Parquet file (truncated or not Parquet): {e}"
        ) from e


def _read_batches(pf: pq.ParquetFile, rel: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    rows = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size):
            yield batch
            rows += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise ValidationError(rel, None, None, f"unreadable Parquet data after row {rows}: {e}") from e


def _drift(schema: pa.Schema, reference: pa.Schema, rel: str, ref_rel: str) -> None:
    """Raise if ``schema`` differs from the reference file's in columns or physical types."""
    for name in dict.fromkeys(reference.names + schema.names):
        if name not in schema.names:
            raise ValidationError(
                rel, name, None, f"schema drift: column missing here but present in {ref_rel}"
            )
        if name not in reference.names:
            raise ValidationError(rel, name, None, f"schema drift: column present here but not in {ref_rel}")
        a, b = schema.field(name).type, reference.field(name).type
        if a != b:
            raise ValidationError(rel, name, None, f"schema drift: type {a} here but {b} in {ref_rel}")


def validate_dataset(
    root: str | os.PathLike,
    mode: str = "strict",
    quarantine_dir: str | os.PathLike | None = None,
    *,
    embedding_dim: int | None = None,
    member_features_dim: int | None = None,
    batch_size: int = 1 << 18,
    progress: bool = False,
) -> DatasetReport:
    """Validate a dataset directory: titles.parquet, images.parquet, then every impressions file.

    Titles are validated first, then images (their title_id must be a kept title), then impressions (their
    candidates must be kept images of the impression's title). Impression files are read batch by batch
    (``batch_size`` rows) so memory stays bounded; only the request ids of the whole dataset are held, to find
    duplicates across files (the first occurrence in file order is kept). Before any row is read, every file's
    schema is checked against the contract and the impression files against each other (schema drift).

    In quarantine mode the bad rows of ``<root>/<file>`` go to ``<quarantine_dir>/<file>.quarantine.parquet``
    (files without bad rows get none, and a stale one from an earlier run is removed).
    """
    _check_mode(mode)
    root = Path(root)
    if mode == "quarantine" and quarantine_dir is None:
        raise ConfigError("quarantine mode needs a quarantine_dir")
    if quarantine_dir is not None:
        # the rows set aside must never become part of the dataset they were taken from (nor overwrite it)
        q, data = Path(quarantine_dir).resolve(), root.resolve()
        if q.is_relative_to(data):
            raise ConfigError(
                f"quarantine_dir {quarantine_dir} lies inside the dataset {root}: put it outside the dataset "
                "folder, so that its files are never read or validated as part of the data"
            )
    strict = mode == "strict"

    # 0. a dataset its writer did not finish, or whose files changed since, is refused as a whole
    try:
        check_dataset_record(root, hashes=True)
    except DataError as e:
        raise ValidationError(DATASET_RECORD_FILE, None, None, str(e)) from e
    # every footer and schema before any data: unreadable files and drift fail fast
    imp_files, skipped = _impression_files(root)
    try:  # the reader's rule, so that what validates is what reads
        check_partition_keys(imp_files, root / IMPRESSIONS_DIR, "impressions")
    except DataError as e:
        raise ValidationError(IMPRESSIONS_DIR, None, None, str(e)) from e
    files = {"titles": [root / TITLES_FILE], "images": [root / IMAGES_FILE], "impressions": imp_files}
    rel = {p: p.relative_to(root).as_posix() for paths in files.values() for p in paths}
    fields: dict[Path, list[pa.Field]] = {}
    n_rows: dict[Path, int] = {}
    reference: tuple[pa.Schema, str] | None = None
    for kind, paths in files.items():
        for path in paths:
            pf = _open(path, rel[path])
            schema = pf.schema_arrow
            fields[path] = _conform_schema(schema, kind, rel[path])
            n_rows[path] = pf.metadata.num_rows
            if kind == "impressions":
                if reference is None:
                    reference = (schema, rel[path])
                else:
                    _drift(schema, reference[0], rel[path], reference[1])
            pf.close()

    reports: list[ValidationReport] = []

    def finish(path: Path, report: ValidationReport, bad: list[pa.Table]) -> None:
        assert report.rows_read == report.rows_kept + report.rows_quarantined, report
        if not strict:
            out = Path(quarantine_dir) / (rel[path] + QUARANTINE_SUFFIX)
            if report.rows_quarantined:
                report.quarantine_path = write_parquet_atomic(pa.concat_tables(bad), out)
            else:
                out.unlink(missing_ok=True)
        reports.append(report)

    def whole_file(path: Path, kind: str, ctx: _Context) -> _BatchResult:
        pf = _open(path, rel[path])
        table = pa.Table.from_batches(list(_read_batches(pf, rel[path], batch_size)), schema=pf.schema_arrow)
        pf.close()
        result = _validate_batch(table, fields[path], ctx, row_offset=0, strict=strict)
        report = ValidationReport(rel[path], kind, rows_read=table.num_rows)
        _count(report, result)
        finish(path, report, [_quarantine_rows(table, result, 0)])
        return result

    # 1. titles, then images checked against the kept titles
    titles_path, images_path = files["titles"][0], files["images"][0]
    res = whole_file(
        titles_path, "titles", _context("titles", rel[titles_path], None, None, None, None, None)
    )
    kept = np.ones(len(res.cols["title_id"]), dtype=bool)
    kept[res.bad] = False
    title_ids = _values(res.cols["title_id"], 0)[kept]
    res = whole_file(
        images_path,
        "images",
        _context("images", rel[images_path], None, None, title_ids, embedding_dim, None),
    )
    kept = np.ones(len(res.cols["image_id"]), dtype=bool)
    kept[res.bad] = False
    images = _IdIndex(_values(res.cols["image_id"], 0)[kept], _values(res.cols["title_id"], 0)[kept])

    # 2. request ids of every impressions file, for duplicates across the dataset
    imp_paths = files["impressions"]
    ids = []
    for path in imp_paths:
        try:
            col = pq.read_table(path, columns=["request_id"], page_checksum_verification=True).column(
                "request_id"
            )
        except (pa.ArrowException, OSError) as e:
            raise ValidationError(rel[path], "request_id", None, f"unreadable Parquet data: {e}") from e
        ids += [_cast(c, pa.large_string(), rel[path], "request_id", 0) for c in col.chunks]
    starts = np.cumsum([0] + [n_rows[p] for p in imp_paths])
    dup_first = _request_id_duplicates(pa.chunked_array(ids, pa.large_string()), IMPRESSIONS_DIR)

    def locate(pos: int) -> str:
        k = int(np.searchsorted(starts, pos, side="right") - 1)
        return f"{rel[imp_paths[k]]} row {pos - starts[k]}"

    # 3. impressions, batch by batch; the member_features width found in one file binds the next
    widths = {} if member_features_dim is None else {"member_features": member_features_dim}
    with _Progress(progress, int(starts[-1])) as bar:
        for k, path in enumerate(imp_paths):
            ctx = _context("impressions", rel[path], None, None, None, None, member_features_dim)
            ctx.images, ctx.widths = images, widths
            report = ValidationReport(rel[path], "impressions")
            bad: list[pa.Table] = []
            pf = _open(path, rel[path])
            for batch in _read_batches(pf, rel[path], batch_size):
                offset = report.rows_read
                first = dup_first[starts[k] + offset : starts[k] + offset + batch.num_rows]
                result = _validate_batch(
                    batch, fields[path], ctx, row_offset=offset, strict=strict, dup_first=first, locate=locate
                )
                report.rows_read += batch.num_rows
                _count(report, result)
                if result.bad.size:
                    bad.append(_quarantine_rows(pa.Table.from_batches([batch]), result, offset))
                bar.advance(batch.num_rows)
            pf.close()
            if report.rows_read != n_rows[path]:
                raise ValidationError(
                    rel[path],
                    None,
                    None,
                    f"read {report.rows_read} rows but the footer promises {n_rows[path]}",
                )
            finish(path, report, bad)
    return DatasetReport(root, mode, reports, [p.relative_to(root).as_posix() for p in skipped])


def gate_dataset(root: str | os.PathLike, *, validate: bool = True, progress: bool = False) -> None:
    """The one gate every command that reads logs passes (train, evaluate, the pipeline, sweeps).

    With ``validate`` it is ``deepbandit validate``'s strict mode exactly, so a command accepts what
    validation accepts. Without it (``data.validate=false``, for logs validated before) a dataset whose
    writer did not finish, or whose files changed since, is still refused. Either way the readers
    (``deepbandit.data.io``) then normalise the accepted physical variants to the contract's types.

    Raises:
        ValidationError: the first problem, naming file, column, row and request.
        DataError: an incomplete or changed dataset (without ``validate``).
    """
    if validate:
        validate_dataset(root, mode="strict", progress=progress)
    else:
        check_dataset_record(root)


class _Progress:
    """A transient rich progress bar over impression rows on a terminal, or nothing."""

    def __init__(self, show: bool, total: int):
        self._show, self._total = show, total

    def __enter__(self) -> _Progress:
        self._bar = None
        if self._show:
            from rich.progress import Progress

            bar = Progress(transient=True)
            if bar.console.is_terminal:  # elsewhere (logs, CI) a bar only adds blank lines
                self._bar = bar
                self._task = bar.add_task("validating impressions", total=self._total)
                bar.start()
        return self

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, rows)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
