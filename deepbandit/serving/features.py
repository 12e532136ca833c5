"""Raw requests -> graph inputs, with the manifest's vocabularies, in numpy alone.

A batch of B requests is held columnar (``RequestBatch``): per-request arrays plus flat lists with offsets
for the candidate and played-title lists. Validation marks bad requests (``errors``) instead of raising,
so one malformed request never fails the rest of its batch; feature building then runs on the good rows.

Fallbacks (the same as training's ``deepbandit.data.vocab``): a title, played title, country, language or
device not in the vocabulary maps to index 1 ("unknown"), whose embedding was trained on nothing specific.
A candidate image must have an embedding: images in ``images.npy`` or added with
``ArtworkService.add_images``; any other candidate id makes its request an error (an image cannot be
scored without its content).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepbandit.data.features import REQUEST_FIELDS, check_input_values
from deepbandit.data.layout import MAX_TIMESTAMP_US, MIN_TIMESTAMP_US
from deepbandit.data.vocab import N_RESERVED, UNK, Vocab

# member_id keys sticky decisions; the rest are the model inputs' request fields (data.features)
REQUIRED_FIELDS = ("member_id", *REQUEST_FIELDS)


@dataclass
class RequestBatch:
    """B raw requests, columnar. Lists are flat values with offsets (B + 1,).

    member_id, title_id (B,) int64; candidate_ids (N,) int64 with candidate_offsets (B + 1,);
    played_ids (M,) int64 with played_offsets (B + 1,), most recent first; country, language, device (B,)
    str; hour, weekday, recommender_score, prior_interaction (B,) float64 (checked to be integers / 0-1
    where they must be); timestamp_us (B,) int64 or None; request_id (B,) str or None;
    member_features (B, F) float32 or None. errors: request position -> message, filled by the
    conversion and by :func:`validate`.
    """

    member_id: np.ndarray
    title_id: np.ndarray
    candidate_ids: np.ndarray
    candidate_offsets: np.ndarray
    played_ids: np.ndarray
    played_offsets: np.ndarray
    country: np.ndarray
    language: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    weekday: np.ndarray
    recommender_score: np.ndarray
    prior_interaction: np.ndarray
    timestamp_us: np.ndarray | None = None
    request_id: np.ndarray | None = None
    member_features: np.ndarray | None = None
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.member_id)

    @property
    def n_candidates(self) -> np.ndarray:
        return np.diff(self.candidate_offsets)

    def fail(self, bad: np.ndarray, message: str, values: np.ndarray | None = None) -> None:
        """Record ``message`` for every True row of ``bad`` (B,) that has no error yet; ``{value}`` in the
        message is replaced by that row's entry of ``values``."""
        for row in np.flatnonzero(bad).tolist():
            if row not in self.errors:
                self.errors[row] = message.format(value=values[row] if values is not None else None)


def _field(request: Any, name: str) -> Any:
    if not isinstance(request, dict):
        raise TypeError(f"request must be a dict, got {type(request).__name__}")
    if name not in request or request[name] is None:
        raise KeyError(f"missing field {name!r}")
    return request[name]


