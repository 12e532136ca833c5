"""Simulated impression logs of the artwork world, streamed to Parquet with their ground truth.

``simulate(config, out_dir)`` draws a ``World``, logs ``n_impressions`` decisions of a logging policy and
writes the dataset layout of ``deepbandit.data.schema``::

    <out_dir>/impressions/part-00000.parquet ...   one file per chunk of ``chunk_rows`` rows; the files
                                                   cover consecutive time ranges and rows are sorted by
                                                   timestamp, so the dataset is in time order
    <out_dir>/images.parquet, titles.parquet       with launched_at (cold start)
    <out_dir>/world.npz                            World.save: every hidden parameter (World.load)
    <out_dir>/truth.json                           exact values of random / logging / best-unpersonalised /
                                                   oracle on the logged contexts, overall and by
                                                   prior_interaction, with the config and seed

Impressions are generated in batches of ``batch_rows`` (bounded memory). Batch k of the rows [r0, r1) covers
the time range [start + span * r0 / n, start + span * r1 / n), so rows arrive evenly over the timeline
(shaped by the local-hour traffic curve inside it). Everything is a deterministic function of the config
(``seed``, ``chunk_rows`` and ``batch_rows`` included).

Per impression: a country by activity share, a UTC time (traffic shape of the member's local hour), a
member of that country by activity, a title (with ``rewatch_prob`` one from the member's plays so far,
otherwise the recommendation path: genre from taste, title by popularity among launched titles), the
context columns, the candidates (the title's images launched by then), the logging policy's distribution,
the chosen image and a Bernoulli(q) reward.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepbandit.atomic import file_mode, write_text_atomic
from deepbandit.data.io import begin_dataset, finish_dataset, write_parquet_atomic
from deepbandit.data.schema import (
    IMAGES_FILE,
    IMPRESSION_FIELDS,
    IMPRESSIONS_DIR,
    IMPRESSIONS_SCHEMA,
    OPTIONAL_IMPRESSION_FIELDS,
    SCHEMA_VERSION,
    TITLES_FILE,
    TRUTH_FILE,
    WORLD_FILE,
)
from deepbandit.errors import ConfigError
from deepbandit.sim.logging_policies import (
    LoggingPolicy,
    LoggingPolicyConfig,
    make_logging_policy,
    sample_segments,
    segment_argmax,
)
from deepbandit.sim.world import US_PER_S, World, WorldConfig, segment_offsets

POLICY_NAMES = ("random", "logging", "best_unpersonalised", "oracle")
SPLITS = ("all", "prior_interaction_true", "prior_interaction_false")

# Dictionary-encode only where values repeat: ids and category strings. Trying it on unique request ids and
# continuous floats costs a quarter of the encoding time for nothing.
DICTIONARY_COLUMNS = [
    "member_id", "title_id", "chosen_image_id", "candidate_image_ids.list.element",
    "played_title_ids.list.element", "country", "language", "device", "hour", "weekday", "propensity_kind",
]  # fmt: skip
SIMULATED_IMPRESSIONS_SCHEMA = pa.schema(
    IMPRESSION_FIELDS
    + [f for f in OPTIONAL_IMPRESSION_FIELDS if f.name in ("action_dist", "propensity_kind")],
    metadata=IMPRESSIONS_SCHEMA.metadata,
)


@dataclass
class SimulateConfig:
    """Everything ``simulate`` needs (the ``simulate_schema`` of conf/simulate.yaml)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    logging_policy: LoggingPolicyConfig = field(default_factory=LoggingPolicyConfig)
    n_impressions: int = 1_000_000  # impressions logged, spread evenly over the n_days timeline
    n_days: int = 14
    start_date: str = "2024-01-01"  # UTC midnight of the first day
    seed: int = 0
    out_dir: str = "data/sim"
    chunk_rows: int = 1_000_000  # rows per impressions part file
    batch_rows: int = 131_072  # rows generated at once (bounds memory)
    compression: str = "snappy"  # codec of the Parquet files: snappy | lz4 | zstd | gzip | brotli | none
    overwrite: bool = False  # replace an earlier dataset in out_dir
    progress: bool = True  # show a progress bar on stderr

    def validate(self) -> None:
        for name in ("n_impressions", "chunk_rows", "batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"simulate config: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def start_us(self) -> int:
        try:
            day = np.datetime64(self.start_date, "D")
        except ValueError as err:
            raise ConfigError(f"simulate config: start_date {self.start_date!r} is not YYYY-MM-DD") from err
        return int(day.astype("datetime64[us]").astype(np.int64))


class TruthAccumulator:
    """Running sums over logged rows, per split: rows, rewards, and the exact value of each policy."""

    def __init__(self) -> None:
        self.sums = {s: dict.fromkeys(("rows", "reward", "chosen_q", *POLICY_NAMES), 0.0) for s in SPLITS}
        self.n_candidates = 0

    def add(
        self, prior: np.ndarray, reward: np.ndarray, per_row: dict[str, np.ndarray], n_candidates: int
    ) -> None:
        split_of = prior.astype(np.int64)  # 0: false, 1: true
        for key, values in {"rows": np.ones(len(prior)), "reward": reward, **per_row}.items():
            by = np.bincount(split_of, weights=values, minlength=2)
            self.sums["prior_interaction_false"][key] += float(by[0])
            self.sums["prior_interaction_true"][key] += float(by[1])
            self.sums["all"][key] += float(by.sum())
        self.n_candidates += n_candidates

    def result(self) -> dict:
        out: dict = {}
        for split, s in self.sums.items():
            n = s["rows"]
            take = s["reward"] / n if n else float("nan")
            out[split] = {
                "rows": int(n),
                "take_rate": take,
                "take_rate_se": float(np.sqrt(take * (1 - take) / n)) if n else float("nan"),
                "expected_take_rate_of_chosen": s["chosen_q"] / n if n else float("nan"),
                **{name: s[name] / n if n else float("nan") for name in POLICY_NAMES},
            }
        out["all"]["mean_candidates"] = self.n_candidates / max(1, self.sums["all"]["rows"])
        return out


class ImpressionGenerator:
    """Draws impressions of one world under one logging policy, batch by batch.

    ``batch`` draws rows [row0, row1) of an n_total-row log; ``batches`` iterates over a whole log, chunk by
    chunk; ``table`` collects one in memory. Each feeds a ``TruthAccumulator`` with the exact policy values
    of the rows it draws."""

    def __init__(self, world: World, policy: LoggingPolicy, seed: int):
        self.world, self.policy, self.seed = world, policy, seed
        self.activity_cdf = np.cumsum(world.member_activity) / world.member_activity.sum()
        self.strings = {k: pa.array(list(getattr(world, k))) for k in ("devices", "countries", "languages")}

    def _members_and_times(self, t_lo: int, t_hi: int, n: int, rng: np.random.Generator):
        """Members by activity and their times in [t_lo, t_hi), in time order. (n,) int64 each."""
        w = self.world
        # sorted uniforms (normalised exponential spacings) make the search cache friendly; sorting by time
        # below shuffles the members again
        spacing = np.cumsum(rng.standard_exponential(n + 1))
        member = np.searchsorted(self.activity_cdf, spacing[:-1] / spacing[-1], side="right")
        member = np.minimum(member, w.n_members - 1)
        lo, hi = np.full(n, t_lo, dtype=np.int64), np.full(n, t_hi, dtype=np.int64)
        t = w.diurnal_times_us(lo, hi, w.member_country[member], rng)
        order = np.argsort(t, kind="stable")
        return member[order], t[order]

    def _titles(self, member, t_us, end, count, rng: np.random.Generator) -> np.ndarray:
        """Rewatch path with ``rewatch_prob`` (a uniform pick among the member's ``count`` plays ending at
        ``end``), the recommendation path otherwise. (B,) int64."""
        w = self.world
        title = w.sample_titles_by_genre(member, w.time_fraction(t_us), t_us // US_PER_S, rng)
        rewatch = (rng.random(len(member)) < w.config.rewatch_prob) & (count > 0)
        pick = end[rewatch] - 1 - (rng.random(rewatch.sum()) * count[rewatch]).astype(np.int64)
        title[rewatch] = w.history_title[pick]
        return title

    def batch(
        self, row0: int, row1: int, n_total: int, rng: np.random.Generator, truth: TruthAccumulator
    ) -> pa.Table:
        """Rows [row0, row1) of an ``n_total``-row log as a table of SIMULATED_IMPRESSIONS_SCHEMA, sorted by
        timestamp; their exact policy values are added to ``truth``."""
        w, n = self.world, row1 - row0
        span = w.end_us - w.start_us
        t_lo, t_hi = w.start_us + span * row0 // n_total, w.start_us + span * row1 // n_total
        member, t_us = self._members_and_times(t_lo, max(t_hi, t_lo + 1), n, rng)
        t_s = t_us // US_PER_S
        end = w.history_position(member, t_s)
        count = end - w.history_offsets[member]
        title = self._titles(member, t_us, end, count, rng)

        # all plays before t, most recent first: prior_interaction, and the first max_history of them
        hist_row, rank, played = w.plays_before(end, count)
        prior = np.bincount(hist_row[played == title[hist_row]], minlength=n) > 0
        kept = rank < w.config.max_history
        hist_off = segment_offsets(np.minimum(count, w.config.max_history))
        ctx = w.make_contexts(member, title, t_us, rng, prior=prior)

        # candidates: the title's images launched by t (a prefix of its images, in launch order)
        first, n_cand = w.available_images(title, t_s)
        offsets = segment_offsets(n_cand)
        images = np.repeat(first - offsets[:-1], n_cand) + np.arange(offsets[-1])
        q = w.expected_outcomes_flat(ctx, n_cand, images)[1]
        dist = self.policy.action_dist(ctx, images, offsets)
        chosen = sample_segments(dist, offsets, self.policy.draw_uniforms(ctx, rng))
        reward = (rng.random(n) < q[chosen]).astype(np.float64)

        starts = offsets[:-1]
        truth.add(
            ctx.prior_interaction,
            reward,
            {
                "chosen_q": q[chosen],
                "random": np.add.reduceat(q, starts, dtype=np.float64) / n_cand,
                "logging": np.add.reduceat(dist * q, starts),
                "best_unpersonalised": q[segment_argmax(w.unpersonalised_value[images], offsets)],
                "oracle": np.maximum.reduceat(q, starts),
            },
            len(images),
        )
        request_id = pc.binary_join_element_wise(
            f"sim{self.seed}-", pc.cast(pa.array(np.arange(row0, row1, dtype=np.int64)), pa.string()), ""
        )
        columns = {
            "request_id": request_id,
            "timestamp": pa.array(t_us, pa.timestamp("us", tz="UTC")),
            "member_id": pa.array(member),
            "title_id": pa.array(title),
            "candidate_image_ids": pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)), pa.array(images)
            ),
            "chosen_image_id": pa.array(images[chosen]),
            "propensity": pa.array(dist[chosen]),
            "reward": pa.array(reward),
            "played_title_ids": pa.ListArray.from_arrays(
                pa.array(hist_off.astype(np.int32)), pa.array(played[kept])
            ),
            "country": self.strings["countries"].take(pa.array(ctx.country)),
            "language": self.strings["languages"].take(pa.array(ctx.language)),
            "device": self.strings["devices"].take(pa.array(ctx.device)),
            "hour": pa.array(ctx.hour),
            "weekday": pa.array(ctx.weekday),
            "recommender_score": pa.array(ctx.recommender_score),
            "prior_interaction": pa.array(ctx.prior_interaction),
            "action_dist": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(dist)),
            "propensity_kind": pa.repeat(pa.scalar("exact"), n),
        }
        return pa.Table.from_pydict(columns, schema=SIMULATED_IMPRESSIONS_SCHEMA)

    def batches(
        self, n_impressions: int, chunk_rows: int, batch_rows: int, truth: TruthAccumulator
    ) -> Iterator[tuple[int, int, pa.Table]]:
        """(chunk index, rows done, table) per batch; batches never straddle chunks, and batch k draws
        from rng([seed, stream, k]), so the log is a function of (seed, chunk_rows, batch_rows)."""
        k = 0
        for chunk, c0 in enumerate(range(0, n_impressions, chunk_rows)):
            c1 = min(n_impressions, c0 + chunk_rows)
            for b0 in range(c0, c1, batch_rows):
                b1 = min(c1, b0 + batch_rows)
                rng = np.random.default_rng([self.seed, 0x5EED, 10, k])
                yield chunk, b1, self.batch(b0, b1, n_impressions, rng, truth)
                k += 1

    def table(
        self, n_impressions: int, truth: TruthAccumulator, chunk_rows=None, batch_rows=131_072
    ) -> pa.Table:
        """The whole log in memory (for tests and small runs). Same rows as ``simulate`` writes."""
        chunk_rows = chunk_rows or n_impressions
        return pa.concat_tables(t for _, _, t in self.batches(n_impressions, chunk_rows, batch_rows, truth))


