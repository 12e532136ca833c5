"""Parquet reading and writing for the log contract.

Reading goes through ``pyarrow.dataset``: a path is one Parquet file or a directory of them, possibly
hive-partitioned (``impressions/date=2026-01-01/part-0.parquet``). Files and folders whose name starts with
``.`` or ``_`` are never read, so the temporary files of an interrupted atomic write (``.<name>.*.tmp``) and
markers such as ``_SUCCESS`` cannot turn into data.

Streaming (:func:`iter_record_batches`) holds a few row groups in memory at a time, never the dataset.
Sharding (:func:`shard_fragments`) splits the dataset into (file, row group) fragments and gives each one to
exactly one (rank, worker) pair, the same way on every process, so DDP ranks and loader workers read disjoint
parts that together cover the data.

Writing is atomic: a table goes to a temporary file beside its destination and is renamed over it once
complete. This module only reads and writes; checking tables against the contract is
``deepbandit.data.validation``'s job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from deepbandit.atomic import atomic_file, write_text_atomic
from deepbandit.data.layout import (
    DATASET_RECORD_FILE,
    IMAGES_FILE,
    IMPRESSIONS_DIR,
    TITLES_FILE,
    file_sha256,
)
from deepbandit.data.schema import (
    METADATA_TABLE_KEY,
    METADATA_VERSION_KEY,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
)
from deepbandit.errors import ConfigError, DataError

IGNORED_PREFIXES = (".", "_")  # never read: temp files of atomic writes, _SUCCESS/_metadata markers
DEFAULT_BATCH_ROWS = 65_536
DEFAULT_ROW_GROUP_ROWS = 131_072  # the unit of sharding: small enough to spread 10M rows over many workers
# Low-cardinality string columns that can be read straight into dictionary arrays (no per-row strings).
CATEGORY_COLUMNS = ("country", "language", "device")
PARTITION_DATE = "date"  # hive partition key written by write_impressions(partition_by_date=True)
_US_PER_DAY = 86_400_000_000

Source = str | os.PathLike | ds.Dataset
ShardStrategy = Literal["balanced", "round_robin"]


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **write_options) -> Path:
    """Write ``table`` to ``path`` so that a crash never leaves a half-written file behind.

    The data goes to a temporary file in the same directory (same filesystem, so the rename is atomic),
    is flushed to disk, and only then renamed over ``path``. Readers see the old file or the new one.
    """
    # page checksums (CRC32): readers verify them, so a flipped byte in a data page fails the read
    write_options.setdefault("write_page_checksum", True)
    with atomic_file(path) as sink:
        pq.write_table(table, sink, **write_options)
    return Path(path)


def write_impressions(
    table: pa.Table,
    root: str | os.PathLike,
    *,
    partition_by_date: bool = False,
    part_name: str = "part-0.parquet",
    row_group_size: int = DEFAULT_ROW_GROUP_ROWS,
    compression: str = "lz4",
    **write_options,
) -> list[Path]:
    """Write an impressions table under ``root`` atomically, one file per partition.

    Without partitioning the table goes to ``root/part_name``; with ``partition_by_date`` the rows of each
    UTC day of ``timestamp`` go to ``root/date=YYYY-MM-DD/part_name`` (hive layout, read back by
    :func:`open_dataset` with a string ``date`` column). Each file is replaced atomically; a partitioned
    write as a whole is not (a crash between days leaves the earlier days written). Existing files under
    other names or other dates are left alone, so appending a day is writing it under a new ``part_name``.

    The table's schema metadata is kept; a table without deepbandit metadata is stamped with the current
    ``SCHEMA_VERSION`` and table kind, as every table deepbandit writes carries them.

    ``compression`` defaults to LZ4 (Parquet's LZ4_RAW): on logs of random 64-bit image ids it decoded
    about 1.4x faster than snappy in files 7% smaller (scripts/bench_data.py's 25-candidate log, 2-core
    VM); pass ``compression="snappy"`` for readers older than Parquet format 2.9. ``write_options`` go to
    ``pyarrow.parquet.write_table``.

    Returns:
        The paths written, sorted.
    """
    if not part_name.endswith(".parquet") or part_name.startswith(IGNORED_PREFIXES):
        raise ValueError(
            f"part_name {part_name!r}: must end with '.parquet' and not start with '.' or '_' "
            "(such files are skipped when reading)"
        )
    metadata = dict(table.schema.metadata or {})
    metadata.setdefault(METADATA_VERSION_KEY, SCHEMA_VERSION.encode())
    metadata.setdefault(METADATA_TABLE_KEY, b"impressions")
    table = table.replace_schema_metadata(metadata)
    root = Path(root)
    options = {"row_group_size": row_group_size, "compression": compression, **write_options}
    if not partition_by_date:
        return [write_parquet_atomic(table, root / part_name, **options)]
    if "timestamp" not in table.column_names:
        raise ValueError(f"writing {root} partitioned by date: the table has no 'timestamp' column")
    if table.column("timestamp").null_count:
        raise ValueError(f"writing {root} partitioned by date: 'timestamp' has null values")
    micros = _timestamp_micros(table.column("timestamp"))
    days = np.floor_divide(micros, _US_PER_DAY)
    if (np.diff(days) < 0).any():  # logs usually come in time order: then no reordering copy
        order = np.argsort(days, kind="stable")  # keeps the rows of one day in their original order
        table, days = table.take(pa.array(order)), days[order]
    unique_days, starts, counts = np.unique(days, return_index=True, return_counts=True)
    written = []
    for day, first, count in zip(unique_days, starts, counts, strict=True):
        date = str(np.datetime64(int(day), "D"))
        path = root / f"{PARTITION_DATE}={date}" / part_name
        written.append(write_parquet_atomic(table.slice(first, count), path, **options))
    return sorted(written)


def list_parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files a path stands for, sorted: the file itself, or every ``*.parquet`` below a folder.

    Anything below the folder whose name (or any parent folder's name) starts with ``.`` or ``_`` is skipped.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no Parquet file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(IGNORED_PREFIXES) for part in p.relative_to(path).parts)
    )
    if not files:
        raise FileNotFoundError(
            f"{path}: directory holds no Parquet files (*.parquet, not starting with . or _)"
        )
    return files


def open_dataset(
    path: str | os.PathLike, *, kind: str = "impressions", categories_as_dictionary: bool = False
) -> ds.Dataset:
    """Open a Parquet file or a (hive-partitioned) folder of them as a ``pyarrow.dataset.Dataset`` whose
    contract columns have the contract's stored types (:func:`canonical_schema`), whatever accepted
    variant the files hold (int32 ids, large lists, float16, any timestamp unit or zone, all-null columns
    of type null, another column order): the accepted physical variants are normalised here, once.

    Hive partition keys (``key=value`` folder names) become columns, typed by pyarrow's inference (a
    ``date=2026-01-01`` folder gives a string column ``date``); a key that names a contract column is
    refused, since its folder values would replace the file's. Every file must have the same columns with
    the same types and the same deepbandit schema version, else the read would silently fill nulls or mix
    contracts. Parquet page checksums, where the writer stored them (deepbandit's writers do), are
    verified as pages are read.

    Args:
        kind: the table kind (impressions, images, titles), which says what the contract columns are.
        categories_as_dictionary: read ``country``, ``language`` and ``device`` as dictionary arrays (no
            per-row Python strings; much faster to map to vocabulary indices). Their type then differs from
            the contract's plain string, so leave it off when the table goes to validation.

    Raises:
        FileNotFoundError: the path does not exist or holds no Parquet file.
        DataError: files disagree on columns, types or schema version (naming the two files), or a hive
            partition key names a contract column.
    """
    files = list_parquet_files(path)
    root = Path(path)
    read_options = {}
    if categories_as_dictionary:
        read_options["dictionary_columns"] = list(CATEGORY_COLUMNS)
    fmt = ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(**read_options),
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True),
    )
    layout = {
        "format": fmt,
        "partitioning": "hive" if root.is_dir() else None,
        "partition_base_dir": str(root) if root.is_dir() else None,
    }
    physical = ds.dataset([str(f) for f in files], **layout)
    _check_same_schema(physical)
    check_partition_keys(files, root, kind)
    schema = canonical_schema(physical.schema, kind, categories_as_dictionary=categories_as_dictionary)
    return ds.dataset([str(f) for f in files], schema=schema, **layout)


def canonical_schema(schema: pa.Schema, kind: str, *, categories_as_dictionary: bool = False) -> pa.Schema:
    """``schema`` with each contract column at the contract's stored type (other columns, such as hive
    partition keys, as they are), in the same order and nullability (nulls are validation's business).

    An embedding stored as a fixed-size list stays one (of float32); the category columns become
    dictionaries of strings with ``categories_as_dictionary``. Only the casts validation accepts are
    lossless here; on logs that passed validation every one is exact.
    """
    contract = {f.name: f.type for f in REQUIRED_FIELDS[kind] + OPTIONAL_FIELDS[kind]}
    fields = []
    for f in schema:
        target = contract.get(f.name, f.type)
        if f.name == "embedding" and pa.types.is_fixed_size_list(f.type):
            target = pa.list_(pa.float32(), f.type.list_size)
        if categories_as_dictionary and kind == "impressions" and f.name in CATEGORY_COLUMNS:
            target = pa.dictionary(pa.int32(), pa.string())
        fields.append(pa.field(f.name, target, nullable=f.nullable))
    return pa.schema(fields, metadata=schema.metadata)


def check_partition_keys(files: list[Path], root: Path, kind: str) -> None:
    """Refuse hive folders (``key=value``) whose key names a contract column (validation does the same)."""
    contract = {f.name for f in REQUIRED_FIELDS[kind] + OPTIONAL_FIELDS[kind]}
    for f in files if root.is_dir() else []:
        for part in f.relative_to(root).parts[:-1]:
            key = part.split("=", 1)[0]
            if "=" in part and key in contract:
                raise DataError(
                    f"{f}: hive folder {part!r} names the contract column {key!r}; its folder value would "
                    f"replace the column's values. Rename the folder (e.g. part_{key}=...) or drop the partitioning"
                )


def _check_same_schema(dataset: ds.Dataset) -> None:
    first, first_schema = None, None
    for fragment in dataset.get_fragments():
        schema = fragment.physical_schema
        if first is None:
            first, first_schema = fragment.path, schema
            continue
        # names and types must agree; nullability may differ between writers and does not change the data
        a = [(f.name, f.type) for f in first_schema]
        b = [(f.name, f.type) for f in schema]
        if a != b:
            da, db = ({name: str(t) for name, t in x} for x in (a, b))
            diff = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
            details = ", ".join(f"{k}: {da.get(k, 'absent')} vs {db.get(k, 'absent')}" for k in diff)
            raise DataError(f"{fragment.path}: columns differ from {first}: {details or 'column order'}")
        version = (schema.metadata or {}).get(METADATA_VERSION_KEY)
        first_version = (first_schema.metadata or {}).get(METADATA_VERSION_KEY)
        if version != first_version:
            raise DataError(
                f"{fragment.path}: deepbandit schema version {version!r} differs from {first_version!r} in {first}"
            )


def time_filter(
    start: dt.datetime | dt.date | str | None = None,
    end: dt.datetime | dt.date | str | None = None,
    *,
    partition_date: bool = False,
) -> ds.Expression | None:
    """Filter keeping rows with ``start <= timestamp < end`` (either bound may be None).

    Bounds are datetimes, dates (midnight) or ISO strings; a value without a time zone is taken as UTC,
    the contract's zone. With ``partition_date`` the filter also names the hive ``date`` folders that can
    hold matching rows, so whole days are skipped without opening their files. That extra condition is
    widened by one day each side: it only prunes, the timestamp condition decides, so folders named by a
    local rather than a UTC date (offsets under a day) lose no rows.

    Raises:
        ValueError: a bound cannot be parsed, or ``start >= end``.
    """
    lo = None if start is None else _to_utc_micros(start, "start")
    hi = None if end is None else _to_utc_micros(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"time range is empty: start {start!r} is not before end {end!r}")
    ts_type = pa.timestamp("us", tz="UTC")
    parts = []
    if lo is not None:
        parts.append(ds.field("timestamp") >= pa.scalar(lo, ts_type))
        if partition_date:
            parts.append(ds.field(PARTITION_DATE) >= _iso_day(lo // _US_PER_DAY - 1))
    if hi is not None:
        parts.append(ds.field("timestamp") < pa.scalar(hi, ts_type))
        if partition_date:
            parts.append(ds.field(PARTITION_DATE) <= _iso_day((hi - 1) // _US_PER_DAY + 1))
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


def _iso_day(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def _to_utc_micros(value: dt.datetime | dt.date | str, name: str) -> int:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigError(f"{name}: cannot parse {value!r} as an ISO date or datetime") from e
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
    elif isinstance(value, dt.date):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    else:
        raise TypeError(f"{name}: expected a datetime, date or ISO string, got {type(value).__name__}")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _timestamp_micros(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 microseconds since the epoch of a timestamp column of any unit (vectorised)."""
    column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64()).to_numpy()


