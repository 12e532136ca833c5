"""Logs to tensors: :class:`ImpressionBatch`, the one batch type every later stage takes.

Arrow record batches become padded tensors without a Python loop over rows: a list column is its offsets
and flat values, a padded matrix is one boolean-mask scatter of the flat values, and ids become embedding
rows through a vectorised vocabulary lookup (:mod:`deepbandit.data.vocab`). Image embeddings are not copied
per row: the batch carries image indices into an :class:`ImageTable` built once from images.parquet.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch
from torch.utils.data import IterableDataset, get_worker_info

from deepbandit.data.features import INPUT_NAMES, REQUEST_FIELDS, ModelInputs
from deepbandit.data.io import DEFAULT_BATCH_ROWS, ShardStrategy, iter_record_batches, open_dataset
from deepbandit.data.schema import MAX_HISTORY
from deepbandit.data.vocab import FeatureVocabs, Vocab

# Columns table_to_batch reads: the logged decision, the row's keys and the model inputs' sources
# (data.features; request_id and propensity_kind are not needed for training).
TENSOR_COLUMNS = ("timestamp", "member_id", "chosen_image_id", "propensity", "reward", *REQUEST_FIELDS)
OPTIONAL_TENSOR_COLUMNS = ("action_dist", "member_features")


@dataclass
class ImpressionBatch:
    """B logged impressions as tensors: the model's inputs apart from the logged decision and outcome.
    A = candidates of the widest row, H = history length kept.

    ``inputs`` (:class:`~deepbandit.data.features.ModelInputs`, the contract of ``data/features.py``):
    candidate and history matrices are left-aligned; entries past a row's length are index 0 (the
    vocabularies' padding row) and False in the matching mask. Vocabulary indices are 0 = pad, 1 = unknown
    (unseen at fit time), 2.. = known. ``A >= 1`` and ``H >= 1`` always (an all-padding column when no row
    has history), so no dimension is ever empty. ``candidate_embeddings`` is None: the candidates are
    ``candidate_image_idx``, rows of an :class:`ImageTable` (``model_inputs`` gathers them);
    ``member_features`` is None when the log has none.

    The logged decision and its row (dtype, shape):
        member_id: int64 (B,) raw member id (members are not embedded by id).
        n_candidates: int64 (B,) real candidates per row (``candidate_mask.sum(1)``), the row's n_actions.
        action: int64 (B,) position of the chosen image among the row's candidates, in [0, n_candidates).
        pscore: float32 (B,) propensity of ``action`` under the logging policy.
        reward: float32 (B,) observed reward; 0 where ``reward_observed`` is False.
        reward_observed: bool (B,) False where the reward is null (attribution window still open).
        timestamp: int64 (B,) seconds since the Unix epoch, UTC.
        action_dist: float32 (B, A) logging distribution over the candidates (0 on padding), or None
            when the log has no ``action_dist`` column.
    """

    inputs: ModelInputs
    member_id: torch.Tensor
    n_candidates: torch.Tensor
    action: torch.Tensor
    pscore: torch.Tensor
    reward: torch.Tensor
    reward_observed: torch.Tensor
    timestamp: torch.Tensor
    action_dist: torch.Tensor | None = None

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ImpressionBatch:
        """A new batch with ``fn`` applied to every tensor (inputs included; None fields stay None)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "inputs":
                values[f.name] = value.apply(fn)
            else:
                values[f.name] = None if value is None else fn(value)
        return ImpressionBatch(**values)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImpressionBatch:
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ImpressionBatch:
        """Page-locked copy, so ``.to("cuda", non_blocking=True)`` overlaps with compute (DataLoader calls it)."""
        return self.apply(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.action.shape[0]

    def __getitem__(self, rows: torch.Tensor | slice | int) -> ImpressionBatch:
        """Rows of the batch: a slice, a LongTensor of row indices (on any device, e.g. for GPU-resident
        data sampled by ``torch.randint``), a bool mask, or an int (a batch of one row). A and H stay as
        they are even if the selected rows need less padding."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        if isinstance(rows, slice):
            return self.apply(lambda t: t[rows])
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return self.apply(lambda t: t.index_select(0, rows.to(t.device)))

    @property
    def candidate_mask(self) -> torch.Tensor:
        """(B, A) bool, True on real candidates (the inputs'; the logged decision's candidate set)."""
        return self.inputs.candidate_mask

    @property
    def n_actions(self) -> int:
        """A, the padded candidate width."""
        return self.inputs.candidate_mask.shape[1]

    @property
    def device(self) -> torch.device:
        return self.action.device

    @staticmethod
    def cat(batches: Sequence[ImpressionBatch]) -> ImpressionBatch:
        """Concatenate batches along rows, padding (B, A) and (B, H) tensors to the widest (e.g. to hold a
        whole converted dataset on the GPU and sample from it). Optional tensors must be all present or
        all None."""
        if not batches:
            raise ValueError("ImpressionBatch.cat: no batches")

        def joined(name: str, parts: list) -> torch.Tensor | None:
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"ImpressionBatch.cat: {name} is None in some batches and not in others")
            if parts[0].dim() == 2 and name != "member_features":
                width = max(p.shape[1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
            return torch.cat(parts)

        out = {}
        for f in fields(ImpressionBatch):
            if f.name == "inputs":
                out["inputs"] = ModelInputs(
                    **{n: joined(n, [getattr(b.inputs, n) for b in batches]) for n in INPUT_NAMES}
                )
            else:
                out[f.name] = joined(f.name, [getattr(b, f.name) for b in batches])
        return ImpressionBatch(**out)


@dataclass
class ImageTable:
    """Image embeddings aligned with the image vocabulary, built once (not copied per impression row).

    Fields:
        embedding: float32 (n_images + 2, D); row i belongs to the image with vocab index i, rows 0 (pad)
            and 1 (unknown) are zeros. ``embedding[batch.inputs.candidate_image_idx]`` is (B, A, D).
    """

    embedding: torch.Tensor

    @classmethod
    def from_table(cls, images: pa.Table, vocab: Vocab) -> ImageTable:
        """Build from an images table (``image_id``, ``embedding``) and the image vocab.

        Raises:
            ValueError: an image id is duplicated or unknown to the vocab, a vocab id has no row in the
                table, embeddings differ in length or hold nulls.
        """
        for name in ("image_id", "embedding"):
            if name not in images.column_names:
                raise KeyError(f"images table has no column {name!r}; it has {images.column_names}")
        ids = images.column("image_id").to_numpy()
        idx = vocab.lookup(ids)
        unknown = np.flatnonzero(idx == 1)
        if len(unknown):
            raise ValueError(
                f"images table row {unknown[0]}: image_id {ids[unknown[0]]} is not in the image vocab"
            )
        counts = np.bincount(idx, minlength=len(vocab))
        if (counts > 1).any():
            dup = int(np.flatnonzero(counts > 1)[0])
            raise ValueError(f"images table: image_id {vocab.decode([dup])[0]} appears {counts[dup]} times")
        absent = np.flatnonzero(counts[2:] == 0)
        if len(absent):
            raise ValueError(
                f"images table lacks {len(absent)} image ids of the vocab (e.g. {vocab.keys[absent[0]]}); "
                "fit the image vocab from this table"
            )
        emb = images.column("embedding").combine_chunks()
        matrix = _fixed_width(emb, "images.embedding", np.float32)
        table = np.zeros((len(vocab), matrix.shape[1]), dtype=np.float32)
        table[idx] = matrix
        return cls(torch.from_numpy(table))

    @property
    def dim(self) -> int:
        return self.embedding.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageTable:
        return ImageTable(self.embedding.to(device, non_blocking=non_blocking))


def title_genre_matrix(titles: pa.Table, vocabs: FeatureVocabs) -> torch.Tensor:
    """(n_titles + 2, G) float32 multi-hot genres aligned with ``vocabs.title``, rows normalised to sum 1
    (rows of titles without genres, padding and unknown stay 0). Titles outside the vocab are ignored."""
    n_genres = len(vocabs.genre) - 2
    out = np.zeros((len(vocabs.title), max(n_genres, 1)), dtype=np.float32)
    genres = titles.column("genres").combine_chunks()
    t_idx = vocabs.title.lookup(titles.column("title_id"))
    lengths = pc.list_value_length(genres).to_numpy(zero_copy_only=False)
    g_idx = vocabs.genre.lookup(pc.list_flatten(genres)) - 2
    rows = np.repeat(t_idx, lengths)
    keep = (rows >= 2) & (g_idx >= 0)
    out[rows[keep], g_idx[keep]] = 1.0
    sums = out.sum(1, keepdims=True)
    return torch.from_numpy(np.divide(out, sums, out=np.zeros_like(out), where=sums > 0))


def table_to_batch(
    data: pa.RecordBatch | pa.Table, vocabs: FeatureVocabs, *, max_history: int = MAX_HISTORY
) -> ImpressionBatch:
    """Convert impressions (Arrow) to an :class:`ImpressionBatch`, vectorised (no Python loop over rows).

    History is truncated to the ``max_history`` most recent plays (the lists are most recent first, so
    the first ``max_history`` entries): a deliberate bound on the model's input, not a data error.
    Unseen ids and categories map to index 1 (unknown); see :mod:`deepbandit.data.vocab`.

    Args:
        data: B rows with at least :data:`TENSOR_COLUMNS`; ``action_dist`` and ``member_features`` are
            used when present. ``country``/``language``/``device`` may be strings or dictionary arrays.
        vocabs: the vocabularies fitted on the training data.
        max_history: H is ``min(max_history, longest history in the batch)`` (at least 1).

    Raises:
        KeyError: a needed column is missing.
        ValueError: nulls in a column that forbids them, a row whose chosen image is not among its
            candidates, or a row whose action_dist length differs from its candidate count (the message
            names the column and the row, and the request id when the data has it).
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    names = data.column_names if isinstance(data, pa.Table) else data.schema.names
    missing = [c for c in TENSOR_COLUMNS if c not in names]
    if missing:
        raise KeyError(f"impressions lack column(s) {missing}; table_to_batch needs {list(TENSOR_COLUMNS)}")

    def col(name: str, nullable: bool = False) -> pa.Array:
        c = data.column(name)
        if isinstance(c, pa.ChunkedArray):
            c = pa.concat_arrays(c.chunks) if c.num_chunks != 1 else c.chunk(0)
        if c.null_count and not nullable:
            raise ValueError(f"column {name!r} row {_first_null(c)}{_rid(data, _first_null(c))}: null value")
        return c

    b = data.num_rows
    # --- candidates and the chosen position ---------------------------------------------------------
    c_off, c_len, c_raw = _list_parts(col("candidate_image_ids"), "candidate_image_ids", np.int64)
    width = max(int(c_len.max()) if b else 0, 1)
    cand_mask = _mask(c_len, width)
    action = _position_of(c_raw, c_off, c_len, col("chosen_image_id"), data)
    cand_idx = _scatter(vocabs.image.lookup(c_raw), cand_mask, c_len, np.int64)

    # --- history: most recent first, keep the first max_history ------------------------------------
    h_off, h_len, h_raw = _list_parts(col("played_title_ids"), "played_title_ids", np.int64)
    if b and h_len.max() > max_history:
        h_raw = h_raw[_keep_first(h_off, h_len, max_history)]
        h_len = np.minimum(h_len, max_history)
    h_width = max(int(h_len.max()) if b else 0, 1)
    hist_mask = _mask(h_len, h_width)
    hist_idx = _scatter(vocabs.title.lookup(h_raw), hist_mask, h_len, np.int64)

    reward = col("reward", nullable=True)
    if reward.null_count:
        observed = reward.is_valid().to_numpy(zero_copy_only=False)
        reward = pc.fill_null(reward, 0.0)
    else:
        observed = np.ones(b, dtype=bool)

    action_dist = None
    # the contract lets action_dist be null on some rows; the logging distribution is then known only in
    # part, and is used nowhere (as for logs without the column), the same rule as evaluation's
    if "action_dist" in names and col("action_dist", nullable=True).null_count == 0:
        d_off, d_len, d_val = _list_parts(col("action_dist"), "action_dist", None)  # cast by the scatter
        bad = np.flatnonzero(d_len != c_len)
        if len(bad):
            r = int(bad[0])
            raise ValueError(
                f"column 'action_dist' row {r}{_rid(data, r)}: {d_len[r]} probabilities for {c_len[r]} candidates"
            )
        action_dist = torch.from_numpy(_scatter(d_val, cand_mask, c_len, np.float32))
    member_features = None
    if "member_features" in names:
        member_features = torch.from_numpy(
            _fixed_width(col("member_features", nullable=True), "member_features", np.float32)
        )

    t = torch.from_numpy
    member_id = t(np.array(col("member_id").to_numpy(), dtype=np.int64))
    inputs = ModelInputs(
        history_title_idx=t(hist_idx),
        history_mask=t(hist_mask),
        country_idx=t(vocabs.country.lookup(col("country"))),
        language_idx=t(vocabs.language.lookup(col("language"))),
        device_idx=t(vocabs.device.lookup(col("device"))),
        hour=t(col("hour").to_numpy().astype(np.int64)),
        weekday=t(col("weekday").to_numpy().astype(np.int64)),
        recommender_score=t(col("recommender_score").to_numpy().astype(np.float32)),
        prior_interaction=t(col("prior_interaction").to_numpy(zero_copy_only=False).astype(np.float32)),
        title_idx=t(vocabs.title.lookup(col("title_id"))),
        candidate_mask=t(cand_mask),
        candidate_image_idx=t(cand_idx),
        member_features=member_features,
        member_id=member_id,
    )
    return ImpressionBatch(
        inputs=inputs,
        member_id=member_id,
        n_candidates=t(c_len.astype(np.int64)),
        action=t(action),
        pscore=t(col("propensity").to_numpy().astype(np.float32)),
        reward=t(reward.to_numpy().astype(np.float32)),
        reward_observed=t(observed),
        timestamp=t(_epoch_seconds(col("timestamp"))),
        action_dist=action_dist,
    )


def _list_parts(array: pa.Array, name: str, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets (B+1,) from 0, lengths (B,), flat values (N,)) of a list array, honouring slicing."""
    if isinstance(array, pa.FixedSizeListArray):
        n = array.type.list_size
        offsets = np.arange(len(array) + 1, dtype=np.int64) * n
        values = array.flatten()
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        offsets = array.offsets.to_numpy().astype(np.int64)
        # .values is the unsliced child; the offsets say which part of it this (maybe sliced) array uses
        values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    else:
        raise TypeError(f"column {name!r}: expected a list column, got {array.type}")
    if values.null_count:
        row = int(np.searchsorted(offsets, _first_null(values), side="right") - 1)
        raise ValueError(f"column {name!r} row {row}: null element inside the list")
    values = values.to_numpy()
    return offsets, np.diff(offsets), values if dtype is None else values.astype(dtype, copy=False)


def _keep_first(offsets: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool over a list column's flat values: True on the first ``k`` values of every row.

    The dropped tail [start + k, end) of each long row is marked +1 at its start and -1 at its end in a
    difference array; its running sum is nonzero exactly on dropped values (no per-value row lookup).
    """
    long = np.flatnonzero(lengths > k)
    marks = np.zeros(int(offsets[-1]) + 1, dtype=np.int8)
    marks[offsets[long] + k] = 1  # tails never touch: a start is never another tail's end
    marks[offsets[long + 1]] -= 1
    return np.cumsum(marks[:-1], dtype=np.int8) == 0


def _mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """(B, width) bool, True on the first ``lengths[i]`` entries of row i."""
    if len(lengths) and lengths.min() == width:
        return np.ones((len(lengths), width), dtype=bool)
    return np.arange(width) < lengths[:, None]


def _scatter(flat: np.ndarray, mask: np.ndarray, lengths: np.ndarray, dtype) -> np.ndarray:
    """(B, W) matrix holding each row's values left-aligned, zeros after: one masked assignment."""
    if len(lengths) and lengths.min() == mask.shape[1]:  # every row full: the flat values are the matrix
        if not flat.flags.writeable or flat.dtype != dtype:
            flat = np.array(flat, dtype=dtype)  # a copy: Arrow's buffers are read-only
        return flat.reshape(mask.shape)
    out = np.zeros(mask.shape, dtype=dtype)
    out[mask] = flat  # row-major order of True entries == order of the flat values
    return out


def _position_of(
    raw: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, chosen: pa.Array, data
) -> np.ndarray:
    """(B,) index of ``chosen[i]`` within row i's candidates (flat ``raw`` with ``offsets``).

    Raises naming the first row where the chosen id is not exactly once among the candidates.
    """
    chosen = chosen.to_numpy()
    hits = np.flatnonzero(raw == np.repeat(chosen, lengths))
    if len(hits) == len(chosen) and ((hits >= offsets[:-1]) & (hits < offsets[1:])).all():
        return hits - offsets[:-1]  # hit i lies in row i for every i: exactly one per row
    rows = np.searchsorted(offsets, hits, side="right") - 1  # row of each hit (empty rows skipped)
    counts = np.bincount(rows, minlength=len(chosen))
    r = int(np.flatnonzero(counts != 1)[0])
    what = "is not among" if counts[r] == 0 else f"appears {counts[r]} times in"
    raise ValueError(f"row {r}{_rid(data, r)}: chosen_image_id {chosen[r]} {what} candidate_image_ids")


def _fixed_width(array: pa.Array, name: str, dtype) -> np.ndarray:
    """(B, F) matrix of a list column whose non-null rows all have F values; null rows (allowed by the
    contract for member_features: nothing extra known about the member) read as zeros."""
    offsets, lengths, values = _list_parts(array, name, dtype)
    present = np.flatnonzero(lengths > 0) if array.null_count else np.arange(len(lengths))
    width = int(lengths[present[0]]) if len(present) else 0
    if (lengths[present] != width).any():
        r = int(present[np.flatnonzero(lengths[present] != width)[0]])
        raise ValueError(f"column {name!r} row {r}: {lengths[r]} values, row {present[0]} has {width}")
    if not array.null_count:  # a copy: Arrow's buffers are read-only and the tensor must own its memory
        return np.array(values).reshape(len(lengths), width)
    out = np.zeros((len(lengths), width), dtype)
    out[present] = np.asarray(values).reshape(len(present), width)
    return out


def _epoch_seconds(ts: pa.Array) -> np.ndarray:
    micros = ts.cast(pa.timestamp("us", tz=ts.type.tz)).cast(pa.int64()).to_numpy()
    return np.floor_divide(micros, 1_000_000)


def _first_null(array: pa.Array) -> int:
    return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])


