"""Parquet reading and writing: round trips, hive partitions, time filters, sharding, atomic writes, errors."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from deepbandit.data import io
from deepbandit.data.schema import (
    IMPRESSIONS_SCHEMA,
    METADATA_TABLE_KEY,
    METADATA_VERSION_KEY,
    SCHEMA_VERSION,
    TITLES_SCHEMA,
    images_schema,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
US = 1_000_000


def make_impressions(n: int, seed: int = 0, n_days: int = 3) -> pa.Table:
    """n impressions over n_days from T0, ragged candidates (1..5) and history (0..4), some null rewards."""
    rng = np.random.default_rng(seed)
    n_cand = rng.integers(1, 6, n)
    n_hist = rng.integers(0, 5, n)
    candidates = [(1000 + rng.choice(50, k, replace=False)).tolist() for k in n_cand]
    chosen_pos = [int(rng.integers(0, k)) for k in n_cand]
    micros = int(T0.timestamp()) * US + np.sort(rng.integers(0, n_days * 86_400 * US, n))
    reward = rng.random(n).round(3)
    cols = {
        "request_id": [f"r{seed}-{i}" for i in range(n)],
        "timestamp": pa.array(micros, pa.timestamp("us", tz="UTC")),
        "member_id": rng.integers(0, 20, n),
        "title_id": rng.integers(10, 20, n),
        "candidate_image_ids": candidates,
        "chosen_image_id": [c[p] for c, p in zip(candidates, chosen_pos, strict=True)],
        "propensity": 1.0 / n_cand,
        "reward": pa.array(reward, mask=rng.random(n) < 0.2),
        "played_title_ids": [rng.integers(10, 30, k).tolist() for k in n_hist],
        "country": rng.choice(["US", "GB", "DE"], n),
        "language": rng.choice(["en", "de"], n),
        "device": rng.choice(["tv", "phone"], n),
        "hour": rng.integers(0, 24, n).astype(np.int8),
        "weekday": rng.integers(0, 7, n).astype(np.int8),
        "recommender_score": rng.random(n).astype(np.float32),
        "prior_interaction": rng.random(n) < 0.3,
    }
    return pa.table(cols, schema=IMPRESSIONS_SCHEMA)


def sort_by_request(table: pa.Table) -> pa.Table:
    return table.sort_by("request_id")


def contract_columns(table: pa.Table) -> pa.Table:
    return table.select(IMPRESSIONS_SCHEMA.names)


@pytest.fixture(scope="module")
def impressions() -> pa.Table:
    return make_impressions(300)


@pytest.fixture(scope="module")
def hive_dir(tmp_path_factory, impressions) -> Path:
    root = tmp_path_factory.mktemp("hive") / "impressions"
    io.write_impressions(impressions, root, partition_by_date=True, row_group_size=32)
    return root


# --- writing and reading back --------------------------------------------------------------------------


def test_single_file_round_trip_keeps_values_and_metadata(tmp_path, impressions):
    (path,) = io.write_impressions(impressions, tmp_path)
    assert path == tmp_path / "part-0.parquet"
    back = io.open_impressions(tmp_path).to_table()
    assert back.equals(impressions)
    assert back.schema.metadata[METADATA_VERSION_KEY] == SCHEMA_VERSION.encode()
    assert back.schema.metadata[METADATA_TABLE_KEY] == b"impressions"
    # pyarrow names the codec "LZ4"; what it writes is Parquet's LZ4_RAW
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "LZ4"


def test_write_stamps_metadata_on_a_bare_table(tmp_path, impressions):
    bare = impressions.replace_schema_metadata(None)
    (path,) = io.write_impressions(bare, tmp_path)
    metadata = pq.read_schema(path).metadata
    assert metadata[METADATA_VERSION_KEY] == SCHEMA_VERSION.encode()
    assert metadata[METADATA_TABLE_KEY] == b"impressions"


def test_hive_partitions_one_folder_per_utc_day(hive_dir, impressions):
    micros = impressions.column("timestamp").cast(pa.int64()).to_numpy()
    days = sorted({str(np.datetime64(int(d), "D")) for d in micros // (86_400 * US)})
    assert sorted(p.name for p in hive_dir.iterdir()) == [f"date={d}" for d in days]
    back = io.open_impressions(hive_dir).to_table()
    assert back.schema.field("date").type == pa.string()
    assert sort_by_request(contract_columns(back)).equals(sort_by_request(impressions))
    # every row's partition value is the UTC date of its timestamp
    row_days = back.column("timestamp").cast(pa.int64()).to_numpy() // (86_400 * US)
    expected = [str(np.datetime64(int(d), "D")) for d in row_days]
    assert back.column("date").to_pylist() == expected


def test_partitioned_write_of_rows_out_of_time_order(tmp_path, impressions):
    shuffled = impressions.take(np.random.default_rng(5).permutation(impressions.num_rows))
    io.write_impressions(shuffled, tmp_path, partition_by_date=True)
    back = io.open_impressions(tmp_path).to_table()
    assert sort_by_request(contract_columns(back)).equals(sort_by_request(impressions))


def test_projection_reads_only_the_named_columns(hive_dir):
    table = io.open_impressions(hive_dir, columns=["request_id", "reward"]).to_table()
    assert table.column_names == ["request_id", "reward"]
    with pytest.raises(KeyError, match="no_such_column"):
        io.open_impressions(hive_dir, columns=["request_id", "no_such_column"])


@pytest.mark.parametrize("layout", ["file", "hive"])
def test_time_filter_keeps_start_inclusive_end_exclusive(tmp_path, impressions, layout):
    partition = layout == "hive"
    io.write_impressions(impressions, tmp_path, partition_by_date=partition, row_group_size=32)
    micros = impressions.column("timestamp").cast(pa.int64()).to_numpy()
    # bounds placed exactly on logged timestamps, so inclusivity is tested on both ends
    lo, hi = int(micros[40]), int(micros[250])
    start = dt.datetime.fromtimestamp(lo / US, dt.UTC)
    end = dt.datetime.fromtimestamp(hi / US, dt.UTC)
    back = io.open_impressions(tmp_path, start=start, end=end).to_table()
    keep = (micros >= lo) & (micros < hi)
    expected = impressions.filter(pa.array(keep))
    assert sort_by_request(contract_columns(back)).equals(sort_by_request(expected))
    assert io.count_rows(tmp_path, start=start, end=end) == keep.sum()


def test_time_filter_dates_strings_and_naive_datetimes_are_utc(hive_dir, impressions):
    micros = impressions.column("timestamp").cast(pa.int64()).to_numpy()
    day2 = int(dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()) * US
    expected = int(((micros >= day2) & (micros < day2 + 86_400 * US)).sum())
    assert expected > 0
    for start, end in [
        (dt.date(2026, 1, 2), dt.date(2026, 1, 3)),
        ("2026-01-02", "2026-01-03T00:00:00Z"),
        (dt.datetime(2026, 1, 2), dt.datetime(2026, 1, 3)),
        (dt.datetime(2026, 1, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), "2026-01-03"),
    ]:
        assert io.open_impressions(hive_dir, start=start, end=end).count_rows() == expected


def test_time_filter_prunes_date_folders_but_only_with_a_day_of_margin():
    expr = io.time_filter("2026-01-02T05:00", "2026-01-03", partition_date=True)
    text = str(expr)
    assert '"2026-01-01"' in text and '"2026-01-03"' in text  # one day beyond each bound
    with pytest.raises(ValueError, match="empty"):
        io.time_filter("2026-01-03", "2026-01-02")
    with pytest.raises(ValueError, match="cannot parse"):
        io.time_filter("yesterday")
    assert io.time_filter() is None


def test_extra_filter_combines_with_time_range(hive_dir, impressions):
    table = io.open_impressions(hive_dir, start="2026-01-02", filter=ds.field("country") == "US").to_table()
    micros = impressions.column("timestamp").cast(pa.int64()).to_numpy()
    keep = (micros >= int(dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()) * US) & (
        np.asarray(impressions.column("country").to_pylist()) == "US"
    )
    assert table.num_rows == keep.sum() > 0


# --- streaming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 1000])
def test_record_batches_have_exact_sizes_and_cover_the_data(hive_dir, impressions, batch_rows):
    batches = list(io.iter_record_batches(hive_dir, batch_rows=batch_rows))
    sizes = [b.num_rows for b in batches]
    assert all(s == batch_rows for s in sizes[:-1]) and 0 < sizes[-1] <= batch_rows
    table = pa.Table.from_batches(batches)
    assert sort_by_request(contract_columns(table)).equals(sort_by_request(impressions))


def test_record_batches_carry_partition_columns(hive_dir, impressions):
    table = pa.Table.from_batches(list(io.iter_record_batches(hive_dir, columns=["timestamp", "date"])))
    days = table.column("timestamp").cast(pa.int64()).to_numpy() // (86_400 * US)
    assert table.column("date").to_pylist() == [str(np.datetime64(int(d), "D")) for d in days]


@pytest.mark.parametrize("readahead", [0, 1, 3])
def test_stopping_a_stream_early_or_without_readahead(hive_dir, impressions, readahead):
    stream = io.iter_record_batches(hive_dir, batch_rows=10, readahead=readahead)
    first = next(stream)
    stream.close()  # must not hang on, or leak, the fragments decoded ahead
    assert first.num_rows == 10
    rows = sum(b.num_rows for b in io.iter_record_batches(hive_dir, batch_rows=10, readahead=readahead))
    assert rows == impressions.num_rows
    with pytest.raises(ValueError, match="readahead"):
        next(io.iter_record_batches(hive_dir, readahead=-1))


def test_record_batches_are_in_path_then_row_group_order(hive_dir):
    # files sorted by path are days in order, and rows within a day keep their (time) order
    ids = pa.Table.from_batches(list(io.iter_record_batches(hive_dir, batch_rows=50))).column("timestamp")
    micros = ids.cast(pa.int64()).to_numpy()
    assert (np.diff(micros) >= 0).all()


def test_streaming_memory_is_bounded_by_the_batch_not_the_dataset(tmp_path):
    big = make_impressions(40_000, seed=3, n_days=1)
    io.write_impressions(big, tmp_path, row_group_size=1000)
    dataset_bytes = big.nbytes
    del big
    base = pa.total_allocated_bytes()
    peak, rows = 0, 0
    for batch in io.iter_record_batches(tmp_path, batch_rows=500, readahead=1):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert rows == 40_000
    # the few 1000-row groups decoded ahead are well under 10 of the 40: fails if the scan materialises
    assert peak < dataset_bytes / 4, (peak, dataset_bytes)


# --- sharding ---------------------------------------------------------------------------------------------


def _fragment_keys(fragments) -> list[tuple[str, int]]:
    return [(f.path, f.row_groups[0].id) for f in fragments]


@pytest.mark.parametrize("strategy", ["balanced", "round_robin"])
@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 1), (2, 1), (2, 3), (4, 2), (40, 1)])
def test_shards_are_disjoint_and_cover_every_row_group(hive_dir, strategy, world_size, num_workers):
    dataset = io.open_dataset(hive_dir)
    everything = _fragment_keys(io.shard_fragments(dataset, 0, 1, strategy=strategy))
    n_row_groups = sum(pq.ParquetFile(p).num_row_groups for p in dataset.files)
    assert len(everything) == len(set(everything)) == n_row_groups
    shards = [
        _fragment_keys(io.shard_fragments(dataset, r, world_size, w, num_workers, strategy=strategy))
        for r in range(world_size)
        for w in range(num_workers)
    ]
    flat = [k for s in shards for k in s]
    assert len(flat) == len(set(flat))  # disjoint
    assert set(flat) == set(everything)  # covering
    # deterministic: recomputing on a freshly opened dataset gives the same assignment
    last = (world_size - 1, world_size, num_workers - 1, num_workers)
    again = io.shard_fragments(io.open_dataset(hive_dir), *last, strategy=strategy)
    assert _fragment_keys(again) == shards[-1]


def test_balanced_shards_differ_by_at_most_one_row_group(hive_dir):
    dataset = io.open_dataset(hive_dir)
    sizes = [rg.row_groups[0].num_rows for rg in io.shard_fragments(dataset, 0, 1)]
    rows = [
        sum(f.row_groups[0].num_rows for f in io.shard_fragments(dataset, r, 3, strategy="balanced"))
        for r in range(3)
    ]
    assert sum(rows) == sum(sizes)
    assert max(rows) - min(rows) <= max(sizes)


def test_sharded_streams_partition_the_rows(hive_dir, impressions):
    seen = []
    for rank in range(2):
        for worker in range(2):
            for batch in io.iter_record_batches(
                hive_dir,
                columns=["request_id"],
                batch_rows=16,
                rank=rank,
                world_size=2,
                worker=worker,
                num_workers=2,
            ):
                seen.extend(batch.column("request_id").to_pylist())
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(impressions.column("request_id").to_pylist())


def test_shuffled_fragment_order_is_seeded(hive_dir):
    def order(seed):
        batches = io.iter_record_batches(hive_dir, columns=["request_id"], batch_rows=1000, shuffle_seed=seed)
        return pa.Table.from_batches(list(batches)).column("request_id").to_pylist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(order(None))


def test_shard_arguments_are_checked(hive_dir):
    dataset = io.open_dataset(hive_dir)
    with pytest.raises(ValueError, match="rank 2 not in"):
        io.shard_fragments(dataset, 2, 2)
    with pytest.raises(ValueError, match="worker 1 not in"):
        io.shard_fragments(dataset, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="strategy"):
        io.shard_fragments(dataset, 0, 1, strategy="random")


# --- atomic writes and files that must not be read ---------------------------------------------------------


def test_failed_write_leaves_old_file_and_no_temp_file(tmp_path, impressions, monkeypatch):
    (path,) = io.write_impressions(impressions, tmp_path)
    before = path.read_bytes()

    def write_half_then_crash(table, where, **kwargs):
        where.write(b"PAR1 half a file")  # bytes already on disk when the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        io.write_impressions(impressions.slice(0, 10), tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["part-0.parquet"]  # temp file removed
    assert path.read_bytes() == before
    assert io.open_impressions(tmp_path).to_table().equals(impressions)


def test_hidden_and_underscore_files_are_never_read(tmp_path, impressions):
    io.write_impressions(impressions, tmp_path)
    (tmp_path / ".part-0.parquet.x1y2.tmp").write_bytes(b"half written")
    (tmp_path / ".crashed.parquet").write_bytes(b"PAR1 half written")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / "_tmp").mkdir()
    io.write_parquet_atomic(impressions, tmp_path / "_tmp" / "part-9.parquet")
    assert io.list_parquet_files(tmp_path) == [tmp_path / "part-0.parquet"]
    assert io.open_impressions(tmp_path).count_rows() == impressions.num_rows


@pytest.mark.parametrize("bad", [".part.parquet", "_part.parquet", "part.csv"])
def test_part_names_that_reads_would_skip_are_refused(tmp_path, impressions, bad):
    with pytest.raises(ValueError, match="part_name"):
        io.write_impressions(impressions, tmp_path, part_name=bad)


# --- errors ----------------------------------------------------------------------------------------------------


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        io.open_impressions(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        io.read_images(missing)


def test_folder_without_parquet_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no data here")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*no Parquet files"):
        list(io.iter_record_batches(tmp_path))


def test_files_with_different_columns_are_refused(tmp_path, impressions):
    io.write_impressions(impressions, tmp_path, part_name="part-0.parquet")
    io.write_impressions(impressions.drop_columns(["reward"]), tmp_path, part_name="part-1.parquet")
    with pytest.raises(ValueError, match=r"part-1\.parquet: columns differ .*reward: double vs absent"):
        io.open_dataset(tmp_path)


def test_files_differing_only_in_nullability_are_read_together(tmp_path, impressions):
    io.write_impressions(impressions, tmp_path, part_name="part-0.parquet")
    loose = impressions.cast(
        pa.schema([f.with_nullable(True) for f in impressions.schema], impressions.schema.metadata)
    )
    io.write_impressions(loose, tmp_path, part_name="part-1.parquet")
    assert io.open_impressions(tmp_path).count_rows() == 2 * impressions.num_rows


def test_files_with_different_schema_versions_are_refused(tmp_path, impressions):
    io.write_impressions(impressions, tmp_path, part_name="part-0.parquet")
    old = impressions.replace_schema_metadata(
        {METADATA_VERSION_KEY: b"0.9", METADATA_TABLE_KEY: b"impressions"}
    )
    io.write_impressions(old, tmp_path, part_name="part-1.parquet")
    with pytest.raises(ValueError, match="part-1.parquet: deepbandit schema version b'0.9'"):
        io.open_dataset(tmp_path)


# --- catalogue tables -------------------------------------------------------------------------------------------


def test_read_images_and_titles(tmp_path):
    images = pa.table(
        {
            "image_id": [1, 2],
            "title_id": [7, 7],
            "embedding": [[0.5, 1.0], [2.0, -1.0]],
            "launched_at": [None, None],
        },
        schema=images_schema(2),
    )
    titles = pa.table(
        {"title_id": [7], "genres": [["drama"]], "launched_at": [None]},
        schema=TITLES_SCHEMA,
    )
    io.write_parquet_atomic(images, tmp_path / "images.parquet")
    io.write_parquet_atomic(titles, tmp_path / "titles.parquet")
    assert io.read_images(tmp_path / "images.parquet").equals(images)
    assert io.read_titles(tmp_path / "titles.parquet").equals(titles)
    with pytest.raises(ValueError, match="holds a 'images' table, expected 'titles'"):
        io.read_titles(tmp_path / "images.parquet")


def test_atomic_write_gives_the_file_the_usual_permissions(tmp_path):
    # mkstemp's private 0600 must not leak into datasets other users or services read
    import os

    import pyarrow as pa

    from deepbandit.data.io import write_parquet_atomic

    old = os.umask(0o022)
    try:
        path = write_parquet_atomic(pa.table({"a": [1]}), tmp_path / "t.parquet")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