def _as_dataset(source: Source, categories_as_dictionary: bool = False) -> ds.Dataset:
    if isinstance(source, ds.Dataset):
        return source
    return open_dataset(source, categories_as_dictionary=categories_as_dictionary)


def _scan_filter(dataset: ds.Dataset, start, end, filter: ds.Expression | None) -> ds.Expression | None:
    partitioning = getattr(dataset, "partitioning", None)
    # prune by folder only when `date` is a hive partition key holding ISO strings, never a data column
    has_date = (
        partitioning is not None
        and PARTITION_DATE in partitioning.schema.names
        and partitioning.schema.field(PARTITION_DATE).type == pa.string()
    )
    expr = time_filter(start, end, partition_date=has_date)
    if filter is not None:
        expr = filter if expr is None else expr & filter
    return expr


def _check_columns(dataset: ds.Dataset, columns: Sequence[str] | None, where: str) -> None:
    if columns is None:
        return
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise KeyError(f"{where}: no column(s) {missing}; the data has {dataset.schema.names}")


def open_impressions(
    path: Source,
    *,
    columns: Sequence[str] | None = None,
    start: dt.datetime | dt.date | str | None = None,
    end: dt.datetime | dt.date | str | None = None,
    filter: ds.Expression | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    categories_as_dictionary: bool = False,
) -> ds.Scanner:
    """A scanner over impressions: projected to ``columns``, rows with ``start <= timestamp < end`` and
    ``filter`` (a ``pyarrow.dataset`` expression). Call ``.to_table()``, ``.to_batches()`` or
    ``.count_rows()`` on it; nothing is read before that. Row groups whose statistics exclude the time range,
    and date partitions outside it, are skipped unread.
    """
    dataset = _as_dataset(path, categories_as_dictionary)
    _check_columns(dataset, columns, str(path))
    return dataset.scanner(
        columns=list(columns) if columns is not None else None,
        filter=_scan_filter(dataset, start, end, filter),
        batch_size=batch_rows,
    )


