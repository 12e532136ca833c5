"""One table of bad (and merely unusual) inputs, each run through every entry point that can receive it.

Logs go through `deepbandit validate` (strict and quarantine), `train` and `evaluate`: a log the contract
refuses gives the same one-line error (file, column, row, reason) from each, and quarantine mode either sets
the offending rows aside under that column or, for a problem with a file as a whole, gives the same error;
a log the contract accepts in another physical form (int32 ids, large lists, float16, another timestamp
unit or zone, another column order, hive folders, no metadata...) is accepted by each with the same result
as the same values written in the contract's own types. Requests go through the service as dicts and as an
Arrow table (the bad request alone fails, naming its field); graph inputs go through ``check_graph_inputs``
(naming the input). Nothing may crash: every failure is a ``UserError`` or a per-request message.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module

from deepbandit.data.io import write_impressions
from deepbandit.data.layout import DATASET_RECORD_FILE
from deepbandit.data.validation import ValidationError, validate_dataset
from deepbandit.errors import UserError
from deepbandit.sim.simulator import SimulateConfig, simulate
from deepbandit.sim.world import WorldConfig
from deepbandit.training.config import DataConfig, ModelGroupConfig, TrainConfig, TrainerConfig
from deepbandit.training.train import train

PART = "impressions/part-00000.parquet"
WORLD = WorldConfig(n_members=50, n_titles=8, n_genres=3, n_themes=4, n_cast=10, cast_per_title=2,
                    favourite_cast=1, images_min=2, images_max=4, images_mean=3.0, embedding_dim=4)  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs") / "base"
    simulate(SimulateConfig(world=WORLD, n_impressions=300, out_dir=str(root), progress=False))
    return root


# --- editing a copy of the dataset -----------------------------------------------------------------------


def _read(root: Path, name: str = PART) -> pa.Table:
    return pq.read_table(root / name)


def _write(root: Path, table: pa.Table, name: str = PART, *, keep_record: bool = False, **options) -> None:
    pq.write_table(table, root / name, **options)
    if not keep_record:  # the simulator's record of its files no longer holds: an edited dataset is a user's
        (root / DATASET_RECORD_FILE).unlink(missing_ok=True)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def _cast(name: str, type_: pa.DataType, file: str = PART) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        t = _read(root, file)
        _write(root, _set(t, name, t.column(name).cast(type_)), file)

    return edit


def _cell(name: str, row: int, value, file: str = PART, type_: pa.DataType | None = None):
    """Set one cell (the column keeps its type unless ``type_`` is given)."""

    def edit(root: Path) -> None:
        t = _read(root, file)
        values = t.column(name).to_pylist()
        values[row] = value
        _write(root, _set(t, name, pa.array(values, type_ or t.schema.field(name).type)), file)

    return edit


def _table(fn: Callable[[pa.Table], pa.Table], file: str = PART) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        _write(root, fn(_read(root, file)), file)

    return edit


def _chain(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for e in edits:
            e(root)

    return edit


def _timestamps(unit: str, tz: str = "UTC", floor: str | None = None):
    def fn(t: pa.Table) -> pa.Table:
        ts = t.column("timestamp")
        if floor:
            ts = pc.floor_temporal(ts, unit=floor)
        return _set(t, "timestamp", ts.cast(pa.timestamp(unit, tz="UTC")).cast(pa.timestamp(unit, tz=tz)))

    return fn


def _floor_seconds(t: pa.Table) -> pa.Table:
    return _set(t, "timestamp", pc.floor_temporal(t.column("timestamp"), unit="second"))


def _round_propensity(type_: str):
    """Propensities as the narrower type would store them (action_dist dropped: it would no longer match)."""

    def fn(t: pa.Table) -> pa.Table:
        p = t.column("propensity").to_numpy().astype(type_).astype(np.float64)
        return _set(t.drop_columns(["action_dist"]), "propensity", p)

    return fn


def _narrow_propensity(type_: str):
    """Propensities stored in the narrower type (action_dist dropped: it would no longer match)."""

    def fn(t: pa.Table) -> pa.Table:
        p = t.column("propensity").to_numpy().astype(type_)
        return _set(t.drop_columns(["action_dist"]), "propensity", pa.array(p))

    return fn


def _timestamp_cell(row: int, micros: int):
    def fn(t: pa.Table) -> pa.Table:
        us = t.column("timestamp").cast(pa.int64()).to_numpy().copy()
        us[row] = micros
        return _set(t, "timestamp", pa.array(us).cast(pa.timestamp("us", tz="UTC")))

    return fn


def _timestamps_times(factor: int, add: int = 0, unit: str = "us"):
    def fn(t: pa.Table) -> pa.Table:
        us = t.column("timestamp").cast(pa.int64()).to_numpy() * factor + add
        return _set(t, "timestamp", pa.array(us).cast(pa.timestamp(unit, tz="UTC")))

    return fn


def _list_cell(name: str, row: int, fn, type_: pa.DataType):
    def edit(t: pa.Table) -> pa.Table:
        values = t.column(name).to_pylist()
        values[row] = fn(values[row])
        return _set(t, name, pa.array(values, type_))

    return edit


def _copy_cell(name: str, source: int, target: int):
    def edit(t: pa.Table) -> pa.Table:
        values = t.column(name).to_pylist()
        values[target] = values[source]
        return _set(t, name, pa.array(values, t.schema.field(name).type))

    return edit


def _member_features(t: pa.Table) -> pa.Table:
    rng = np.random.default_rng(0)
    return _set(t, "member_features", pa.array(rng.normal(size=(t.num_rows, 3)).astype(np.float32).tolist(),
                                               pa.list_(pa.float32())))  # fmt: skip


def _null_rows(name: str, rows: list[int]):
    def fn(t: pa.Table) -> pa.Table:
        values = t.column(name).to_pylist()
        for r in rows:
            values[r] = None
        return _set(t, name, pa.array(values, t.schema.field(name).type))

    return fn


def _two_files(root: Path) -> None:
    t = _read(root)
    (root / PART).unlink()
    _write(root, t.slice(0, 120), "impressions/part-a.parquet")
    _write(root, t.slice(120), "impressions/part-b.parquet")


def _zero_row_file(root: Path) -> None:
    t = _read(root)
    _write(root, t.slice(0, 0), "impressions/part-empty.parquet")


def _hive_by_date(root: Path) -> None:
    t = _read(root)
    (root / PART).unlink()
    write_impressions(t, root / "impressions", partition_by_date=True)
    (root / DATASET_RECORD_FILE).unlink()


def _hive_folder(key: str, value: str):
    def edit(root: Path) -> None:
        t = _read(root)
        (root / PART).unlink()
        (root / "impressions" / f"{key}={value}").mkdir()
        _write(root, t, f"impressions/{key}={value}/part-0.parquet")

    return edit


def _drift(root: Path) -> None:
    t = _read(root)
    (root / PART).unlink()
    _write(root, t.slice(0, 150), "impressions/part-a.parquet")
    b = t.slice(150)
    _write(root, _set(b, "member_id", b.column("member_id").cast(pa.int32())), "impressions/part-b.parquet")


def _flip_page_bytes(root: Path) -> None:
    """Overwrite 64 bytes in the middle of the first column chunk's data (a corrupted page, same size)."""
    path = root / PART
    meta = pq.ParquetFile(path).metadata.row_group(0).column(1)  # timestamp: a plain data page
    start = meta.data_page_offset + meta.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[start : start + 64] = bytes(255 - b for b in data[start : start + 64])
    path.write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    path = root / PART
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (root / DATASET_RECORD_FILE).unlink()  # without the record, the reader itself must notice