class _AtomicParquetStream:
    """One Parquet file written row group by row group into a temporary file beside ``path`` (ignored by
    readers: its name starts with '.') and renamed over ``path`` once closed, like write_parquet_atomic."""

    def __init__(self, path: Path, schema: pa.Schema, **options):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        self.path, self.sink = path, os.fdopen(fd, "wb")
        self.writer = pq.ParquetWriter(self.sink, schema, write_page_checksum=True, **options)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        self.writer.close()
        self.sink.flush()
        os.fsync(self.sink.fileno())
        self.sink.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.sink.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_impression_parts(
    generator: ImpressionGenerator,
    n_impressions: int,
    impressions_dir: Path,
    truth: TruthAccumulator,
    chunk_rows: int = 1_000_000,
    batch_rows: int = 131_072,
    compression: str = "snappy",
    on_progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Generate ``n_impressions`` rows and stream them to ``impressions_dir/part-NNNNN.parquet`` (one file
    per chunk, one row group per batch). Parquet encoding releases the GIL, so a writer thread encodes
    batch k while batch k + 1 is generated; at most two batches wait for it (bounded memory)."""
    paths: list[Path] = []
    streams: list[_AtomicParquetStream] = []
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1) as pool:  # one thread: tasks run in submission order
        try:
            for chunk, rows_done, table in generator.batches(n_impressions, chunk_rows, batch_rows, truth):
                if chunk == len(paths):
                    if streams:
                        pending.append(pool.submit(streams[-1].close))
                    paths.append(impressions_dir / f"part-{chunk:05d}.parquet")
                    streams.append(
                        _AtomicParquetStream(
                            paths[-1],
                            SIMULATED_IMPRESSIONS_SCHEMA,
                            compression=compression,
                            use_dictionary=DICTIONARY_COLUMNS,
                        )
                    )
                pending.append(pool.submit(streams[-1].write, table))
                while len(pending) > 2:
                    pending.popleft().result()
                if on_progress is not None:
                    on_progress(rows_done)
            pending.append(pool.submit(streams[-1].close))
            while pending:
                pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            for stream in streams:
                if Path(stream.tmp).exists():
                    stream.abort()
            raise
    return paths


def build(config: SimulateConfig) -> tuple[World, LoggingPolicy, ImpressionGenerator]:
    """The world, logging policy and generator of a config (deterministic given it)."""
    config.validate()
    world = World.generate(config.world, config.start_us, config.n_days, config.seed)
    policy = make_logging_policy(config.logging_policy, world, config.seed)
    return world, policy, ImpressionGenerator(world, policy, config.seed)


def simulate(
    config: SimulateConfig,
    out_dir: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate and write the dataset to ``out_dir`` (default ``config.out_dir``); return the summary
    (what truth.json holds, plus timings). ``on_progress(rows_done)`` is called after every batch."""
    out = Path(config.out_dir if out_dir is None else out_dir)
    impressions_dir = out / IMPRESSIONS_DIR
    existing = sorted(impressions_dir.glob("*.parquet")) if impressions_dir.exists() else []
    if existing and not config.overwrite:
        raise FileExistsError(
            f"{impressions_dir} already holds {len(existing)} Parquet file(s); set overwrite=true"
        )
    t0 = time.perf_counter()
    world, policy, generator = build(config)
    t_world = time.perf_counter() - t0
    begin_dataset(out, "deepbandit simulate")  # readers refuse the folder until finish_dataset below
    for path in existing:
        path.unlink()
    world.save(out / WORLD_FILE)
    write_parquet_atomic(world.images_table(), out / IMAGES_FILE, compression=config.compression)
    write_parquet_atomic(world.titles_table(), out / TITLES_FILE, compression=config.compression)

    truth = TruthAccumulator()
    paths = write_impression_parts(
        generator,
        config.n_impressions,
        impressions_dir,
        truth,
        config.chunk_rows,
        config.batch_rows,
        config.compression,
        on_progress,
    )
    elapsed = time.perf_counter() - t0
    summary = {
        "schema_version": SCHEMA_VERSION,
        "seed": config.seed,
        "n_impressions": config.n_impressions,
        "start": str(np.datetime64(world.start_us, "us")) + "Z",
        "end": str(np.datetime64(world.end_us, "us")) + "Z",
        "logging_policy": config.logging_policy.name,
        "policy_values": truth.result(),
        "world": world.summary(),
        "files": {"impressions": [f"{IMPRESSIONS_DIR}/{p.name}" for p in paths], "world": WORLD_FILE},
        "config": asdict(config),
    }
    write_text_atomic(out / TRUTH_FILE, json.dumps(summary, indent=2) + "\n")
    finish_dataset(out, "deepbandit simulate")
    summary["seconds"] = {"world": t_world, "total": elapsed}
    summary["rows_per_second"] = config.n_impressions / elapsed
    summary["out_dir"] = str(out)
    return summary