def from_dicts(requests: list[dict[str, Any]], member_features_dim: int = 0) -> RequestBatch:
    """Columnar batch from a list of dicts (the impression contract's context fields). The only
    per-request Python loop of serving: a dict per request is a Python object per request anyway; use
    Arrow input (:func:`from_arrow`) for high throughput. Fields that cannot be read make that request
    an error (with placeholders in its slots), never the batch."""
    b = len(requests)
    scalars = {
        n: np.zeros(b, np.float64) for n in ("hour", "weekday", "recommender_score", "prior_interaction")
    }
    member_id, title_id, timestamp = np.zeros(b, np.int64), np.zeros(b, np.int64), np.zeros(b, np.int64)
    strings = {n: np.full(b, "", dtype=object) for n in ("country", "language", "device")}
    cand: list[np.ndarray] = []
    played: list[np.ndarray] = []
    request_id = np.full(b, "", dtype=object)
    has_rid = has_ts = False
    features = np.zeros((b, member_features_dim), np.float32) if member_features_dim else None
    errors: dict[int, str] = {}
    empty = np.zeros(0, np.int64)
    for i, r in enumerate(requests):
        c, p = empty, empty
        try:
            member_id[i] = _int(_field(r, "member_id"), "member_id")
            title_id[i] = _int(_field(r, "title_id"), "title_id")
            c = _int_list(_field(r, "candidate_image_ids"), "candidate_image_ids")
            p = _int_list(_field(r, "played_title_ids"), "played_title_ids")
            for n in strings:
                v = _field(r, n)
                if not isinstance(v, str):
                    raise TypeError(f"{n} must be a string, got {v!r}")
                strings[n][i] = v
            for n in scalars:
                scalars[n][i] = _SCALAR_READERS[n](_field(r, n), n)
            if r.get("timestamp") is not None:
                timestamp[i], has_ts = _timestamp_us(r["timestamp"]), True
            if r.get("request_id") is not None:
                v = r["request_id"]
                if not isinstance(v, str) or not v:
                    raise TypeError(f"request_id must be a non-empty string, got {v!r}")
                request_id[i], has_rid = v, True
            if features is not None:
                raw = np.asarray(_field(r, "member_features"))
                if raw.dtype.kind not in "iuf":
                    raise TypeError(
                        f"member_features must be a list of numbers, got {r['member_features']!r}"
                    )
                f = raw.astype(np.float32)
                if f.shape != (member_features_dim,):
                    raise ValueError(
                        f"member_features must have {member_features_dim} values, got shape {f.shape}"
                    )
                features[i] = f
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            errors[i] = str(err.args[0]) if isinstance(err, KeyError) else str(err)
            c, p = empty, empty
        cand.append(c)
        played.append(p)
    batch = RequestBatch(
        member_id=member_id,
        title_id=title_id,
        candidate_ids=np.concatenate(cand) if cand else empty,
        candidate_offsets=_offsets(cand),
        played_ids=np.concatenate(played) if played else empty,
        played_offsets=_offsets(played),
        **{n: v.astype(np.str_) if b else np.zeros(0, "<U1") for n, v in strings.items()},
        **scalars,
        timestamp_us=timestamp if has_ts else None,
        request_id=request_id.astype(np.str_) if has_rid else None,
        member_features=features,
        errors=errors,
    )
    return batch


def _exact_in_numpy(col: Any, dtype: Any) -> type | None:
    """The numpy type that holds every value of the null-free column ``col`` exactly as Arrow type
    ``dtype`` (int64 from any integer column with no value beyond int64, which callers ensure; float64 from
    floats, bools and integers of at most 32 bits), or None where Arrow's checked cast is needed."""
    import pyarrow as pa

    if col.null_count:
        return None
    t = col.type
    if dtype == pa.int64() and pa.types.is_integer(t):
        return np.int64
    if dtype == pa.float64() and (
        pa.types.is_floating(t) or pa.types.is_boolean(t) or (pa.types.is_integer(t) and t.bit_width <= 32)
    ):
        return np.float64
    return None