def shard_fragments(
    dataset: ds.Dataset,
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
    *,
    strategy: ShardStrategy = "balanced",
    filter: ds.Expression | None = None,
) -> list[ds.ParquetFileFragment]:
    """The (file, row group) fragments that (``rank``, ``worker``) reads, in path then row-group order.

    All fragments are listed in one stable order (file path, then row-group index) and dealt to
    ``world_size * num_workers`` shards; shard ``rank * num_workers + worker`` is returned. Every process
    computes the same assignment without communicating, each fragment lands in exactly one shard, and the
    shards together are the dataset.

    Strategies:
        ``"balanced"`` (default): longest row group first, each to the shard with the fewest rows so far
        (ties to the lowest shard), so shards differ by at most one row group's rows: what DDP wants, as
        ranks step in lockstep.
        ``"round_robin"``: fragment ``i`` to shard ``i % n_shards``; equal fragment counts, not rows.

    ``filter`` prunes row groups whose Parquet statistics rule them out before dealing (row counts are
    then of whole row groups, not of the rows the filter keeps). With more shards than fragments some
    shards are empty.
    """
    n_shards = world_size * num_workers
    if world_size < 1 or num_workers < 1:
        raise ValueError(f"world_size ({world_size}) and num_workers ({num_workers}) must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} not in [0, {num_workers})")
    fragments = [
        rg
        for f in dataset.get_fragments(filter=filter if filter is not None else ds.scalar(True))
        for rg in _row_groups(f, filter, dataset.schema)
    ]
    fragments.sort(key=lambda f: (f.path, f.row_groups[0].id))
    shard = rank * num_workers + worker
    if strategy == "round_robin":
        return fragments[shard::n_shards]
    if strategy != "balanced":
        raise ValueError(f"strategy {strategy!r}: expected 'balanced' or 'round_robin'")
    rows = np.array([f.row_groups[0].num_rows for f in fragments], dtype=np.int64)
    load = np.zeros(n_shards, dtype=np.int64)
    owner = np.empty(len(fragments), dtype=np.int64)
    # Longest first, stable among equals; argmin picks the lowest shard on ties: deterministic everywhere.
    for i in np.argsort(-rows, kind="stable"):
        owner[i] = s = int(np.argmin(load))
        load[s] += rows[i]
    return [f for f, o in zip(fragments, owner, strict=True) if o == shard]


