"""Data for training: time split, vocabularies fitted on the training window, and two loaders.

* Resident path (default when a split fits): the split is converted once with ``table_to_batch``, moved to
  the training device, and batches are drawn there as index slices (``ImpressionBatch[rows]``), so a step
  costs no per-batch DataLoader, collate or host-to-device work. Each epoch draws one permutation from a
  generator seeded by (seed, epoch); in DDP every rank takes its own interleaved part of each *global*
  batch, so the optimisation sees the same global batches whatever the number of processes.
* Streaming path: ``ImpressionStream`` over the Parquet shards (each DDP rank / loader worker reads its own
  row groups), pinned memory and non-blocking copies, for logs larger than memory.

Every loader yields ``(ImpressionBatch, row_key)`` with ``row_key`` (B,) int64 a stable id of each logged
row (index in the split, or a hash of member/title/timestamp when streaming), which keeps each ensemble
member's Poisson bootstrap resample fixed across epochs. Loaders are built with ``batch_size=None`` or are
plain iterables, so Lightning's collate never touches an ImpressionBatch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from deepbandit.data import io
from deepbandit.data.schema import IMAGES_FILE, IMPRESSIONS_DIR, TITLES_FILE
from deepbandit.data.tensors import (
    ImageTable,
    ImpressionBatch,
    ImpressionStream,
    table_to_batch,
    title_genre_matrix,
)
from deepbandit.data.vocab import FeatureVocabs
from deepbandit.errors import ConfigError, UserError
from deepbandit.training.config import DataConfig, parse_split_at

_US = 1_000_000
log = logging.getLogger(__name__)


class TrainingDataError(UserError, ValueError):
    """The logs cannot train a useful model (nothing to learn, deterministic logging, empty split)."""


def split_time(ts_us: np.ndarray, cfg: DataConfig) -> int:
    """The first validation timestamp (UTC microseconds): ``split_at`` or the last ``val_fraction`` of the
    logged time range."""
    if cfg.split_at is not None:
        return parse_split_at(cfg.split_at)
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    lo, hi = int(ts_us.min()), int(ts_us.max())
    return lo + int(round((1.0 - cfg.val_fraction) * (hi - lo)))


def row_keys(member_id: torch.Tensor, title_id: torch.Tensor, timestamp: torch.Tensor) -> torch.Tensor:
    """A stable int64 key per logged row for the streaming path (no row index there): a mix of the member,
    the title index and the timestamp. Collisions only make two rows share bootstrap weights."""
    return member_id * 1_000_003 + timestamp * 7_919 + title_id


def check_learnable(table: pa.Table, source: str) -> None:
    """Refuse logs that cannot train a policy, with the reason (before any step runs)."""
    if table.num_rows == 0:
        raise TrainingDataError(f"{source}: the training split is empty; check data.split_at / val_fraction")
    if table.column("reward").null_count == table.num_rows:
        raise TrainingDataError(
            f"{source}: no reward is known yet: reward is null on every row of the training split "
            f"({table.num_rows} rows; the attribution window is still open); train once rewards are joined"
        )
    reward = pc.fill_null(table.column("reward"), 0.0)
    if pc.max(pc.abs(reward)).as_py() == 0:
        raise TrainingDataError(
            f"{source}: nothing to learn: every logged reward is 0 in the training split "
            f"({table.num_rows} rows); check the reward join / attribution window"
        )
    if pc.min(table.column("propensity")).as_py() == 1.0:
        raise TrainingDataError(
            f"{source}: propensity is 1 on every row of the training split ({table.num_rows} rows): the "
            "logging policy was deterministic, so the logs never show an alternative image and off-policy "
            "learning is impossible; log with exploration (epsilon-greedy, softmax or uniform)"
        )


class ResidentLoader:
    """Shuffled (or ordered) index batches over an ImpressionBatch held on one device.

    Iterating yields ``(batch[rows], rows)``. ``epoch_fn`` returns the current epoch (the permutation of
    epoch e is a pure function of (seed, e)); ``rank``/``world_size`` pick this process's part of every
    global batch of ``batch_size`` rows. A last global batch of fewer rows than processes is skipped
    (otherwise a rank would get an empty batch).
    """

    def __init__(
        self,
        data: ImpressionBatch,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch_fn=lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.epoch_fn, self.rank, self.world_size = epoch_fn, rank, world_size

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[ImpressionBatch, torch.Tensor]]:
        n, device = len(self.data), self.data.device
        if self.shuffle:
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch_fn()]).generate_state(1)[0])
            )
            order = torch.randperm(n, generator=g).to(device)
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, self.batch_size):
            global_rows = order[start : start + self.batch_size]
            if len(global_rows) < self.world_size:
                # a last global batch of fewer rows than processes would leave some rank an empty batch
                # (a NaN mean loss); its few rows (< world_size) sit this epoch out
                break
            rows = global_rows[self.rank :: self.world_size]
            yield self.data[rows], rows


class EvenBatches:
    """Ends every DDP rank's epoch at the same step on the streaming path.

    Ranks stream their own shards, balanced by rows only to within a row group, so they can hold different
    numbers of batches; a rank that finished while others still step would leave them waiting in the
    gradient all-reduce forever. Before each batch the ranks agree, with one all-reduce of a flag (MIN),
    that every one of them has a batch; the batches left on the longer shards are skipped for this epoch,
    counted (``skipped_batches``, ``skipped_rows``, cumulative) and reported in a warning. Each epoch reads
    the shards' row groups in a new order, so different rows are left out. Without an initialised process
    group of more than one process it passes the loader through untouched.
    """

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.dataset = getattr(loader, "dataset", None)  # StreamEpoch sets the epoch on it
        self.skipped_batches = 0
        self.skipped_rows = 0

    def __iter__(self) -> Iterator:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            yield from self.loader
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        batches = iter(self.loader)
        steps = 0
        while True:
            item = next(batches, None)
            every_rank_has_one = torch.tensor([int(item is not None)], device=device)
            dist.all_reduce(every_rank_has_one, op=dist.ReduceOp.MIN)
            if every_rank_has_one.item():
                steps += 1
                yield item
                continue
            left = ([] if item is None else [item]) + list(batches)
            rows = sum(len(batch) for batch, _ in left)
            left_everywhere = torch.tensor([rows], device=device)
            dist.all_reduce(left_everywhere)  # every rank learns the same total, so all raise or none does
            if steps == 0 and left_everywhere.item() > 0:
                raise TrainingDataError(
                    f"streaming DDP over {dist.get_world_size()} processes: at least one rank's shard of the "
                    f"training split is empty while others hold {int(left_everywhere.item())} rows, so no "
                    "step could run. Shards are whole Parquet row groups: write the impressions with more, "
                    "smaller row groups (at least one per process), or use the resident path "
                    "(data.resident=true) when the split fits in device memory"
                )
            if left:
                self.skipped_batches += len(left)
                self.skipped_rows += rows
                log.warning(
                    "rank %d: skipped its last %d batch(es) (%d rows) this epoch so that every DDP rank "
                    "takes the same number of steps (streaming shards differ by up to a row group)",
                    dist.get_rank(), len(left), rows,
                )  # fmt: skip
            return


class _KeyedStream(torch.utils.data.IterableDataset):
    def __init__(self, stream: ImpressionStream):
        super().__init__()
        self.stream = stream

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self):
        for batch in self.stream:
            yield batch, row_keys(batch.member_id, batch.inputs.title_idx, batch.timestamp)


class BanditDataModule(L.LightningDataModule):
    """Reads a dataset root, splits it in time and serves both splits.

    After ``prepare()`` (called by ``train`` before the module is built, and idempotent): ``vocabs``
    (titles/categories from the training split; images from the whole images table), ``image_table``,
    ``title_genres``, ``train_table``/``val_table`` (Arrow, for ground truth and reporting) and
    ``split_us``.
    """

    def __init__(self, cfg: DataConfig, batch_size: int, seed: int = 0):
        super().__init__()
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.root = Path(cfg.path)
        self.vocabs: FeatureVocabs | None = None

    def prepare(self) -> None:
        if self.vocabs is not None:
            return
        impressions = self.root / IMPRESSIONS_DIR
        table = io.open_dataset(impressions).to_table()
        ts = table.column("timestamp").cast(pa.int64()).to_numpy()
        self.split_us = split_time(ts, self.cfg)
        is_train = ts < self.split_us
        self.train_table = table.filter(pa.array(is_train))
        self.val_table = table.filter(pa.array(~is_train))
        check_learnable(self.train_table, str(impressions))
        if self.val_table.num_rows == 0:
            raise TrainingDataError(
                f"{impressions}: the validation split is empty (split at {self.split_iso})"
            )
        images = io.read_images(self.root / IMAGES_FILE)
        titles = io.read_titles(self.root / TITLES_FILE)
        # Titles (and their genres) a model can know are those of the training window; later titles map to
        # "unknown". Images are different: their embeddings are side information available at serving time,
        # so the image vocabulary spans the whole images table and a new image is scored from its embedding.
        train_titles = pc.unique(
            pa.concat_arrays(
                [
                    self.train_table.column("title_id").combine_chunks(),
                    pc.list_flatten(self.train_table.column("played_title_ids")).combine_chunks(),
                ]
            )
        )
        known_titles = titles.filter(pc.is_in(titles.column("title_id"), value_set=train_titles))
        self.vocabs = FeatureVocabs.build(self.train_table, images=images, titles=known_titles)
        self.image_table = ImageTable.from_table(images, self.vocabs.image)
        self.title_genres = title_genre_matrix(known_titles, self.vocabs)
        self.member_features_dim = 0
        if "member_features" in table.column_names:
            self.member_features_dim = int(
                pc.max(pc.list_value_length(table.column("member_features"))).as_py()
            )
        n = max(self.train_table.num_rows, self.val_table.num_rows)
        self.resident = (
            self.cfg.resident if self.cfg.resident is not None else n <= self.cfg.resident_max_rows
        )
        self._train = self._val = None

    @property
    def split_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.split_us / _US, dt.UTC).isoformat()

    def batch_of(self, table: pa.Table) -> ImpressionBatch:
        return table_to_batch(table, self.vocabs, max_history=self.cfg.max_history)

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank()
        if self.batch_size % world:
            raise ConfigError(
                f"trainer.batch_size {self.batch_size} must be divisible by the {world} processes"
            )
        if self.resident:
            if self._train is None:
                self._train = self.batch_of(self.train_table).to(self._device())
            return ResidentLoader(
                self._train,
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
                rank=rank,
                world_size=world,
            )
        return EvenBatches(self._stream(end=self.split_us, batch_rows=self.batch_size // world, shuffle=True))

    def val_dataloader(self):
        # Every rank evaluates the whole validation split (policy values need all rows; it is small next
        # to training), so the reported metrics are identical on every rank.
        if self.resident:
            if self._val is None:
                self._val = self.batch_of(self.val_table).to(self._device())
            return ResidentLoader(self._val, max(self.batch_size, 8192), shuffle=False)
        return self._stream(start=self.split_us, batch_rows=self.cfg.stream_batch_rows, shuffle=False)

    def _stream(self, *, batch_rows: int, shuffle: bool, start=None, end=None) -> DataLoader:
        as_dt = lambda us: None if us is None else dt.datetime.fromtimestamp(us / _US, dt.UTC)  # noqa: E731
        stream = ImpressionStream(
            self.root / IMPRESSIONS_DIR,
            self.vocabs,
            batch_rows=batch_rows,
            max_history=self.cfg.max_history,
            start=as_dt(start),
            end=as_dt(end),
            rank=None if shuffle else 0,  # validation: the whole split on every rank
            world_size=None if shuffle else 1,
            shuffle_seed=self.seed if shuffle else None,
            optional_columns=("member_features",),
        )
        return DataLoader(
            _KeyedStream(stream),
            batch_size=None,
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
        )


__all__ = [
    "BanditDataModule",
    "EvenBatches",
    "ResidentLoader",
    "TrainingDataError",
    "check_learnable",
    "row_keys",
    "split_time",
]