def from_arrow(table: Any, member_features_dim: int = 0) -> RequestBatch:
    """Columnar batch from a pyarrow Table (or RecordBatch) with the impression contract's context columns
    (pyarrow imported lazily). Missing columns fail every request; nulls fail their request."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    b = table.num_rows
    errors: dict[int, str] = {}
    names = set(table.column_names)  # the property builds a new list on every read
    missing = [n for n in REQUIRED_FIELDS if n not in names]
    if member_features_dim and "member_features" not in names:
        missing.append("member_features")
    if missing:
        raise KeyError(f"request table lacks columns {missing}; it has {table.column_names}")

    def as_numpy(col: pa.Array, dtype: pa.DataType) -> np.ndarray:
        # An Arrow cast costs a compute call (about 10 us a column, most of a small batch's parsing) even
        # to the type a column already has. Widening a null-free number or bool column is exact in numpy.
        if col.type == dtype:
            return col.to_numpy(zero_copy_only=False)
        exact = _exact_in_numpy(col, dtype)
        if exact is not None:
            return col.to_numpy(zero_copy_only=False).astype(exact)
        return col.cast(dtype).to_numpy(zero_copy_only=False)

    def column(name: str, optional: bool = False) -> pa.Array:
        col = table.column(name)
        col = (
            col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks) if col.num_chunks else None
        )
        if col is None:
            col = pa.array([], table.schema.field(name).type)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.null_count and not optional:  # optional fields (request_id, timestamp) may be null
            for row in np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)).tolist():
                errors.setdefault(row, f"missing field {name!r}")
        return col

    def filled(col: pa.Array, value: Any) -> pa.Array:
        return pc.fill_null(col, value) if col.null_count else col

    def refuse(name: str, col: pa.Array, expected: str) -> None:
        raise TypeError(f"request column {name!r} has type {col.type}; expected {expected}")

    def exact_int64(name: str, col: pa.Array) -> np.ndarray:
        """Integer column -> int64 values, exactly (no float round trip); uint64 beyond int64 fails its row."""
        if not pa.types.is_integer(col.type):
            refuse(name, col, "integers (int8..int64, uint8..uint64)")
        if col.type == pa.uint64():
            big = filled(pc.greater(col, pa.scalar(_INT64.max, pa.uint64())), False)
            for row in np.flatnonzero(big.to_numpy(zero_copy_only=False)).tolist():
                errors.setdefault(row, f"{name} {col[row].as_py()} does not fit int64")
            col = pc.if_else(big, pa.scalar(0, pa.uint64()), col)
        return as_numpy(filled(col, 0), pa.int64())

    def ints(name: str) -> np.ndarray:
        return exact_int64(name, column(name))

    def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
        col = column(name)
        if pa.types.is_fixed_size_list(col.type):
            col = col.cast(pa.list_(col.type.value_type))
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            refuse(name, col, "a list of integer ids")
        col = filled(col, pa.scalar([], col.type))
        offsets = col.offsets.to_numpy().astype(np.int64)
        values = col.values[offsets[0] : offsets[-1]]
        offsets -= offsets[0]
        if not pa.types.is_integer(values.type):
            refuse(name, col, "a list of integer ids")
        if values.null_count:
            for row in np.flatnonzero(_row_of_nulls(values, offsets)).tolist():
                errors.setdefault(row, f"{name} holds a null id")
        if values.type == pa.uint64():
            big = filled(pc.greater(values, pa.scalar(_INT64.max, pa.uint64())), False)
            for row in np.flatnonzero(_row_of_nulls(pc.if_else(big, None, values), offsets)).tolist():
                errors.setdefault(row, f"{name} holds an id that does not fit int64")
            values = pc.if_else(big, pa.scalar(0, pa.uint64()), values)
        return as_numpy(filled(values, 0), pa.int64()), offsets

    def score(name: str) -> np.ndarray:
        col = column(name)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            refuse(name, col, "numbers (float or integer)")
        x = as_numpy(filled(col, 0), pa.float64())
        for row in np.flatnonzero(np.isfinite(x) & (np.abs(x) > _FLOAT32_MAX)).tolist():
            errors.setdefault(
                row, f"{name} {x[row]!r} is outside float32's range (|x| <= {_FLOAT32_MAX:.4g})"
            )
        return x

    def flag(name: str) -> np.ndarray:
        col = column(name)
        if pa.types.is_boolean(col.type):
            return as_numpy(filled(col, False), pa.float64())
        if pa.types.is_integer(col.type):
            return exact_int64(name, col).astype(np.float64)  # 0/1 checked by validate
        refuse(name, col, "booleans")

    def text(name: str, optional: bool = False) -> np.ndarray:
        col = column(name, optional)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            refuse(name, col, "strings (string, large_string or a dictionary of strings)")
        return np.asarray(as_numpy(filled(col, ""), pa.string()), np.str_)

    cand, cand_off = flat("candidate_image_ids")
    played, played_off = flat("played_title_ids")
    timestamp = None
    if "timestamp" in names:
        ts = column("timestamp", optional=True)
        if pa.types.is_timestamp(ts.type):
            if ts.type.tz is None:
                refuse("timestamp", ts, "a timestamp with a time zone (naive timestamps are ambiguous)")
            timestamp = filled(ts.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), 0)
            timestamp = timestamp.to_numpy(zero_copy_only=False)
        else:
            timestamp = exact_int64("timestamp", ts)  # integers are microseconds since the epoch
        out = (timestamp < MIN_TIMESTAMP_US) | (timestamp >= MAX_TIMESTAMP_US)
        for row in np.flatnonzero(out).tolist():
            errors.setdefault(row, f"timestamp {timestamp[row]} us is outside 1970-01-01..2261-12-31")
    features = None
    if member_features_dim:
        fcol = column("member_features")
        lengths = pc.fill_null(pc.list_value_length(fcol), 0).to_numpy(zero_copy_only=False)
        bad = lengths != member_features_dim
        for row in np.flatnonzero(bad).tolist():
            errors.setdefault(
                row, f"member_features must have {member_features_dim} values, got {lengths[row]}"
            )
        features = np.zeros((b, member_features_dim), np.float32)
        flat_f = pc.list_flatten(fcol)
        if not pa.types.is_floating(flat_f.type):
            refuse("member_features", fcol, "a list of floats")
        vals = flat_f.cast(pa.float32()).to_numpy(zero_copy_only=False)
        if not bad.any():
            features[:] = vals.reshape(b, member_features_dim)
    rid = None
    if "request_id" in names:
        rid_col = column("request_id", optional=True)
        rid = text("request_id", optional=True)  # null: none given ("" below, a fresh id when logged)
        for row in np.flatnonzero((rid == "") & rid_col.is_valid().to_numpy(zero_copy_only=False)).tolist():
            errors.setdefault(row, "request_id is the empty string")
    return RequestBatch(
        member_id=ints("member_id"),
        title_id=ints("title_id"),
        candidate_ids=cand,
        candidate_offsets=cand_off,
        played_ids=played,
        played_offsets=played_off,
        country=text("country"),
        language=text("language"),
        device=text("device"),
        hour=ints("hour").astype(np.float64),
        weekday=ints("weekday").astype(np.float64),
        recommender_score=score("recommender_score"),
        prior_interaction=flag("prior_interaction"),
        timestamp_us=timestamp,
        request_id=rid,
        member_features=features,
        errors=errors,
    )


def validate(batch: RequestBatch, max_candidates: int) -> None:
    """Record per-request errors for values the model cannot take (vectorised; rows already in error
    keep their first message)."""
    n = batch.n_candidates
    batch.fail(n == 0, "candidate_image_ids is empty: a request needs at least one candidate image")
    batch.fail(n > max_candidates, f"candidate_image_ids has {{value}} images, more than {max_candidates}", n)
    row = np.repeat(np.arange(len(batch)), n)
    order = np.lexsort((batch.candidate_ids, row))
    same = (row[order][1:] == row[order][:-1]) & (
        batch.candidate_ids[order][1:] == batch.candidate_ids[order][:-1]
    )
    dup_rows = np.zeros(len(batch), bool)
    dup_rows[row[order][1:][same]] = True
    dup_ids = np.zeros(len(batch), np.int64)
    dup_ids[row[order][1:][same]] = batch.candidate_ids[order][1:][same]
    batch.fail(dup_rows, "candidate_image_ids repeats image {value}: candidates must be unique", dup_ids)
    for name, low, high in (("hour", 0, 23), ("weekday", 0, 6), ("prior_interaction", 0, 1)):
        x = getattr(batch, name)
        bad = ~np.isfinite(x) | (x != np.round(x)) | (x < low) | (x > high)
        batch.fail(bad, f"{name} is {{value}}, expected an integer in {low}..{high}", x)
    x = batch.recommender_score
    batch.fail(~np.isfinite(x), "recommender_score is {value}, expected a finite number", x)
    if batch.member_features is not None:
        bad = ~np.isfinite(batch.member_features).all(1)
        batch.fail(bad, "member_features holds a value that is not finite in float32")
    if batch.request_id is not None:
        rid = batch.request_id
        given = rid != ""  # "" marks a request without one: to_impressions gives it a fresh id
        order = np.argsort(rid, kind="stable")
        repeat = np.zeros(len(batch), bool)
        repeat[order[1:]] = (rid[order][1:] == rid[order][:-1]) & given[order][1:]
        batch.fail(repeat, "request_id {value!r} repeats an earlier request of this batch", rid)


def _row_of_nulls(values: Any, offsets: np.ndarray) -> np.ndarray:
    """(B,) True where a list has a null entry."""
    nulls = values.is_null().to_numpy(zero_copy_only=False)
    if not nulls.any():
        return np.zeros(len(offsets) - 1, bool)
    return (
        np.add.reduceat(np.append(nulls, False).astype(np.int64), offsets[:-1]) * (np.diff(offsets) > 0) > 0
    )


def _offsets(parts: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=out[1:])
    return out


_INT64 = np.iinfo(np.int64)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _int(v: Any, name: str) -> int:
    """An exact int64: ints only (no bool, no float, however integral), inside int64's range."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if not _INT64.min <= int(v) <= _INT64.max:
        raise ValueError(f"{name} {v} does not fit int64")
    return int(v)