def _rid(data, row: int) -> str:
    """' (request_id ...)' when the data carries request ids, to find the row in the source logs."""
    names = data.column_names if isinstance(data, pa.Table) else data.schema.names
    return f" (request_id {data.column('request_id')[row].as_py()!r})" if "request_id" in names else ""


def tune_allocator(threshold_bytes: int = 1 << 28) -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of handing it back to the OS.

    Converting a batch of 65536 rows allocates tens of MB of fresh arrays. By default glibc serves each
    large one with new pages from the OS, and the page faults on first touch took ~40% of the conversion
    time on a 2-core VM (1.05 -> 1.7M rows/s in scripts/bench_data.py's setting). With this, arrays up to
    ``threshold_bytes`` come from the heap and freed memory stays there for the next batch; resident memory
    then stays at its peak, which is still bounded by the batch size. Process-wide, hence opt-in: ``deepbandit
    train`` calls it (``trainer.tune_allocator``, on by default: training steps allocate the same large
    activations every step, 21k -> 25k impressions per CPU-second in scripts/bench_train.py), and
    streaming loader workers do. Returns False (and does nothing) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold_bytes)) and bool(
        mallopt(m_trim_threshold, 2 * threshold_bytes)
    )


class ImpressionStream(IterableDataset):
    """Stream a dataset shard as :class:`ImpressionBatch` es, memory bounded by ``batch_rows``.

    Each (DDP rank, DataLoader worker) reads its own :func:`~deepbandit.data.io.shard_fragments` shard.
    ``rank``/``world_size`` default to the initialised ``torch.distributed`` process group, else 0/1;
    workers come from ``torch.utils.data.get_worker_info``. Use with ``DataLoader(stream, batch_size=None,
    num_workers=k, pin_memory=True)``; with ``num_workers=0`` decoding still overlaps conversion (a
    background thread). Ranks may get a different number of batches (shards are balanced by rows, to
    within a row group): equalising them for DDP is the caller's job.

    With ``shuffle_seed``, each epoch (:meth:`set_epoch`, before the loader's workers start: not with
    ``persistent_workers``) reads the shard's row groups in a new order and permutes the rows within each
    batch; without, the order is fixed. ``optional_columns`` names the optional columns (``action_dist``,
    ``member_features``) to read when the log has them. Inside a loader worker the stream calls
    :func:`tune_allocator` (the worker only converts batches); in the main process that is the caller's
    choice.
    """

    def __init__(
        self,
        source: str | os.PathLike | ds.Dataset,
        vocabs: FeatureVocabs,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        max_history: int = MAX_HISTORY,
        start=None,
        end=None,
        filter: ds.Expression | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        strategy: ShardStrategy = "balanced",
        shuffle_seed: int | None = None,
        optional_columns: Sequence[str] = OPTIONAL_TENSOR_COLUMNS,
    ):
        super().__init__()
        # opened now so a bad path fails here, not inside a worker
        self.dataset = (
            source if isinstance(source, ds.Dataset) else open_dataset(source, categories_as_dictionary=True)
        )
        names = self.dataset.schema.names
        unknown = [c for c in optional_columns if c not in OPTIONAL_TENSOR_COLUMNS]
        if unknown:
            raise ValueError(f"optional_columns {unknown}: expected some of {list(OPTIONAL_TENSOR_COLUMNS)}")
        # optional columns are read when present; leave action_dist out when nothing uses it (decoding it
        # costs about as much as the candidate ids)
        self.columns = list(TENSOR_COLUMNS) + [c for c in optional_columns if c in names]
        missing = [c for c in TENSOR_COLUMNS if c not in names]
        if missing:
            raise KeyError(f"{source}: impressions lack column(s) {missing}")
        self.vocabs = vocabs
        self.batch_rows = batch_rows
        self.max_history = max_history
        self.start, self.end, self.filter = start, end, filter
        self.rank, self.world_size = rank, world_size
        self.strategy: ShardStrategy = strategy
        self.shuffle_seed = shuffle_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[ImpressionBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            tune_allocator()  # a loader worker process only converts batches: the process-wide setting is safe
        rank, world_size = self.rank, self.world_size
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist else 0
            world_size = torch.distributed.get_world_size() if dist else 1
        seed = None
        generator = None
        if self.shuffle_seed is not None:
            # one seed per epoch for every process (each permutes its own shard's row groups with it), and a
            # different row permutation stream per shard
            seed = int(np.random.SeedSequence([self.shuffle_seed, self.epoch]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed + 1 + rank * num_workers + worker)
        for record_batch in iter_record_batches(
            self.dataset,
            columns=self.columns,
            start=self.start,
            end=self.end,
            filter=self.filter,
            batch_rows=self.batch_rows,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            strategy=self.strategy,
            shuffle_seed=seed,
        ):
            batch = table_to_batch(record_batch, self.vocabs, max_history=self.max_history)
            if generator is not None:
                batch = batch[torch.randperm(len(batch), generator=generator)]
            yield batch


__all__ = [
    "OPTIONAL_TENSOR_COLUMNS",
    "TENSOR_COLUMNS",
    "ImageTable",
    "ImpressionBatch",
    "ImpressionStream",
    "table_to_batch",
    "title_genre_matrix",
    "tune_allocator",
]
