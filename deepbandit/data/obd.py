"""Import the Open Bandit Dataset (OBD) into the log contract.

OBD (Saito et al., 2021) ships one folder per behaviour policy and campaign,
``<source>/<policy>/<campaign>/<campaign>.csv`` (one row per impression) beside ``item_context.csv`` (one row
per item). One import turns one (policy, campaign) into one dataset in the layout of ``schema.py``. The
mapping, and why each choice was made, is in ``docs/open-bandit-dataset.md``; in short:

- title = display position (1..3); image = (position, item) with ``image_id = position * 1000 + item_id``;
  candidates = every item of the campaign at the impression's position; chosen = the logged item.
- propensity = ``propensity_score``; reward = ``click``; ``action_dist`` is written (uniform) for ``random``
  only, where it is known exactly.
- member = a stable hash of the four hashed user features (a feature profile, not a person); the user
  features (one-hot) and the user-item affinities go to ``member_features``.

The log CSV is read twice, streaming, so memory stays bounded on the full 12M-row files: a first pass
collects the user-feature vocabularies and the positions, the second converts block by block.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from tqdm import tqdm  # plain: tqdm.auto needs ipywidgets in a notebook and warns without them

from deepbandit.data import schema
from deepbandit.data.io import DEFAULT_ROW_GROUP_ROWS, finish_dataset, write_parquet_atomic
from deepbandit.errors import ConfigError, UserError

log = logging.getLogger(__name__)

POLICIES = ("random", "bts")
PROPENSITY_KIND = {"random": "exact", "bts": "logged"}
IMAGE_ID_STRIDE = 1000  # image_id = position * IMAGE_ID_STRIDE + item_id, so item ids must be < 1000
USER_FEATURES = tuple(f"user_feature_{k}" for k in range(4))
ITEM_CATEGORICAL = tuple(f"item_feature_{k}" for k in range(1, 4))  # item_feature_0 is numeric
AFFINITY_PREFIX = "user-item_affinity_"
INDEX_COLUMN = ""  # the unnamed pandas index OBD writes first; row order carries the same information
UNKNOWN = "unknown"  # country, language and device: OBD has none of them
RANDOM_PROPENSITY_RTOL = 1e-6  # the random logs store 1/n_items at full float precision
METADATA_FILE = "obd_import.json"
TIMESTAMP_HINT = "expected ISO 8601 with a UTC offset, as OBD writes: 2019-11-24 00:00:17.004101+00:00"
BLOCK_SIZE = 1 << 22  # bytes of CSV parsed at once: smaller blocks stream ~2x faster than 64 MiB ones
# Blocks are regrouped into batches of DEFAULT_ROW_GROUP_ROWS rows: one Parquet row group each (the unit of
# sharding), ~250 MB in memory for the 80-item campaign.


class ObdFormatError(UserError, ValueError):
    """Malformed OBD input. The message names the file and, where one is at fault, the column and row."""


def _at(path: Path, column: str, row: int, what: str) -> str:
    # Data rows count from 0 (as OBD's index column and our request ids do); line 1 is the header.
    return f"{path}: column {column!r}, data row {row} (line {row + 2}): {what}"


def _require(ok: np.ndarray, path: Path, column: str, offset: int, values: np.ndarray, what: str) -> None:
    """Raise naming the first row where ``ok`` (shape (n,)) is False, with its value and the block's count."""
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    more = f" ({len(bad)} such rows among data rows {offset}..{offset + len(ok) - 1})" if len(bad) > 1 else ""
    raise ObdFormatError(
        _at(path, column, offset + int(bad[0]), f"{what}, got {values[bad[0]].tolist()!r}{more}")
    )


def _require_present(table: pa.Table | pa.RecordBatch, path: Path, offset: int) -> None:
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            row = offset + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise ObdFormatError(_at(path, name, row, "missing value"))