def _not_parquet(root: Path) -> None:
    (root / PART).write_bytes(b"PAR1 not really")
    (root / DATASET_RECORD_FILE).unlink()


def _corrupted_page_no_record(root: Path) -> None:
    _flip_page_bytes(root)
    (root / DATASET_RECORD_FILE).unlink()  # the page checksum alone must catch it


def _killed_writer(root: Path) -> None:
    (root / DATASET_RECORD_FILE).write_text(json.dumps({"complete": False, "writer": "deepbandit simulate"}))


def _extra_recorded_file(root: Path) -> None:
    _write(root, _read(root).slice(0, 5), "impressions/part-late.parquet", keep_record=True)


def _changed_recorded_file(root: Path) -> None:
    t = _read(root)
    reward = t.column("reward").to_numpy(zero_copy_only=False).copy()
    reward[7] = 1.0 - reward[7]  # same size on disk, different data
    _write(root, _set(t, "reward", reward), keep_record=True)


def _foreign_metadata(kind: bytes, version: bytes = b"1.0"):
    def fn(t: pa.Table) -> pa.Table:
        return t.replace_schema_metadata({b"deepbandit.schema_version": version, b"deepbandit.table": kind})

    return fn


# --- the table of log cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogCase:
    id: str
    edit: Callable[[Path], None]
    error: str | None = None  # None: accepted; else a fragment of the one error every entry point gives
    # accepted cases: the same values in the contract's types, to compare results with (None: the base)
    reference: Callable[[Path], None] | None = None
    same_result: bool = True  # accepted cases whose values differ from any reference (nulls) only run
    # valid logs that train or evaluate cannot use: "train's message|evaluate's message" ("" = it runs)
    unusable: str | None = None