def _row_groups(fragment: ds.ParquetFileFragment, filter: ds.Expression | None, schema: pa.Schema) -> list:
    """The fragment's row groups, pruned by ``filter`` on their statistics where Arrow can compare them.

    Statistics are in the file's physical types; for an accepted variant (say ns timestamps in another
    zone) Arrow has no kernel to compare them with the contract-typed filter. Then the filter's columns
    of each row group are read at the contract's types and the groups without a matching row are dropped:
    on time-ordered logs the same groups as the statistics would keep.
    """
    try:
        return fragment.split_by_row_group(filter=filter, schema=schema)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):
        groups = fragment.split_by_row_group()
        columns = _filter_columns(filter)
        return [g for g in groups if g.to_table(schema=schema, columns=columns).filter(filter).num_rows]


def _filter_columns(filter: ds.Expression | None) -> list[str]:
    """The columns a time or partition filter reads (the ones this module builds filters on)."""
    if filter is None:
        return []
    text = str(filter)
    return [name for name in ("timestamp", PARTITION_DATE) if name in text]


def iter_record_batches(
    source: Source,
    *,
    columns: Sequence[str] | None = None,
    start: dt.datetime | dt.date | str | None = None,
    end: dt.datetime | dt.date | str | None = None,
    filter: ds.Expression | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    strategy: ShardStrategy = "balanced",
    shuffle_seed: int | None = None,
    categories_as_dictionary: bool = False,
    readahead: int = 1,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of one shard as record batches of exactly ``batch_rows`` rows (the last may be short).

    Row groups are decoded one at a time on a background thread, at most ``readahead`` of them ahead of
    the one being consumed, so memory is bounded by the row-group and batch sizes, whatever the dataset
    size. The shard is :func:`shard_fragments` (rank, worker); fragments are read in path/row-group
    order, or in an order permuted by ``shuffle_seed`` (give a new seed each epoch to vary it; rows within
    a row group keep their order).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if readahead < 0:
        raise ValueError(f"readahead must be >= 0, got {readahead}")
    dataset = _as_dataset(source, categories_as_dictionary)
    _check_columns(dataset, columns, str(source) if not isinstance(source, ds.Dataset) else "dataset")
    expr = _scan_filter(dataset, start, end, filter)
    fragments = shard_fragments(
        dataset, rank, world_size, worker, num_workers, strategy=strategy, filter=expr
    )
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(fragments))
        fragments = [fragments[i] for i in order]
    yield from _rebatch(
        _read_fragments(fragments, dataset.schema, columns, expr, batch_rows, readahead), batch_rows
    )