def _header(path: Path) -> list[str]:
    if not path.is_file():
        raise ObdFormatError(
            f"{path}: file not found (expected the OBD layout <source>/<policy>/<campaign>/)"
        )
    with path.open(newline="", encoding="utf-8") as handle:
        names = next(csv.reader(handle), None)
    if not names:
        raise ObdFormatError(f"{path}: empty file, expected a header line")
    return names


def _require_columns(path: Path, header: list[str], required: list[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise ObdFormatError(f"{path}: missing column(s) {missing}; the header has {header}")


def _first_unparsable(values: pa.Array, type_: pa.DataType) -> int | None:
    """Index of the first string in ``values`` that does not cast to ``type_`` (bisection: O(n) work)."""

    def fails(part: pa.Array) -> bool:
        try:
            pc.cast(part, type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return True
        return False

    if not fails(values):
        return None
    lo, hi = 0, len(values)  # invariant: values[lo:hi] holds an unparsable entry
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(values[lo:mid]) else (mid, hi)
    return lo


def _diagnose(path: Path, types: dict[str, pa.DataType], error: pa.ArrowInvalid) -> ObdFormatError:
    """pyarrow names neither row nor column when a cell fails to parse: re-read as text to find it."""
    ragged: list[pcsv.InvalidRow] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        ragged.append(row)
        return "error"

    offset = 0
    try:  # open_csv parses the first block at once, so a ragged row there raises from the call itself
        for batch in _open(
            path, {name: pa.string() for name in types}, use_threads=False, on_invalid=on_invalid
        ):
            for name, type_ in types.items():
                if type_ == pa.string():
                    continue
                values = batch.column(name)
                bad = _first_unparsable(values, type_)
                if bad is not None:
                    hint = f" ({TIMESTAMP_HINT})" if pa.types.is_timestamp(type_) else ""
                    what = f"cannot parse {values[bad]} as {type_}{hint}"
                    return ObdFormatError(_at(path, name, offset + bad, what))
            offset += batch.num_rows
    except pa.ArrowInvalid as parse_error:
        if ragged:
            row = ragged[0]
            return ObdFormatError(
                f"{path}: line {row.number}: expected {row.expected_columns} fields, found {row.actual_columns}"
            )
        return ObdFormatError(f"{path}: {parse_error}")
    return ObdFormatError(f"{path}: {error}")


def _open(
    path: Path, types: dict[str, pa.DataType], *, use_threads: bool = True, on_invalid=None
) -> pcsv.CSVStreamingReader:
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=use_threads),
        # Empty lines stay rows (of nulls, rejected as missing values) so row numbers map to line numbers.
        parse_options=pcsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            include_columns=list(types),
            column_types=types,
            null_values=[""],  # only an empty cell is missing; "NA" in a numeric column is an error
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _regroup(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Regroup parser blocks into batches of exactly ``rows`` rows (the last may be short)."""
    pending = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = table if pending is None else pa.concat_tables([pending, table])
        while table.num_rows >= rows:
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            table = table.slice(rows)
        pending = table
    if pending is not None and pending.num_rows:
        yield pending.combine_chunks().to_batches()[0]


def _batches(path: Path, types: dict[str, pa.DataType]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Stream ``path`` as (offset of the batch's first data row, batch with no missing values)."""
    offset = 0
    try:
        for batch in _regroup(_open(path, types), DEFAULT_ROW_GROUP_ROWS):
            _require_present(batch, path, offset)
            yield offset, batch
            offset += batch.num_rows
    except pa.ArrowInvalid as error:
        raise _diagnose(path, types, error) from error


def _vocab(values: list[pa.Array]) -> pa.Array:
    """Sorted distinct strings of the given arrays (the one-hot vocabulary)."""
    return pc.unique(pa.chunked_array(values, pa.string())).sort()


def _one_hot(column: pa.Array, vocab: pa.Array) -> np.ndarray:
    """One-hot (n, len(vocab)) float32 of a string column whose values all lie in ``vocab``."""
    index = pc.index_in(column, value_set=vocab)
    if index.null_count:
        raise ObdFormatError("the CSV changed between the two passes of the import; run it again")
    out = np.zeros((len(column), len(vocab)), dtype=np.float32)
    out[np.arange(len(column)), index.to_numpy()] = 1.0
    return out


def _lists(flat: np.ndarray, width: int, n_rows: int, type_: pa.DataType) -> pa.ListArray:
    """``n_rows`` lists of ``width`` consecutive entries of ``flat`` (shape (n_rows * width,))."""
    offsets = pa.array(np.arange(n_rows + 1, dtype=np.int64) * width, pa.int32())  # raises on overflow
    return pa.ListArray.from_arrays(offsets, pa.array(flat, type_))


@dataclass(frozen=True)
class ItemCatalogue:
    """The campaign's items from ``item_context.csv``, sorted by item id.

    item_ids: (n_items,) int64. embeddings: (n_items, dim) float32, ``item_feature_0`` then the one-hot
    encodings of ``item_feature_1..3`` (vocabularies sorted). feature_names: (dim,) names of those columns.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    feature_names: list[str]


def read_item_context(path: str | os.PathLike) -> ItemCatalogue:
    """Read and check OBD's ``item_context.csv``: unique item ids in [0, 1000), finite numeric feature."""
    path = Path(path)
    types = {"item_id": pa.int64(), "item_feature_0": pa.float64()} | {
        c: pa.string() for c in ITEM_CATEGORICAL
    }
    _require_columns(path, _header(path), list(types))
    table = pa.Table.from_batches([batch for _, batch in _batches(path, types)], pa.schema(types.items()))
    if table.num_rows == 0:
        raise ObdFormatError(f"{path}: no items")
    item_ids = table["item_id"].to_numpy()
    _require(
        (item_ids >= 0) & (item_ids < IMAGE_ID_STRIDE),
        path,
        "item_id",
        0,
        item_ids,
        f"item ids must lie in [0, {IMAGE_ID_STRIDE}) (image_id = position * {IMAGE_ID_STRIDE} + item_id)",
    )
    _, first = np.unique(item_ids, return_index=True)
    _require(np.isin(np.arange(len(item_ids)), first), path, "item_id", 0, item_ids, "duplicate item id")
    numeric = table["item_feature_0"].to_numpy()
    _require(np.isfinite(numeric), path, "item_feature_0", 0, numeric, "expected a finite number")
    order = np.argsort(item_ids)
    parts, names = [numeric[:, None].astype(np.float32)], ["item_feature_0"]
    for name in ITEM_CATEGORICAL:
        vocab = _vocab(table[name].chunks)
        parts.append(_one_hot(table[name].combine_chunks(), vocab))
        names += [f"{name}={value}" for value in vocab.to_pylist()]
    return ItemCatalogue(item_ids[order], np.concatenate(parts, axis=1)[order], names)


def member_ids(features: list[pa.Array]) -> np.ndarray:
    """Pseudo member ids (n,) int64 >= 0 from the four user-feature columns (each (n,) strings).

    ``blake2b("f0|f1|f2|f3", digest_size=8)`` read little-endian, shifted right by one bit: stable across
    runs, machines and imports. Hashing runs once per distinct profile (hundreds), not once per row.
    """
    joined = pc.binary_join_element_wise(*features, "|").dictionary_encode()
    table = np.array(
        [
            int.from_bytes(hashlib.blake2b(profile.encode(), digest_size=8).digest(), "little") >> 1
            for profile in joined.dictionary.to_pylist()
        ],
        dtype=np.int64,
    )
    return table[joined.indices.to_numpy()]


def _impressions_schema(policy: str) -> pa.Schema:
    optional = ["member_features", "propensity_kind"] + (["action_dist"] if policy == "random" else [])
    fields = schema.IMPRESSION_FIELDS + [f for f in schema.OPTIONAL_IMPRESSION_FIELDS if f.name in optional]
    return pa.schema(fields, metadata=schema.IMPRESSIONS_SCHEMA.metadata)


def _without_optional(full: pa.Schema, kind: str) -> pa.Schema:
    # OBD knows no launch dates: optional columns are absent as a whole rather than present and all null.
    optional = {f.name for f in schema.OPTIONAL_FIELDS[kind]}
    return pa.schema([f for f in full if f.name not in optional], metadata=full.metadata)


def _dataset_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to overwrite anything but an earlier import (or an empty folder)."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=true to replace an earlier import")
    if not (out_dir / METADATA_FILE).is_file():
        raise FileExistsError(
            f"{out_dir} exists and holds no {METADATA_FILE}: not replacing what we did not write"
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished dataset into place: readers see the old dataset or the new one, never half of one."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def import_obd(
    source: str | os.PathLike,
    policy: str,
    campaign: str,
    out_dir: str | os.PathLike,
    *,
    max_candidates: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Convert ``<source>/<policy>/<campaign>/`` into the dataset ``out_dir``; return its summary.

    ``max_candidates`` (default: ``schema.MAX_CANDIDATES``) bounds the number of items: each impression's
    candidates are all of the campaign's items, and dropping some would misstate the logging distribution,
    so a larger campaign is an error unless the caller raises the bound. The summary (also written to
    ``<out_dir>/obd_import.json``) holds counts, the take rate (mean click, the behaviour policy's on-policy
    value) with its standard error, overall and per position, and the names of the feature columns.
    """
    if policy not in POLICIES:
        raise ConfigError(f"behavior_policy must be one of {POLICIES}, got {policy!r}")
    folder = Path(source) / policy / campaign
    if not folder.is_dir():
        found = sorted(d.name for d in (Path(source) / policy).glob("*") if d.is_dir())
        raise ConfigError(
            f"campaign={campaign!r}: no folder {folder}; campaigns of {policy!r} found there: "
            f"{', '.join(found) or 'none'} (OBD ships all, men and women)"
        )
    log_path, items_path = folder / f"{campaign}.csv", folder / "item_context.csv"
    out_dir = Path(out_dir)
    _dataset_dir(out_dir, overwrite)

    items = read_item_context(items_path)
    n_items = len(items.item_ids)
    limit = schema.MAX_CANDIDATES if max_candidates is None else max_candidates
    if n_items > limit:
        raise ValueError(
            f"{items_path}: campaign {campaign!r} has {n_items} items but max_candidates is {limit}; every "
            f"item is a candidate of every impression, so none can be dropped. Pass max_candidates={n_items}"
            f" (the contract's MAX_CANDIDATES is {schema.MAX_CANDIDATES})."
        )
    if limit > schema.MAX_CANDIDATES and n_items > schema.MAX_CANDIDATES:
        log.warning("%d candidates exceed the contract's MAX_CANDIDATES=%d", n_items, schema.MAX_CANDIDATES)

    header = _header(log_path)
    affinity = [f"{AFFINITY_PREFIX}{item}" for item in items.item_ids]
    core = ["timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES]
    _require_columns(log_path, header, core + affinity)
    strays = sorted(set(c for c in header if c.startswith(AFFINITY_PREFIX)) - set(affinity))
    if strays:
        raise ObdFormatError(f"{log_path}: column(s) {strays} name items absent from {items_path}")
    ignored = [c for c in header if c not in core + affinity and c != INDEX_COLUMN]

    # Pass 1: the one-hot vocabularies and the positions (titles) must be known before any block is written.
    scan_types = {"position": pa.int64()} | {c: pa.string() for c in USER_FEATURES}
    seen: dict[str, list[pa.Array]] = {c: [] for c in scan_types}
    n_rows = 0
    for offset, batch in _batches(log_path, scan_types):
        position = batch.column("position").to_numpy()
        _require(position >= 1, log_path, "position", offset, position, "positions count from 1")
        for name in scan_types:
            seen[name].append(pc.unique(batch.column(name)))
        n_rows += batch.num_rows
    if n_rows == 0:
        raise ObdFormatError(f"{log_path}: no impressions")
    positions = np.unique(np.concatenate([p.to_numpy() for p in seen.pop("position")]))
    vocabs = {name: _vocab(values) for name, values in seen.items()}
    member_names = [f"{n}={v}" for n, vocab in vocabs.items() for v in vocab.to_pylist()] + affinity

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published dataset gets ordinary permissions
    try:
        stats = _convert(log_path, policy, campaign, items, vocabs, affinity, tmp, n_rows)
        dim = items.embeddings.shape[1]
        image_ids = (positions[:, None] * IMAGE_ID_STRIDE + items.item_ids[None, :]).ravel()
        images = pa.table(
            {
                "image_id": image_ids,
                "title_id": np.repeat(positions, n_items),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    np.tile(items.embeddings, (len(positions), 1)).ravel(), dim
                ),
            },
            schema=_without_optional(schema.images_schema(dim), "images"),
        )
        titles = pa.table(
            {"title_id": positions, "genres": pa.array([[]] * len(positions), pa.list_(pa.string()))},
            schema=_without_optional(schema.TITLES_SCHEMA, "titles"),
        )
        write_parquet_atomic(images, tmp / schema.IMAGES_FILE)
        write_parquet_atomic(titles, tmp / schema.TITLES_FILE)
        summary = {
            "source": str(folder),
            "policy": policy,
            "campaign": campaign,
            "out_dir": str(out_dir),
            "n_impressions": n_rows,
            "n_items": n_items,
            "positions": positions.tolist(),
            "image_id": f"position * {IMAGE_ID_STRIDE} + item_id",
            "propensity_kind": PROPENSITY_KIND[policy],
            "ignored_columns": ignored,
            "member_feature_names": member_names,
            "embedding_feature_names": items.feature_names,
        } | stats
        (tmp / METADATA_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        finish_dataset(tmp, "deepbandit import-obd")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _convert(
    log_path: Path,
    policy: str,
    campaign: str,
    items: ItemCatalogue,
    vocabs: dict[str, pa.Array],
    affinity: list[str],
    tmp: Path,
    n_rows: int,
) -> dict:
    """Pass 2: check and convert the log block by block into ``tmp/impressions/part-0.parquet``."""
    n_items = len(items.item_ids)
    types = {"timestamp": pa.timestamp("us", tz="UTC"), "item_id": pa.int64(), "position": pa.int64()}
    types |= {"click": pa.int64(), "propensity_score": pa.float64()}
    types |= {c: pa.string() for c in USER_FEATURES} | {c: pa.float64() for c in affinity}
    out_schema = _impressions_schema(policy)
    (tmp / schema.IMPRESSIONS_DIR).mkdir()
    writer = pq.ParquetWriter(
        tmp / schema.IMPRESSIONS_DIR / "part-0.parquet", out_schema, write_page_checksum=True
    )
    clicks_by_position: dict[int, list[int]] = {}
    profiles, p_min, p_max, t_min, t_max = [], math.inf, -math.inf, math.inf, -math.inf
    bar = tqdm(total=n_rows, unit="row", desc=f"obd {policy}/{campaign}", disable=None)
    # Parquet encoding (the candidate and action_dist lists make it heavy) overlaps reading the next batch.
    with writer, bar, ThreadPoolExecutor(max_workers=1) as background:
        written = background.submit(lambda: None)
        for offset, batch in _batches(log_path, types):
            n = batch.num_rows
            item_id = batch.column("item_id").to_numpy()
            position = batch.column("position").to_numpy()
            click = batch.column("click").to_numpy()
            propensity = batch.column("propensity_score").to_numpy()
            _require(
                np.isin(item_id, items.item_ids),
                log_path,
                "item_id",
                offset,
                item_id,
                "item id absent from item_context.csv",
            )
            _require((click == 0) | (click == 1), log_path, "click", offset, click, "expected 0 or 1")
            _require(
                (propensity > 0) & (propensity <= 1),
                log_path,
                "propensity_score",
                offset,
                propensity,
                "expected a probability in (0, 1]",
            )
            if policy == "random":
                exact = 1.0 / n_items
                _require(
                    np.abs(propensity - exact) <= RANDOM_PROPENSITY_RTOL * exact,
                    log_path,
                    "propensity_score",
                    offset,
                    propensity,
                    f"the uniform random policy over {n_items} items has propensity 1/{n_items}",
                )
                propensity = np.full(n, exact)
            user = [batch.column(c) for c in USER_FEATURES]
            one_hot = [_one_hot(column, vocabs[c]) for c, column in zip(USER_FEATURES, user, strict=True)]
            width = sum(part.shape[1] for part in one_hot)
            member_features = np.empty((n, width + n_items), np.float32)  # one-hots, then affinities
            member_features[:, :width] = np.concatenate(one_hot, axis=1)
            for j, name in enumerate(affinity):
                scores = batch.column(name).to_numpy()
                _require(np.isfinite(scores), log_path, name, offset, scores, "expected a finite number")
                member_features[:, width + j] = scores
            timestamp = batch.column("timestamp")
            columns = {
                "request_id": pc.binary_join_element_wise(
                    f"obd-{policy}-{campaign}-",
                    pc.cast(pa.array(np.arange(offset, offset + n)), pa.string()),
                    "",
                ),
                "timestamp": timestamp,
                "member_id": member_ids(user),
                "title_id": position,
                "candidate_image_ids": _lists(
                    (position[:, None] * IMAGE_ID_STRIDE + items.item_ids[None, :]).ravel(),
                    n_items,
                    n,
                    pa.int64(),
                ),
                "chosen_image_id": position * IMAGE_ID_STRIDE + item_id,
                "propensity": propensity,
                "reward": click.astype(np.float64),
                "played_title_ids": _lists(np.zeros(0, np.int64), 0, n, pa.int64()),
                "country": pa.repeat(UNKNOWN, n),
                "language": pa.repeat(UNKNOWN, n),
                "device": pa.repeat(UNKNOWN, n),
                "hour": pc.cast(pc.hour(timestamp), pa.int8()),
                "weekday": pc.cast(pc.day_of_week(timestamp), pa.int8()),  # Monday = 0
                "recommender_score": np.zeros(n, np.float32),
                "prior_interaction": np.zeros(n, np.bool_),
                "member_features": _lists(member_features.ravel(), member_features.shape[1], n, pa.float32()),
                "propensity_kind": pa.repeat(PROPENSITY_KIND[policy], n),
            }
            if policy == "random":
                columns["action_dist"] = _lists(np.full(n * n_items, 1.0 / n_items), n_items, n, pa.float64())
            written.result()
            written = background.submit(
                writer.write_table, pa.table([columns[f.name] for f in out_schema], schema=out_schema)
            )

            for p in np.unique(position):
                clicks_by_position.setdefault(int(p), [0, 0])
                at = position == p
                clicks_by_position[int(p)][0] += int(click[at].sum())
                clicks_by_position[int(p)][1] += int(at.sum())
            profiles.append(np.unique(columns["member_id"]))
            p_min, p_max = min(p_min, float(propensity.min())), max(p_max, float(propensity.max()))
            extremes = pc.min_max(pc.cast(timestamp, pa.int64()))  # microseconds since the epoch
            t_min, t_max = min(t_min, extremes["min"].as_py()), max(t_max, extremes["max"].as_py())
            bar.update(n)
        written.result()

    def rate(clicks: int, shown: int) -> dict:
        mean = clicks / shown
        return {"take_rate": mean, "take_rate_se": math.sqrt(mean * (1 - mean) / shown), "n": shown}

    total = rate(
        sum(c for c, _ in clicks_by_position.values()), sum(s for _, s in clicks_by_position.values())
    )
    return {
        "take_rate": total["take_rate"],
        "take_rate_se": total["take_rate_se"],
        "take_rate_by_position": {str(p): rate(*cs) for p, cs in sorted(clicks_by_position.items())},
        "n_member_profiles": int(len(np.unique(np.concatenate(profiles)))),
        "propensity_min": p_min,
        "propensity_max": p_max,
        "time_start": pa.scalar(t_min, types["timestamp"]).as_py().isoformat(),
        "time_end": pa.scalar(t_max, types["timestamp"]).as_py().isoformat(),
    }