def _images(fn) -> Callable[[Path], None]:
    return _table(fn, "images.parquet")


def _titles(fn) -> Callable[[Path], None]:
    return _table(fn, "titles.parquet")


IMAGES, TITLES = "images.parquet", "titles.parquet"
PERMUTED = ["device", "reward", "request_id", "candidate_image_ids", "timestamp", "member_id", "title_id",
            "chosen_image_id", "propensity", "played_title_ids", "country", "language", "hour", "weekday",
            "recommender_score", "prior_interaction", "action_dist", "propensity_kind"]  # fmt: skip

LOG_CASES = [
    # accepted physical variants: the same result as the contract's own types
    LogCase("member_id int32", _cast("member_id", pa.int32())),
    LogCase("title_id uint16", _cast("title_id", pa.uint16())),
    LogCase("chosen_image_id int32", _cast("chosen_image_id", pa.int32())),
    LogCase("candidates list<int32>", _cast("candidate_image_ids", pa.list_(pa.int32()))),
    LogCase("candidates large_list", _cast("candidate_image_ids", pa.large_list(pa.int64()))),
    LogCase("history large_list<int32>", _cast("played_title_ids", pa.large_list(pa.int32()))),
    LogCase("hour int64", _cast("hour", pa.int64())),
    LogCase("weekday uint8", _cast("weekday", pa.uint8())),
    LogCase(
        "country dictionary", _table(lambda t: _set(t, "country", t.column("country").dictionary_encode()))
    ),
    LogCase("device large_string", _cast("device", pa.large_string())),
    LogCase("request_id large_string", _cast("request_id", pa.large_string())),
    LogCase("action_dist large_list", _cast("action_dist", pa.large_list(pa.float64()))),
    LogCase("timestamp ns", _table(_timestamps("ns"))),
    LogCase(
        "timestamp ms, Paris zone",
        _table(_timestamps("ms", "Europe/Paris", floor="millisecond")),
        reference=_table(
            lambda t: _set(t, "timestamp", pc.floor_temporal(t.column("timestamp"), unit="millisecond"))
        ),
    ),  # fmt: skip
    LogCase(
        "timestamp s, Tokyo zone",
        _table(_timestamps("s", "Asia/Tokyo", floor="second")),
        reference=_table(_floor_seconds),
    ),
    LogCase(
        "propensity float32",
        _table(_narrow_propensity("float32")),
        reference=_table(_round_propensity("float32")),
    ),
    LogCase(
        "propensity float16",
        _table(_narrow_propensity("float16")),
        reference=_table(_round_propensity("float16")),
    ),
    LogCase(
        "reward float32",
        _table(lambda t: _set(t, "reward", t.column("reward").cast(pa.float32()))),
        reference=_table(
            lambda t: _set(t, "reward", t.column("reward").cast(pa.float32()).cast(pa.float64()))
        ),
    ),
    LogCase("columns in another order", _table(lambda t: t.select(PERMUTED))),
    LogCase("no deepbandit metadata", _table(lambda t: t.replace_schema_metadata(None))),
    LogCase(
        "propensity_kind of type null", _table(lambda t: _set(t, "propensity_kind", pa.nulls(t.num_rows)))
    ),
    LogCase(
        "no optional columns",
        _table(lambda t: t.drop_columns(["action_dist", "propensity_kind"])),
        reference=_table(lambda t: t.drop_columns(["action_dist", "propensity_kind"])),
    ),
    LogCase("two files", _two_files),
    LogCase("an extra zero-row file", _zero_row_file),
    LogCase("hive folders by date", _hive_by_date),
    LogCase("no page checksums", lambda r: _write(r, _read(r), write_page_checksum=False)),
    LogCase(
        "images: embedding list<float32>",
        _images(lambda t: _set(t, "embedding", t.column("embedding").cast(pa.list_(pa.float32())))),
    ),
    LogCase(
        "images: embedding float16",
        _images(lambda t: _set(t, "embedding", t.column("embedding").cast(pa.list_(pa.float16(), 4)))),
        reference=_images(
            lambda t: _set(
                t,
                "embedding",
                t.column("embedding").cast(pa.list_(pa.float16(), 4)).cast(pa.list_(pa.float32(), 4)),
            )
        ),
    ),
    LogCase(
        "images: image_id int32",
        _images(lambda t: _set(t, "image_id", t.column("image_id").cast(pa.int32()))),
    ),
    LogCase(
        "titles: genres large_list<large_string>",
        _titles(lambda t: _set(t, "genres", t.column("genres").cast(pa.large_list(pa.large_string())))),
    ),
    LogCase(
        "titles: launched_at ms UTC",
        _titles(lambda t: _set(t, "launched_at", t.column("launched_at").cast(pa.timestamp("ms", tz="UTC")))),
    ),
    # accepted, with values the base does not have: every entry point runs
    LogCase("action_dist null on some rows", _table(_null_rows("action_dist", [3, 40])), same_result=False),
    LogCase(
        "member_features null on some rows",
        _table(lambda t: _null_rows("member_features", [0, 9])(_member_features(t))),
        same_result=False,
    ),
    LogCase(
        "reward null on some rows (window open)", _table(_null_rows("reward", [5, 6, 200])), same_result=False
    ),
    # refused row-level problems
    LogCase("propensity 1e-300", _cell("propensity", 4, 1e-300), "below the contract's floor"),
    LogCase("propensity 1e-60", _cell("propensity", 4, 1e-60), "below the contract's floor"),
    LogCase("propensity 0", _cell("propensity", 4, 0.0), "propensity 0.0 is outside (0, 1]"),
    LogCase("propensity 1.5", _cell("propensity", 4, 1.5), "is outside (0, 1]"),
    LogCase("propensity NaN", _cell("propensity", 4, float("nan")), "propensity is nan"),
    LogCase("reward 1.0000001", _cell("reward", 4, 1.0000001), "reward 1.0000001 is outside [0, 1]"),
    LogCase("reward -0.1", _cell("reward", 4, -0.1), "is outside [0, 1]"),
    LogCase("reward inf", _cell("reward", 4, float("inf")), "reward is inf"),
    LogCase("hour 24", _cell("hour", 4, 24), "hour 24 is outside 0..23"),
    LogCase("hour -1", _cell("hour", 4, -1), "is outside 0..23"),
    LogCase("weekday 7", _cell("weekday", 4, 7), "weekday 7 is outside 0..6"),
    LogCase("duplicated request_id", _table(_copy_cell("request_id", 2, 8)), "already appears at"),
    LogCase("empty request_id", _cell("request_id", 4, ""), "request_id is the empty string"),
    LogCase("null member_id", _cell("member_id", 4, None), "member_id is null"),
    LogCase(
        "one timestamp in year 10000",
        _table(_timestamp_cell(4, 253_402_300_800_000_000)),
        "is outside 1970-01-01..2261-12-31",
    ),
    LogCase(
        "one timestamp before 1970",
        _table(_timestamp_cell(4, -86_400_000_000)),
        "is outside 1970-01-01..2261-12-31",
    ),
    LogCase(
        "nanoseconds stored as microseconds",
        _table(_timestamps_times(1000)),
        "is outside 1970-01-01..2261-12-31",
    ),
    LogCase(
        "sub-microsecond ns timestamp", _table(_timestamps_times(1000, 1, "ns")), "sub-microsecond precision"
    ),
    LogCase(
        "chosen not among candidates",
        _cell("chosen_image_id", 4, 999_999),
        "is not among candidate_image_ids",
    ),
    LogCase(
        "unknown candidate image",
        _table(_list_cell("candidate_image_ids", 4, lambda c: [999_999, *c[1:]], pa.list_(pa.int64()))),
        "is not in the images table",
    ),
    LogCase(
        "candidate of another title",
        _table(_list_cell("title_id", 4, lambda v: (v + 1) % 8, pa.int64())),
        "belongs to title",
    ),
    LogCase(
        "repeated candidate",
        _table(_list_cell("candidate_image_ids", 4, lambda c: [*c, c[0]], pa.list_(pa.int64()))),
        "repeats an image id",
    ),
    LogCase("no candidates", _cell("candidate_image_ids", 4, []), "candidate_image_ids is empty"),
    LogCase(
        "129 candidates",
        _table(
            _list_cell(
                "candidate_image_ids", 4, lambda c: list(range(10**6, 10**6 + 129)), pa.list_(pa.int64())
            )
        ),
        "129 candidates, at most 128",
    ),
    LogCase(
        "null in history",
        _table(_list_cell("played_title_ids", 4, lambda c: [None], pa.list_(pa.int64()))),
        "played_title_ids has a null",
    ),
    LogCase("recommender_score NaN", _cell("recommender_score", 4, float("nan")), "recommender_score is nan"),
    LogCase(
        "action_dist sums to 0.9",
        _table(_list_cell("action_dist", 4, lambda d: [x * 0.9 for x in d], pa.list_(pa.float64()))),
        "action_dist",
    ),
    LogCase("propensity_kind mc_estimate:0", _cell("propensity_kind", 4, "mc_estimate:0"), "propensity_kind"),
    LogCase(
        "images: NaN embedding",
        _images(_list_cell("embedding", 2, lambda e: [float("nan")] * 4, pa.list_(pa.float32(), 4))),
        "embedding has nan",
    ),
    LogCase(
        "images: mixed-length embeddings",
        _images(_list_cell("embedding", 2, lambda e: e[:3], pa.list_(pa.float32()))),
        "embedding has 3 values but earlier rows have 4",
    ),
    LogCase("images: duplicated image_id", _images(_copy_cell("image_id", 0, 1)), "image_id"),
    LogCase(
        "images: unknown title",
        _images(_list_cell("title_id", 1, lambda v: 77, pa.int64())),
        "title_id 77 is not in the titles table",
    ),
    LogCase("titles: duplicated title_id", _titles(_copy_cell("title_id", 0, 1)), "title_id"),
    LogCase(
        "titles: launched_at in year 3000",
        _titles(
            lambda t: _set(
                t,
                "launched_at",
                pa.array([dt.datetime(3000, 1, 1, tzinfo=dt.UTC)] * t.num_rows, pa.timestamp("us", tz="UTC")),
            )
        ),
        "launched_at 3000-01-01",
    ),
    # refused problems of a file or the dataset as a whole
    LogCase(
        "naive timestamps",
        _table(lambda t: _set(t, "timestamp", t.column("timestamp").cast(pa.timestamp("us")))),
        "timestamp has no time zone",
    ),
    LogCase(
        "string propensities",
        _table(lambda t: _set(t, "propensity", t.column("propensity").cast(pa.string()))),
        "column has type string",
    ),
    LogCase("recommender_score float64", _cast("recommender_score", pa.float64()), "float64 is refused"),
    LogCase("member_id uint64", _cast("member_id", pa.uint64()), "column has type uint64"),
    LogCase("member_id float64", _cast("member_id", pa.float64()), "column has type double"),
    LogCase("hour as strings", _cast("hour", pa.string()), "column has type string"),
    # valid logs that cannot train or be evaluated: validation passes, train and evaluate say why
    LogCase(
        "reward all null of type null",
        _table(lambda t: _set(t, "reward", pa.nulls(t.num_rows))),
        unusable="no reward is known yet|no row has a known reward",
    ),
    LogCase(
        "every reward 0",
        _table(lambda t: _set(t, "reward", pa.array(np.zeros(t.num_rows)))),
        unusable="every logged reward is 0|",
    ),
    LogCase(
        "propensity 1 everywhere",
        _table(lambda t: _set(t.drop_columns(["action_dist"]), "propensity", pa.array(np.ones(t.num_rows)))),
        unusable="propensity is 1 on every row|",
    ),
    LogCase(
        "an unknown column",
        _table(lambda t: _set(t, "clicks", pa.array(np.zeros(t.num_rows)))),
        "not part of the impressions contract",
    ),
    LogCase(
        "a required column missing",
        _table(lambda t: t.drop_columns(["device"])),
        "required column is missing",
    ),
    LogCase(
        "a column twice",
        _table(
            lambda t: pa.Table.from_arrays(t.columns + [t.column("hour")], names=t.column_names + ["hour"])
        ),
        "appears more than once",
    ),
    LogCase("metadata of another table", _table(_foreign_metadata(b"images")), "expected 'impressions'"),
    LogCase(
        "another contract version",
        _table(_foreign_metadata(b"impressions", b"9.9")),
        "contract version '9.9'",
    ),
    LogCase("schema drift between files", _drift, "schema drift"),
    LogCase("hive folder country=ZZ", _hive_folder("country", "ZZ"), "names the contract column 'country'"),
    LogCase("hive folder hour=99", _hive_folder("hour", "99"), "names the contract column 'hour'"),
    LogCase("a corrupted data page", _flip_page_bytes, "changed since deepbandit simulate wrote it"),
    LogCase(
        "a corrupted data page, no record", _corrupted_page_no_record, "CRC checksum verification failed"
    ),
    LogCase("a truncated file", _truncate, "unreadable Parquet file"),
    LogCase("not Parquet at all", _not_parquet, "unreadable Parquet file"),
    LogCase("images.parquet missing", lambda r: (r / IMAGES).unlink(), "images.parquet"),
    LogCase("a killed writer", _killed_writer, "incomplete dataset"),
    LogCase(
        "a file added to a recorded dataset", _extra_recorded_file, "was not written by deepbandit simulate"
    ),
    LogCase(
        "a file changed in a recorded dataset",
        _changed_recorded_file,
        "changed since deepbandit simulate wrote it",
    ),
]