def _read_fragments(
    fragments: list[ds.ParquetFileFragment],
    schema: pa.Schema,
    columns: Sequence[str] | None,
    filter: ds.Expression | None,
    batch_rows: int,
    readahead: int,
) -> Iterator[pa.RecordBatch]:
    """Decode fragments in order on a background thread, at most ``readahead`` ahead of the consumer.

    One fragment (a row group) is decoded at a time. A dataset-wide scanner is not used here: it buffers
    up to about 1 GiB of decoded batches when the consumer is slower than the decoder, which is exactly the
    case when batches are turned into tensors.
    """

    def read(fragment: ds.ParquetFileFragment) -> pa.Table:
        wanted = list(columns) if columns is not None else None
        try:
            return fragment.to_table(schema=schema, columns=wanted, filter=filter, batch_size=batch_rows)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            # an accepted variant whose statistics Arrow cannot compare with the filter (see _row_groups):
            # read the row group at the contract's types, then filter its rows
            needed = None if wanted is None else list(dict.fromkeys([*wanted, *_filter_columns(filter)]))
            table = fragment.to_table(schema=schema, columns=needed, batch_size=batch_rows).filter(filter)
            return table if wanted is None else table.select(wanted)

    upcoming = iter(fragments)
    pending: deque = deque()

    def top_up(limit: int) -> None:
        while len(pending) < limit and (fragment := next(upcoming, None)) is not None:
            pending.append(pool.submit(read, fragment))

    with ThreadPoolExecutor(max_workers=1) as pool:  # Arrow releases the GIL: decoding overlaps the consumer
        try:
            while True:
                top_up(1)
                if not pending:
                    return
                table = pending.popleft().result()
                top_up(readahead)  # decoded while the consumer works on `table`
                yield from table.to_batches()
                del table
        finally:
            for future in pending:  # consumer stopped early: do not decode what nobody will read
                future.cancel()