def _int_list(v: Any, name: str) -> np.ndarray:
    if isinstance(v, str | bytes) or not hasattr(v, "__len__"):
        raise TypeError(f"{name} must be a list of integer ids, got {v!r}")
    arr = np.asarray(v) if len(v) else np.zeros(0, np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        if (
            arr.ndim == 1
            and arr.dtype == object
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        ):
            raise ValueError(f"{name} holds an id that does not fit int64")
        raise TypeError(f"{name} must be a list of integer ids, got {v!r}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > _INT64.max:
        raise ValueError(f"{name} holds an id that does not fit int64: {int(arr.max())}")
    return arr.astype(np.int64)


def _small_int(v: Any, name: str) -> float:
    return float(_int(v, name))  # range-checked by validate


def _score(v: Any, name: str) -> float:
    """A finite real number that float32 holds (the graph's type): int or float, not bool or text."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {v!r}")
    x = float(v)
    if math.isfinite(x) and abs(x) > _FLOAT32_MAX:
        raise ValueError(f"{name} {v!r} is outside float32's range (|x| <= {_FLOAT32_MAX:.4g})")
    return x  # NaN/inf: validate names them


def _flag(v: Any, name: str) -> float:
    """A bool (or the integers 0 and 1)."""
    if isinstance(v, bool | np.bool_):
        return float(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return float(v)
    raise TypeError(f"{name} must be true or false, got {v!r}")


_SCALAR_READERS = {
    "hour": _small_int,
    "weekday": _small_int,
    "recommender_score": _score,
    "prior_interaction": _flag,
}


def _timestamp_us(v: Any) -> int:
    """Microseconds since the Unix epoch from an int (microseconds), a datetime or numpy datetime64."""
    if isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_):
        us = _int(v, "timestamp")
    elif isinstance(v, np.datetime64):
        us = int(v.astype("datetime64[us]").astype(np.int64))
    elif hasattr(v, "timestamp") and hasattr(v, "tzinfo"):
        if v.tzinfo is None:
            raise ValueError(f"timestamp {v!r} has no time zone; pass an aware datetime (UTC)")
        us = round(v.timestamp() * 1_000_000)
    else:
        raise TypeError(f"timestamp must be int microseconds, datetime or datetime64, got {v!r}")
    if not MIN_TIMESTAMP_US <= us < MAX_TIMESTAMP_US:
        raise ValueError(
            f"timestamp {v!r} is outside 1970-01-01..2261-12-31 (int timestamps are microseconds)"
        )
    return us


@dataclass
class GraphInputs:
    """Inputs for the good rows of a batch (``rows`` (G,) positions in the batch) and their candidate
    mask (G, A); ``precomputed``: the feeds are the precomputed graph's (image indices, no embeddings)."""

    rows: np.ndarray
    feeds: dict[str, np.ndarray]
    precomputed: bool = False


def build_inputs(
    batch: RequestBatch,
    vocabs: dict[str, Vocab],
    image_rows: ImageIndex,
    embeddings: np.ndarray,
    input_names: list[str],
    max_history: int,
    *,
    precomputed_names: list[str] | None = None,
    catalogue_rows: int = 0,
) -> GraphInputs:
    """Graph inputs for the rows of ``batch`` without errors; requests whose candidates lack an
    embedding become errors. Shapes: see ``deepbandit.export.onnx_export`` (A = widest good row,
    H = min(max_history, longest good history), both >= 1).

    With ``precomputed_names`` (the precomputed graph's inputs) and every good row's candidates among the
    first ``catalogue_rows`` rows of the table (the export's catalogue, whose tower outputs that graph
    stores), the feeds are that graph's: image indices, no embedding gather. A batch holding an image
    added after export gets ``input_names``' feeds (the embedding graph)."""
    n_cand = batch.n_candidates
    cand_row = np.repeat(np.arange(len(batch)), n_cand)
    emb_row, vocab_idx = image_rows.lookup(batch.candidate_ids)
    unknown = emb_row < 0
    if unknown.any():
        bad = np.zeros(len(batch), bool)
        bad[cand_row[unknown]] = True
        first = np.zeros(len(batch), np.int64)
        first[cand_row[unknown][::-1]] = batch.candidate_ids[unknown][::-1]  # first unknown id of each row
        batch.fail(
            bad,
            "candidate_image_ids: image {value} has no embedding (not in images.npy; add it with add_images)",
            first,
        )
    ok = np.ones(len(batch), bool)
    ok[list(batch.errors)] = False
    rows = np.flatnonzero(ok)
    g = len(rows)
    # candidates of good rows, left-aligned
    keep_c = ok[cand_row]
    lengths = n_cand[rows]
    a = max(int(lengths.max()) if g else 1, 1)
    mask = np.arange(a) < lengths[:, None]
    good_rows = emb_row[keep_c]
    precomputed = precomputed_names is not None and not (good_rows >= catalogue_rows).any()
    if precomputed:
        input_names = precomputed_names
    feeds: dict[str, np.ndarray] = {"candidate_mask": mask}
    if "candidate_embeddings" in input_names:
        cand_emb_rows = np.zeros((g, a), np.int64)
        cand_emb_rows[mask] = good_rows
        feeds["candidate_embeddings"] = embeddings[cand_emb_rows]  # row 0 of the table is padding (zeros)
    if "candidate_image_idx" in input_names:
        idx = np.zeros((g, a), np.int64)
        idx[mask] = vocab_idx[keep_c]  # a catalogue image's index is its row of the table
        feeds["candidate_image_idx"] = idx
    # history: most recent first, first max_history kept
    n_played = np.diff(batch.played_offsets)
    pos = np.arange(len(batch.played_ids)) - np.repeat(batch.played_offsets[:-1], n_played)
    played_row = np.repeat(np.arange(len(batch)), n_played)
    keep_h = ok[played_row] & (pos < max_history)
    h_len = np.minimum(n_played[rows], max_history)
    h = max(int(h_len.max()) if g else 1, 1)
    h_mask = np.arange(h) < h_len[:, None]
    hist = np.zeros((g, h), np.int64)
    hist[h_mask] = vocabs["title"].lookup(batch.played_ids[keep_h])
    feeds.update(
        history_title_idx=hist,
        history_mask=h_mask,
        country_idx=vocabs["country"].lookup(batch.country[rows]),
        language_idx=vocabs["language"].lookup(batch.language[rows]),
        device_idx=vocabs["device"].lookup(batch.device[rows]),
        hour=batch.hour[rows].astype(np.int64),
        weekday=batch.weekday[rows].astype(np.int64),
        recommender_score=batch.recommender_score[rows].astype(np.float32),
        prior_interaction=batch.prior_interaction[rows].astype(np.float32),
        title_idx=vocabs["title"].lookup(batch.title_id[rows]),
    )
    if "member_features" in input_names:
        feeds["member_features"] = batch.member_features[rows]
    if "member_id" in input_names:
        feeds["member_id"] = batch.member_id[rows].astype(np.int64)
    return GraphInputs(rows, {n: feeds[n] for n in input_names}, precomputed)


class ImageIndex:
    """Image id -> (row of the embedding table, vocab index for the hashed id embedding).

    Rows 0..n_images+1 are images.npy (aligned with the image vocabulary); images added after training
    get rows after it and vocab index 1 (unknown), so the model scores them from content alone.
    """

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.extra_ids = np.zeros(0, np.int64)  # sorted
        self.extra_rows = np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, first_row: int) -> None:
        ids = np.asarray(ids, np.int64)
        ids_all = np.concatenate([self.extra_ids, ids])
        rows_all = np.concatenate([self.extra_rows, first_row + np.arange(len(ids))])
        order = np.argsort(ids_all, kind="stable")
        self.extra_ids, self.extra_rows = ids_all[order], rows_all[order]

    def known(self, ids: np.ndarray) -> np.ndarray:
        return self.lookup(ids)[0] >= 0

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embedding rows (N,), -1 where the id has no embedding; vocab indices (N,))."""
        pos, found = self.vocab.find(ids)
        vocab_idx = np.where(found, pos + N_RESERVED, UNK).astype(np.int64)
        rows = np.where(found, vocab_idx, -1)
        if len(self.extra_ids):
            epos = np.minimum(np.searchsorted(self.extra_ids, ids), len(self.extra_ids) - 1)
            efound = ~found & (self.extra_ids[epos] == ids)
            rows = np.where(efound, self.extra_rows[epos], rows)
        return rows, vocab_idx


def check_graph_inputs(feeds: dict[str, Any], manifest: dict[str, Any], precomputed: bool = False) -> None:
    """Check inputs meant for the exported ONNX graph (``precomputed``: model_precomputed.onnx) against its
    manifest; raise ValueError naming the input, row and value. For clients that feed the graph themselves
    (a Triton client, a custom service): the graph does no checking of its own, so an index of -1 would
    silently read the last embedding row, hour 1000 or a NaN embedding would give a score, and an empty
    history axis would fail inside onnxruntime. ``ArtworkService`` builds its inputs from validated
    requests and needs no check.
    """
    if precomputed and not manifest.get("precomputed_inputs"):
        raise ValueError("this export has no precomputed graph (model_precomputed.onnx)")
    required = list(manifest["precomputed_inputs"] if precomputed else manifest["inputs"])
    noise_spec = manifest.get("posterior_noise")
    rest = {k: v for k, v in feeds.items() if k != "posterior_noise"}
    check_input_values(
        rest,
        required=required,
        vocab_rows={k: len(v["keys"]) + N_RESERVED for k, v in manifest["vocabularies"].items()},
        embedding_dim=int(manifest["embedding_dim"]),
        member_features_dim=int(manifest.get("member_features_dim") or 0),
    )
    if noise_spec is None:
        if "posterior_noise" in feeds:
            raise ValueError("posterior_noise: this graph takes no posterior noise")
        return
    noise = np.asarray(feeds.get("posterior_noise")) if feeds.get("posterior_noise") is not None else None
    width = noise_spec["shape"][1]
    if (
        noise is None
        or noise.dtype != np.float32
        or noise.ndim != 2
        or noise.shape[0] < 1
        or noise.shape[1] != width
    ):
        got = None if noise is None else f"{noise.dtype} {noise.shape}"
        raise ValueError(
            f"posterior_noise must be float32 (samples >= 1, {width}) standard normals; got {got}"
        )
    if not np.isfinite(noise).all():
        raise ValueError("posterior_noise holds a value that is not finite")