def _train(root: Path, out: Path) -> dict:
    cfg = TrainConfig(
        data=DataConfig(path=str(root)),
        model=ModelGroupConfig(hidden=8, tower_dim=8, head_dim=8, id_dim=4),
        trainer=TrainerConfig(
            max_epochs=1, batch_size=128, progress=False, logger="none", val_interval="none"
        ),
    )
    return train(cfg, out_dir=out)["val"]


def _evaluate(root: Path, out: Path) -> dict:
    from deepbandit.cli.evaluate import run

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"dataset={root}", f"out_dir={out}", "plots=false", "interval=normal",
                                             "train_fraction=0"])  # fmt: skip
    result = run(cfg)
    return {"n": result["n_eval_rows"], "policies": result["policies"]}


def _outcome(fn) -> tuple[object, UserError | None]:
    try:
        return fn(), None
    except UserError as e:  # anything else is a crash: the test fails with its traceback
        return None, e


_REFERENCES: dict[str, tuple[dict, dict]] = {}


def _reference(case: LogCase, base: Path, tmp: Path) -> tuple[dict, dict]:
    key = "base" if case.reference is None else case.id
    if key not in _REFERENCES:
        root = tmp / "reference"
        shutil.copytree(base, root)
        if case.reference is not None:
            case.reference(root)
        _REFERENCES[key] = (_train(root, tmp / "reference_train"), _evaluate(root, tmp / "reference_eval"))
    return _REFERENCES[key]