def _rebatch(batches: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Regroup a stream of record batches into batches of exactly ``batch_rows`` rows (last one short).

    A scanner's batches end at row-group boundaries and shrink under filters; fixed sizes keep step shapes
    stable. Batches already of the right size pass through without a copy.
    """
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if n_pending == 0 and batch.num_rows == batch_rows:
            yield batch
            continue
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending < batch_rows:
            continue
        table = pa.Table.from_batches(pending)
        n_full = n_pending // batch_rows
        for i in range(n_full):
            yield table.slice(i * batch_rows, batch_rows).combine_chunks().to_batches()[0]
        rest = table.slice(n_full * batch_rows)
        pending = rest.to_batches() if rest.num_rows else []
        n_pending = rest.num_rows
    if n_pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _read_single_table(path: str | os.PathLike, kind: str) -> pa.Table:
    # a dataset's schema metadata is its first file's; open_dataset checked that all files agree
    table = open_dataset(path, kind=kind).to_table()
    found = (table.schema.metadata or {}).get(METADATA_TABLE_KEY)
    if found is not None and found != kind.encode():
        raise DataError(f"{path}: holds a {found.decode()!r} table, expected {kind!r}")
    return table


def read_images(path: str | os.PathLike) -> pa.Table:
    """Read the images table (``image_id``, ``title_id``, ``embedding``, ...) from a file or folder.

    Raises:
        FileNotFoundError: the path does not exist or holds no Parquet file.
        ValueError: the file's metadata says it holds another table kind.
    """
    return _read_single_table(path, "images")


def read_titles(path: str | os.PathLike) -> pa.Table:
    """Read the titles table (``title_id``, ``genres``, ...) from a file or folder.

    Raises:
        FileNotFoundError: the path does not exist or holds no Parquet file.
        ValueError: the file's metadata says it holds another table kind.
    """
    return _read_single_table(path, "titles")


# --- the dataset record: complete only when its writer finished ---------------------------------------


def _data_files(root: Path) -> list[Path]:
    """The files a reader takes as data: titles, images and every impressions Parquet file."""
    files = [root / f for f in (TITLES_FILE, IMAGES_FILE) if (root / f).exists()]
    impressions = root / IMPRESSIONS_DIR
    return files + (list_parquet_files(impressions) if impressions.exists() else [])


def _footer_rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None  # unreadable: reported as changed


def begin_dataset(root: str | os.PathLike, writer: str) -> None:
    """Mark ``root`` as being written by ``writer``: until :func:`finish_dataset`, readers refuse it, so a
    writer killed half-way leaves a dataset that says so instead of one that validates as complete."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / DATASET_RECORD_FILE, json.dumps({"complete": False, "writer": writer}) + "\n")


def finish_dataset(root: str | os.PathLike, writer: str) -> dict:
    """Record every data file under ``root`` (rows, bytes, sha256) and mark the dataset complete."""
    root = Path(root)
    files = {}
    for path in _data_files(root):
        files[path.relative_to(root).as_posix()] = {
            "rows": _footer_rows(path),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
    record = {"complete": True, "writer": writer, "files": files}
    write_text_atomic(root / DATASET_RECORD_FILE, json.dumps(record, indent=1) + "\n")
    return record


def check_dataset_record(root: str | os.PathLike, *, hashes: bool = False) -> dict | None:
    """Refuse a dataset whose writer did not finish, or whose files differ from what it recorded.

    A dataset without a record (logs written by other tools) passes: the contract does not require one.
    Files are compared by name, size and footer row count; with ``hashes`` also by SHA-256 (a full read).

    Raises:
        DataError: naming the dataset and the file that differs.
    """
    root = Path(root)
    path = root / DATASET_RECORD_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        complete, writer = bool(record["complete"]), str(record["writer"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable dataset record ({e}); rewrite the dataset") from e
    if not complete:
        raise DataError(
            f"{root}: incomplete dataset: its writer ({writer}) started but did not finish (killed or failed); "
            "run it again (with overwrite=true)"
        )
    recorded: dict = record.get("files") or {}
    present = {p.relative_to(root).as_posix(): p for p in _data_files(root)}
    if missing := sorted(recorded.keys() - present.keys()):
        raise DataError(f"{root}: {missing[0]} is missing; {writer} wrote it ({DATASET_RECORD_FILE})")
    if extra := sorted(present.keys() - recorded.keys()):
        raise DataError(
            f"{root}: {extra[0]} was not written by {writer} ({DATASET_RECORD_FILE} lists the files it wrote); "
            f"remove it, or delete {DATASET_RECORD_FILE} if the change is intended"
        )
    for name, entry in recorded.items():
        p = present[name]
        same = p.stat().st_size == entry["bytes"] and _footer_rows(p) == entry["rows"]
        if not same or (hashes and file_sha256(p) != entry["sha256"]):
            raise DataError(
                f"{root}: {name} changed since {writer} wrote it (size or sha256 differs from "
                f"{DATASET_RECORD_FILE}); rewrite the dataset, or delete the record if the change is intended"
            )
    return record


def count_rows(source: Source, *, start=None, end=None, filter: ds.Expression | None = None) -> int:
    """Rows of a dataset in the time range and filter, from metadata where possible."""
    dataset = _as_dataset(source)
    return dataset.count_rows(filter=_scan_filter(dataset, start, end, filter))


__all__ = [
    "CATEGORY_COLUMNS",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_ROW_GROUP_ROWS",
    "count_rows",
    "iter_record_batches",
    "list_parquet_files",
    "open_dataset",
    "open_impressions",
    "begin_dataset",
    "canonical_schema",
    "check_dataset_record",
    "finish_dataset",
    "check_partition_keys",
    "read_images",
    "read_titles",
    "shard_fragments",
    "time_filter",
    "write_impressions",
    "write_parquet_atomic",
]