@pytest.mark.parametrize("case", LOG_CASES, ids=[c.id for c in LOG_CASES])
def test_every_entry_point_agrees_on_a_log(case: LogCase, base: Path, tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(base, root)
    case.edit(root)
    quarantine = tmp_path / "quarantine"
    _, strict = _outcome(lambda: validate_dataset(root, "strict"))
    report, quarantined = _outcome(lambda: validate_dataset(root, "quarantine", quarantine))
    trained, train_error = _outcome(lambda: _train(root, tmp_path / "train"))
    evaluated, eval_error = _outcome(lambda: _evaluate(root, tmp_path / "eval"))
    if case.unusable is not None:
        assert strict is None and quarantined is None and report.rows_quarantined == 0
        for error, expected in zip((train_error, eval_error), case.unusable.split("|"), strict=True):
            assert (error is None) if not expected else (expected in str(error)), error
        return
    if case.error is None:
        assert strict is None and quarantined is None and report.rows_quarantined == 0
        assert train_error is None and eval_error is None
        if case.same_result:
            ref_train, ref_eval = _reference(case, base, tmp_path)
            assert trained == ref_train
            assert evaluated == ref_eval
        return
    assert strict is not None, "validate accepted it"
    assert case.error in str(strict), str(strict)
    assert "\n" not in str(strict).strip() and len(str(strict)) < 600
    # train and evaluate pass the same gate: the same error, word for word
    assert train_error is not None and str(train_error) == str(strict)
    assert eval_error is not None and str(eval_error) == str(strict)
    if quarantined is not None:  # a problem with a file or the dataset as a whole
        assert str(quarantined) == str(strict)
    else:  # a row-level problem: the row is set aside under the same column
        assert isinstance(strict, ValidationError) and strict.row is not None
        assert report.rows_quarantined >= 1 and report.rows_read == report.rows_kept + report.rows_quarantined
        bad = pa.concat_tables(
            pq.read_table(p).select(["column", "row"]) for p in quarantine.rglob("*.parquet")
        )
        assert strict.column in bad.column("column").to_pylist()


# --- requests: the service, from dicts and from Arrow -------------------------------------------------------

TINY_EXPORT = Path(__file__).resolve().parent / "serving" / "tiny_export"
REQUEST_COLUMNS = ["request_id", "timestamp", "member_id", "title_id", "candidate_image_ids", "played_title_ids",
                   "country", "language", "device", "hour", "weekday", "recommender_score", "prior_interaction"]  # fmt: skip
_MISSING = object()


@pytest.fixture(scope="module")
def service():
    from deepbandit.serving import ArtworkService

    # greedy: the good requests' choices do not depend on how many random draws the batch used
    return ArtworkService.from_dir(TINY_EXPORT, providers=["CPUExecutionProvider"], policy={"name": "greedy"})


@pytest.fixture(scope="module")
def requests() -> list[dict]:
    return pq.read_table(TINY_EXPORT / "requests.parquet", columns=REQUEST_COLUMNS).slice(0, 5).to_pylist()


# (field, bad value or _MISSING) -> the request fails alone, with a message naming the field
REQUEST_CASES = [
    ("title_id", _MISSING), ("title_id", None), ("title_id", 13.7), ("title_id", "13"), ("title_id", True),
    ("member_id", 2**64), ("member_id", 2**63), ("member_id", -(2**63) - 1), ("member_id", 3.0),
    ("candidate_image_ids", []), ("candidate_image_ids", "145,146"), ("candidate_image_ids", [145.5, 146]),
    ("candidate_image_ids", [True, False]), ("candidate_image_ids", [145, 146, 145]),
    ("candidate_image_ids", [145, 999_999]), ("candidate_image_ids", list(range(145, 145 + 129))),
    ("candidate_image_ids", [145, 2**64]), ("candidate_image_ids", None),
    ("played_title_ids", ["a"]), ("played_title_ids", None), ("played_title_ids", [1.5]),
    ("hour", 24), ("hour", 13.5), ("hour", True), ("hour", "3"), ("hour", -1), ("weekday", 7), ("weekday", 2.0),
    ("recommender_score", 1e300), ("recommender_score", float("nan")), ("recommender_score", float("inf")),
    ("recommender_score", b"1"), ("recommender_score", True), ("recommender_score", "0.5"),
    ("prior_interaction", 2), ("prior_interaction", "yes"), ("prior_interaction", 0.5),
    ("country", 3), ("country", b"FR"), ("device", None), ("language", _MISSING),
    ("timestamp", dt.datetime(2026, 1, 1)), ("timestamp", 10**20), ("timestamp", -1), ("timestamp", "2026-01-01"),
    ("request_id", ""), ("request_id", 5), ("request_id", b"r2"), ("request_id", "DUPLICATE"),
]  # fmt: skip


def _with(requests: list[dict], field: str, value) -> list[dict]:
    out = [dict(r) for r in requests]
    if value is _MISSING:
        del out[2][field]
    elif value == "DUPLICATE":
        out[2][field] = out[1][field]
    else:
        out[2][field] = value
    return out


def _arrow(requests: list[dict]) -> pa.Table | None:
    """The requests as Arrow would type them, or None where Arrow cannot hold the value at all."""
    try:
        return pa.Table.from_pylist(requests)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


@pytest.mark.parametrize(("field", "value"), REQUEST_CASES, ids=[f"{f}={v!r}"[:60] for f, v in REQUEST_CASES])
def test_a_bad_request_fails_alone_naming_its_field(service, requests, field, value):
    rng = np.random.default_rng(0)
    good = service.decide(requests, rng=rng)
    bad = _with(requests, field, value)
    out = service.decide(bad, rng=np.random.default_rng(0))
    assert list(out.errors) == [2] and field in out.errors[2], out.errors
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(out.chosen_image_id[keep], good.chosen_image_id[keep])
    logged = service.to_impressions(out)  # what serving logs is what validation accepts
    assert logged.num_rows == 4 and validate_table_ok(logged)
    table = _arrow(bad)
    if table is None or (
        value is not _MISSING and value != "DUPLICATE" and repr(table.column(field)[2].as_py()) != repr(value)
    ):
        return  # Arrow cannot hold the value, or changed it itself while building the table
    try:
        out = service.decide(table, rng=np.random.default_rng(0))
    except TypeError as e:  # a column of a type the field cannot take: the whole table, naming the column
        assert f"'{field}'" in str(e)
        return
    assert list(out.errors) == [2] and field in out.errors[2], out.errors


def validate_table_ok(table: pa.Table) -> bool:
    from deepbandit.data.validation import validate_table

    return validate_table(table, "impressions").rows_quarantined == 0


def test_ids_stay_exact_and_every_logged_request_has_its_own_id(service, requests):
    big = 2**53 + 1  # float64 cannot hold it: a float round trip would log 2**53
    reqs = [dict(r) for r in requests]
    reqs[0]["member_id"] = big
    del reqs[3]["request_id"], reqs[4]["request_id"]
    for given in (reqs, pa.Table.from_pylist(reqs)):
        logged = service.to_impressions(service.decide(given, rng=np.random.default_rng(0)))
        assert logged.column("member_id")[0].as_py() == big
        ids = logged.column("request_id").to_pylist()
        assert len(set(ids)) == 5 and "" not in ids and ids[:3] == [r["request_id"] for r in reqs[:3]]
        assert validate_table_ok(logged)


# --- the graph, fed directly (as a Triton client would) -----------------------------------------------------


@pytest.fixture(scope="module")
def feeds(service, requests) -> dict:
    from deepbandit.serving.features import build_inputs

    batch = service.parse(requests)
    graph = build_inputs(batch, service.vocabs, service.images, service.embeddings, service.input_names,
                         service.max_history)  # fmt: skip
    return graph.feeds


def _feed(name: str, fn):
    def edit(feeds: dict) -> dict:
        out = {k: v.copy() for k, v in feeds.items()}
        if fn is _MISSING:
            del out[name]
        else:
            out[name] = fn(out[name]) if callable(fn) else fn
        return out

    return edit


def _at(row: int, value):
    def fn(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[row] = value
        return x

    return fn


GRAPH_CASES = [
    ("title_idx", _at(1, -1), "outside"), ("title_idx", _at(1, 10**6), "outside"),
    ("country_idx", _at(0, 999), "outside"), ("device_idx", _at(0, -5), "outside"),
    ("history_title_idx", _at((0, 0), -1), "outside"), ("hour", _at(2, 1000), "outside [0, 23]"),
    ("weekday", _at(2, -1), "outside [0, 6]"), ("prior_interaction", _at(0, 2.0), "outside [0, 1]"),
    ("recommender_score", _at(1, np.inf), "not finite"), ("candidate_embeddings", _at((0, 0, 0), np.nan), "not finite"),
    ("history_title_idx", lambda x: x[:, :0], "history axis is empty"),
    ("candidate_mask", lambda x: x[:, :0], "candidates axis is empty"),
    ("candidate_mask", _at(3, False), "has no valid candidate"),
    ("hour", lambda x: x.astype(np.int32), "must be an integer"), ("candidate_mask", lambda x: x.astype(np.int64), "must be bool"),
    ("recommender_score", lambda x: x.astype(np.float64), "must be float32"),
    ("title_idx", _MISSING, "missing scorer inputs"), ("member_features", np.zeros((5, 2), np.float32), "does not take"),
    ("candidate_embeddings", lambda x: x[..., :-1], "has shape"), ("history_mask", lambda x: x[:-1], "has shape"),
    ("posterior_noise", np.zeros((4, 3), np.float32), "takes no posterior noise"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fn", "message"), GRAPH_CASES, ids=[f"{n}: {m}" for n, _, m in GRAPH_CASES])
def test_graph_inputs_are_checked_before_they_reach_the_graph(service, feeds, name, fn, message):
    from deepbandit.serving import check_graph_inputs

    check_graph_inputs(feeds, service.manifest)  # the service's own inputs pass
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        check_graph_inputs(_feed(name, fn)(feeds), service.manifest)
    assert name in str(e.value) or name == "posterior_noise" or message.endswith("axis is empty")


def test_the_table_is_large(base):
    assert len(LOG_CASES) + len(REQUEST_CASES) + len(GRAPH_CASES) >= 150


def test_streamed_training_reads_accepted_variants_as_resident_training_does(base, tmp_path):
    """The streaming reader (row groups pruned by statistics in the file's own types) on several variants
    at once gives the same model as resident training on the contract's types."""
    root, reference = tmp_path / "data", tmp_path / "reference"
    shutil.copytree(base, root)
    shutil.copytree(base, reference)
    _write(reference, _read(reference), row_group_size=64)  # the same row groups (streaming shuffles them)
    t = _read(root)
    t = _set(t, "member_id", t.column("member_id").cast(pa.int32()))
    t = _set(t, "country", t.column("country").cast(pa.large_string()))
    t = _set(t, "device", t.column("device").dictionary_encode())
    t = _set(t, "timestamp", t.column("timestamp").cast(pa.timestamp("ns", tz="Asia/Tokyo")))
    t = _set(t, "candidate_image_ids", t.column("candidate_image_ids").cast(pa.large_list(pa.int32())))
    _write(root, t.replace_schema_metadata(None), row_group_size=64)

    def fit(path: Path, resident: bool, out: str) -> dict:
        cfg = TrainConfig(
            data=DataConfig(path=str(path), resident=resident),
            model=ModelGroupConfig(hidden=8, tower_dim=8, head_dim=8, id_dim=4),
            trainer=TrainerConfig(
                max_epochs=1, batch_size=128, progress=False, logger="none", val_interval="none"
            ),
        )
        return train(cfg, out_dir=tmp_path / out)["val"]

    assert fit(root, False, "streamed") == fit(reference, False, "reference_streamed")
    assert fit(root, True, "resident") == fit(reference, True, "reference_resident")
