"""Validation of the log contract: a valid tiny world, then one mutation per way of breaking it.

Each row-level case is checked twice: strict mode must raise naming the column and the (0-based) row, and
quarantine mode must set aside exactly that row with rows read = rows kept + rows quarantined.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepbandit.data.io import write_parquet_atomic
from deepbandit.data.schema import (
    IMPRESSIONS_SCHEMA,
    MAX_CANDIDATES,
    MAX_HISTORY,
    METADATA_VERSION_KEY,
    OPTIONAL_IMPRESSION_FIELDS,
    TITLES_SCHEMA,
    images_schema,
)
from deepbandit.data.validation import (
    QUARANTINE_COLUMNS,
    ValidationError,
    validate_dataset,
    validate_table,
)

N_TITLES, IMAGES_PER_TITLE, EMBEDDING_DIM, MEMBER_DIM, N_ROWS = 4, 3, 4, 3, 24


def _outside(tmp_path):
    """A quarantine folder beside the dataset at ``tmp_path`` (inside it is refused)."""
    return tmp_path.with_name(tmp_path.name + "-quarantine")


# --- a tiny valid world -----------------------------------------------------------------------------


def image_id(title: int, k: int) -> int:
    return 1000 + 10 * title + k


def make_world(n_rows: int = N_ROWS, seed: int = 0, first_request: int = 0) -> dict[str, pa.Table]:
    """titles (4), images (3 per title, 4-dim embeddings), impressions (n_rows) satisfying the contract."""
    rng = np.random.default_rng(seed)
    titles = pa.table(
        {"title_id": list(range(N_TITLES)), "genres": [["drama"], ["comedy", "drama"], [], ["horror"]]},
        schema=pa.schema(TITLES_SCHEMA.field(n) for n in ("title_id", "genres")).with_metadata(
            TITLES_SCHEMA.metadata
        ),
    )
    img_ids = [image_id(t, k) for t in range(N_TITLES) for k in range(IMAGES_PER_TITLE)]
    img_schema = images_schema(EMBEDDING_DIM)
    images = pa.table(
        {
            "image_id": img_ids,
            "title_id": [t for t in range(N_TITLES) for _ in range(IMAGES_PER_TITLE)],
            "embedding": rng.normal(size=(len(img_ids), EMBEDDING_DIM)).astype(np.float32).tolist(),
        },
        schema=pa.schema([img_schema.field(n) for n in ("image_id", "title_id", "embedding")]).with_metadata(
            img_schema.metadata
        ),
    )
    rows: dict[str, list] = {f.name: [] for f in IMPRESSIONS_SCHEMA}
    rows |= {f.name: [] for f in OPTIONAL_IMPRESSION_FIELDS}
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    for i in range(n_rows):
        title = i % N_TITLES
        n_cand = 2 + i % 2  # 2 or 3 candidates
        cands = [image_id(title, k) for k in rng.permutation(IMAGES_PER_TITLE)[:n_cand]]
        dist = rng.dirichlet(np.ones(n_cand))
        chosen = int(rng.integers(n_cand))
        rows["request_id"].append(f"r{first_request + i}")
        rows["timestamp"].append(t0 + dt.timedelta(minutes=i))
        rows["member_id"].append(int(rng.integers(1 << 40)))
        rows["title_id"].append(title)
        rows["candidate_image_ids"].append(cands)
        rows["chosen_image_id"].append(cands[chosen])
        rows["propensity"].append(float(dist[chosen]))
        rows["reward"].append(None if i == 1 else float(rng.integers(2)))  # null: window still open
        rows["played_title_ids"].append([int(x) for x in rng.integers(N_TITLES, size=i % 3)])
        rows["country"].append("FR")
        rows["language"].append("fr")
        rows["device"].append("tv")
        rows["hour"].append(i % 24)
        rows["weekday"].append(i % 7)
        rows["recommender_score"].append(float(rng.normal()))
        rows["prior_interaction"].append(bool(i % 2))
        rows["action_dist"].append(dist.tolist())
        rows["member_features"].append(rng.normal(size=MEMBER_DIM).astype(np.float32).tolist())
        rows["propensity_kind"].append("exact" if i % 2 else "mc_estimate:64")
        rows["logging_policy"].append("week1" if i < n_rows // 2 else "week2")
    schema = pa.schema(
        list(IMPRESSIONS_SCHEMA) + OPTIONAL_IMPRESSION_FIELDS, metadata=IMPRESSIONS_SCHEMA.metadata
    )
    return {"titles": titles, "images": images, "impressions": pa.table(rows, schema=schema)}


@pytest.fixture(scope="module")
def world() -> dict[str, pa.Table]:
    return make_world()


def set_cell(table: pa.Table, column: str, row: int, value) -> pa.Table:
    """Copy of ``table`` with one cell replaced (fields keep their type; nullability is relaxed)."""
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    f = table.schema.field(i)
    return table.set_column(i, pa.field(f.name, f.type, nullable=True), pa.array(values, f.type))


def set_type(table: pa.Table, column: str, type_: pa.DataType, values=None) -> pa.Table:
    i = table.schema.get_field_index(column)
    arr = pa.array(values, type_) if values is not None else table.column(column).cast(type_)
    return table.set_column(i, pa.field(column, type_), arr)


def known_images(world) -> dict:
    images = world["images"]
    return {
        "known_image_ids": images.column("image_id").to_numpy(),
        "image_title_ids": images.column("title_id").to_numpy(),
    }


# --- row-level cases --------------------------------------------------------------------------------


@dataclass
class Case:
    """Break row ``row`` of one table; validation must blame ``column`` at ``row`` and say ``fragment``."""

    name: str
    kind: str
    mutate: Callable[[pa.Table], pa.Table]
    column: str
    row: int
    fragment: str
    options: dict | None = None  # extra validate_table arguments; "images" pulls in the known images


def cell(column: str, row: int, value) -> Callable[[pa.Table], pa.Table]:
    return lambda t: set_cell(t, column, row, value)


def edit(column: str, row: int, fn: Callable) -> Callable[[pa.Table], pa.Table]:
    """Replace a cell by fn(old value)."""
    return lambda t: set_cell(t, column, row, fn(t.column(column)[row].as_py()))


def cells(*changes) -> Callable[[pa.Table], pa.Table]:
    def apply(t: pa.Table) -> pa.Table:
        for change in changes:
            t = change(t)
        return t

    return apply


def foreign_candidate(t: pa.Table, row: int) -> pa.Table:
    """Swap a non-chosen candidate of ``row`` for an image of another title."""
    cands = t.column("candidate_image_ids")[row].as_py()
    chosen = t.column("chosen_image_id")[row].as_py()
    k = next(k for k, c in enumerate(cands) if c != chosen)
    title = t.column("title_id")[row].as_py()
    cands[k] = image_id((title + 1) % N_TITLES, 0)
    return set_cell(t, "candidate_image_ids", row, cands)


def unknown_candidate(t: pa.Table, row: int) -> pa.Table:
    cands = t.column("candidate_image_ids")[row].as_py()
    chosen = t.column("chosen_image_id")[row].as_py()
    k = next(k for k, c in enumerate(cands) if c != chosen)
    cands[k] = 987_654
    return set_cell(t, "candidate_image_ids", row, cands)


def skew_dist(t: pa.Table, row: int, fn: Callable[[list, int], list]) -> pa.Table:
    """Change action_dist of ``row`` through fn(dist, chosen position)."""
    cands = t.column("candidate_image_ids")[row].as_py()
    pos = cands.index(t.column("chosen_image_id")[row].as_py())
    return set_cell(t, "action_dist", row, fn(t.column("action_dist")[row].as_py(), pos))


def off_by(dist: list, pos: int, delta: float) -> list:
    """Add delta to a non-chosen entry: the chosen entry still equals the propensity."""
    dist = list(dist)
    dist[(pos + 1) % len(dist)] += delta
    return dist


def negative_entry(dist: list, pos: int) -> list:
    """A negative non-chosen entry, balanced by another, so the sum and the chosen entry stay right."""
    dist = list(dist)
    dist[(pos + 1) % len(dist)] -= 2.0
    dist[(pos + 2) % len(dist)] += 2.0
    return dist


IMP = "impressions"
CASES = [
    Case("request_id null", IMP, cell("request_id", 3, None), "request_id", 3, "request_id is null"),
    Case("request_id empty", IMP, cell("request_id", 4, ""), "request_id", 4, "empty string"),
    Case(
        "request_id duplicated", IMP, cell("request_id", 7, "r2"), "request_id", 7, "already appears at row 2"
    ),
    Case("timestamp null", IMP, cell("timestamp", 1, None), "timestamp", 1, "timestamp is null"),
    Case("member_id null", IMP, cell("member_id", 5, None), "member_id", 5, "member_id is null"),
    Case("title_id null", IMP, cell("title_id", 6, None), "title_id", 6, "title_id is null"),
    Case("candidates null", IMP, cell("candidate_image_ids", 2, None), "candidate_image_ids", 2, "is null"),
    Case("candidates empty", IMP, cell("candidate_image_ids", 9, []), "candidate_image_ids", 9, "is empty"),
    Case(
        "too many candidates",
        IMP,
        cell("candidate_image_ids", 8, list(range(1, MAX_CANDIDATES + 2))),
        "candidate_image_ids",
        8,
        f"{MAX_CANDIDATES + 1} candidates, at most {MAX_CANDIDATES}",
    ),
    Case(
        "candidate null id",
        IMP,
        edit("candidate_image_ids", 10, lambda c: [*c, None]),
        "candidate_image_ids",
        10,
        "has a null at position",
    ),
    Case(
        "candidate repeated",
        IMP,
        edit("candidate_image_ids", 11, lambda c: [c[0], *c]),
        "candidate_image_ids",
        11,
        "repeats an image id",
    ),
    Case(
        "candidate unknown",
        IMP,
        lambda t: unknown_candidate(t, 12),
        "candidate_image_ids",
        12,
        "candidate image id 987654 is not in the images table",
        {"images": True},
    ),
    Case(
        "candidate of another title",
        IMP,
        lambda t: foreign_candidate(t, 13),
        "candidate_image_ids",
        13,
        "not to this impression's title 1",
        {"images": True},
    ),
    Case(
        "chosen null",
        IMP,
        cell("chosen_image_id", 14, None),
        "chosen_image_id",
        14,
        "chosen_image_id is null",
    ),
    Case(
        "chosen not a candidate",
        IMP,
        cell("chosen_image_id", 15, 424_242),
        "chosen_image_id",
        15,
        "chosen_image_id 424242 is not among candidate_image_ids",
    ),
    Case("propensity null", IMP, cell("propensity", 16, None), "propensity", 16, "propensity is null"),
    Case("propensity NaN", IMP, cell("propensity", 17, float("nan")), "propensity", 17, "propensity is nan"),
    Case("propensity inf", IMP, cell("propensity", 0, float("inf")), "propensity", 0, "propensity is inf"),
    Case(
        "propensity > 1",
        IMP,
        cell("propensity", 17, 1.5),
        "propensity",
        17,
        "propensity 1.5 is outside (0, 1]",
    ),
    Case(
        "propensity 0", IMP, cell("propensity", 18, 0.0), "propensity", 18, "propensity 0.0 is outside (0, 1]"
    ),
    Case("propensity < 0", IMP, cell("propensity", 19, -0.25), "propensity", 19, "-0.25 is outside (0, 1]"),
    Case("reward NaN", IMP, cell("reward", 20, float("nan")), "reward", 20, "reward is nan"),
    Case("reward > 1", IMP, cell("reward", 21, 2.0), "reward", 21, "reward 2.0 is outside [0, 1]"),
    Case("reward < 0", IMP, cell("reward", 22, -1.0), "reward", 22, "reward -1.0 is outside [0, 1]"),
    Case("played null", IMP, cell("played_title_ids", 23, None), "played_title_ids", 23, "is null"),
    Case(
        "played null entry",
        IMP,
        cell("played_title_ids", 3, [1, None]),
        "played_title_ids",
        3,
        "null at position 1",
    ),
    Case(
        "played too long",
        IMP,
        cell("played_title_ids", 4, [1] * (MAX_HISTORY + 1)),
        "played_title_ids",
        4,
        f"at most {MAX_HISTORY}",
    ),
    Case("country null", IMP, cell("country", 5, None), "country", 5, "country is null"),
    Case("language null", IMP, cell("language", 6, None), "language", 6, "language is null"),
    Case("device null", IMP, cell("device", 7, None), "device", 7, "device is null"),
    Case("hour 24", IMP, cell("hour", 8, 24), "hour", 8, "hour 24 is outside 0..23"),
    Case("hour negative", IMP, cell("hour", 9, -1), "hour", 9, "hour -1 is outside 0..23"),
    Case("hour null", IMP, cell("hour", 10, None), "hour", 10, "hour is null"),
    Case("weekday 7", IMP, cell("weekday", 11, 7), "weekday", 11, "weekday 7 is outside 0..6"),
    Case("score NaN", IMP, cell("recommender_score", 12, float("nan")), "recommender_score", 12, "is nan"),
    Case("score -inf", IMP, cell("recommender_score", 13, float("-inf")), "recommender_score", 13, "is -inf"),
    Case("prior null", IMP, cell("prior_interaction", 14, None), "prior_interaction", 14, "is null"),
    Case(
        "dist null entry",
        IMP,
        edit("action_dist", 15, lambda d: [None, *d[1:]]),
        "action_dist",
        15,
        "null at",
    ),
    Case(
        "dist NaN entry",
        IMP,
        edit("action_dist", 16, lambda d: [*d[:-1], float("nan")]),
        "action_dist",
        16,
        "action_dist has nan at position",
    ),
    Case(
        "dist negative entry",
        IMP,
        lambda t: skew_dist(t, 17, negative_entry),
        "action_dist",
        17,
        "action_dist has -",
    ),
    Case(
        "dist length",
        IMP,
        edit("action_dist", 18, lambda d: [*d, 0.0]),
        "action_dist",
        18,
        "entries for 2 candidates",
    ),
    Case(
        "dist sum",
        IMP,
        lambda t: skew_dist(t, 19, lambda d, pos: off_by(d, pos, 0.1)),
        "action_dist",
        19,
        "sums to 1.1",
    ),
    Case(
        "dist sum just past tolerance",
        IMP,
        lambda t: skew_dist(t, 20, lambda d, pos: off_by(d, pos, 3e-6)),
        "action_dist",
        20,
        "not 1 (tolerance 1e-06)",
    ),
    Case(
        "dist disagrees with propensity",
        IMP,
        edit("propensity", 21, lambda p: p / 2),
        "action_dist",
        21,
        "but propensity is",
    ),
    Case(
        "member_features NaN",
        IMP,
        edit("member_features", 22, lambda m: [float("nan"), *m[1:]]),
        "member_features",
        22,
        "member_features has nan at position 0",
    ),
    Case(
        "member_features null entry",
        IMP,
        edit("member_features", 2, lambda m: [*m[:-1], None]),
        "member_features",
        2,
        "null at position 2",
    ),
    Case(
        "member_features width",
        IMP,
        edit("member_features", 23, lambda m: [*m, 0.5]),
        "member_features",
        23,
        f"has {MEMBER_DIM + 1} values, expected {MEMBER_DIM}",
        {"member_features_dim": MEMBER_DIM},
    ),
    Case("propensity_kind empty", IMP, cell("propensity_kind", 3, ""), "propensity_kind", 3, "empty string"),
    Case(
        "propensity_kind malformed MC",
        IMP,
        cell("propensity_kind", 4, "mc_estimate:zero"),
        "propensity_kind",
        4,
        "'mc_estimate:zero' is not mc_estimate:<samples>",
    ),
    Case("image_id null", "images", cell("image_id", 2, None), "image_id", 2, "image_id is null"),
    Case(
        "image_id duplicated",
        "images",
        cell("image_id", 5, image_id(0, 0)),
        "image_id",
        5,
        "appears at row 0",
    ),
    Case("image title_id null", "images", cell("title_id", 4, None), "title_id", 4, "title_id is null"),
    Case(
        "image of unknown title",
        "images",
        cell("title_id", 3, 77),
        "title_id",
        3,
        "title_id 77 is not in the titles table",
        {"known_title_ids": np.arange(N_TITLES)},
    ),
    Case(
        "embedding NaN",
        "images",
        edit("embedding", 6, lambda e: [*e[:-1], float("nan")]),
        "embedding",
        6,
        "has nan at position 3",
    ),
    Case(
        "embedding null entry",
        "images",
        edit("embedding", 1, lambda e: [None, *e[1:]]),
        "embedding",
        1,
        "null at position 0",
    ),
    Case(
        "embedding wrong size",
        "images",
        edit("embedding", 7, lambda e: e[:-1]),
        "embedding",
        7,
        f"has {EMBEDDING_DIM - 1} values, expected {EMBEDDING_DIM}",
        {"embedding_dim": EMBEDDING_DIM},
    ),
    Case("embedding null", "images", cell("embedding", 8, None), "embedding", 8, "embedding is null"),
    Case(
        "title_id duplicated",
        "titles",
        cell("title_id", 3, 1),
        "title_id",
        3,
        "title_id 1 already appears at row 1",
    ),
    Case("genres null", "titles", cell("genres", 0, None), "genres", 0, "genres is null"),
    Case(
        "genres null entry", "titles", cell("genres", 1, ["comedy", None]), "genres", 1, "null at position 1"
    ),
]


def relax(table: pa.Table) -> pa.Table:
    """Variable-size lists for the embedding, so a mutation may change one row's width."""
    if "embedding" in table.column_names:
        return set_type(table, "embedding", pa.list_(pa.float32()))
    return table


def case_inputs(case: Case, world) -> tuple[pa.Table, dict]:
    options = dict(case.options or {})
    if options.pop("images", False):
        options |= known_images(world)
    return case.mutate(relax(world[case.kind])), options


def test_cases_cover_enough_ways_to_break_a_table():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_strict_names_column_and_row(case: Case, world):
    table, options = case_inputs(case, world)
    with pytest.raises(ValidationError) as err:
        validate_table(table, case.kind, file=f"{case.kind}/part-0.parquet", **options)
    e = err.value
    assert (e.file, e.column, e.row) == (f"{case.kind}/part-0.parquet", case.column, case.row), str(e)
    assert case.fragment in str(e)
    assert str(e).startswith(f"{case.kind}/part-0.parquet: column {case.column!r}, row {case.row}")
    if case.kind == "impressions" and table.column("request_id")[case.row].is_valid:
        assert e.request_id == table.column("request_id")[case.row].as_py()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_quarantine_sets_aside_exactly_the_bad_row(case: Case, world):
    table, options = case_inputs(case, world)
    report = validate_table(table, case.kind, mode="quarantine", **options)
    assert report.rows_read == table.num_rows
    assert report.rows_read == report.rows_kept + report.rows_quarantined
    assert report.rows_quarantined == 1
    assert sum(report.reasons.values()) == 1
    bad = report.quarantined
    assert bad.column("row").to_pylist() == [case.row]
    assert bad.column("column").to_pylist() == [case.column]
    assert list(report.reasons) == bad.column("reason").to_pylist()
    assert bad.column_names == table.column_names + list(QUARANTINE_COLUMNS)
    as_read = bad.drop_columns(list(QUARANTINE_COLUMNS))
    assert as_read.schema == table.schema
    assert repr(as_read.to_pylist()) == repr(table.slice(case.row, 1).to_pylist())  # repr: NaN equals NaN
    assert report.kept.num_rows == report.rows_kept
    # the kept rows are the others, unchanged
    key = table.column_names[0]
    others = [v for i, v in enumerate(table.column(key).to_pylist()) if i != case.row]
    assert report.kept.column(key).to_pylist() == others


def test_valid_tables_pass_untouched(world):
    for kind, table in world.items():
        options = known_images(world) if kind == "impressions" else {}
        report = validate_table(table, kind, mode="quarantine", **options)
        assert (report.rows_read, report.rows_kept, report.rows_quarantined) == (
            table.num_rows,
            table.num_rows,
            0,
        )
        assert report.kept.equals(table)
        assert report.kept.schema.metadata == table.schema.metadata


def test_several_problems_count_once_each_row(world):
    table = world["impressions"]
    table = set_cell(table, "propensity", 2, 7.0)  # also breaks action_dist agreement: counted once
    table = set_cell(table, "hour", 5, 99)
    table = set_cell(table, "request_id", 9, "r0")
    report = validate_table(table, "impressions", mode="quarantine")
    assert report.quarantined.column("row").to_pylist() == [2, 5, 9]
    assert report.reasons == {
        "propensity is outside (0, 1]": 1,
        "hour is outside 0..23": 1,
        "request_id is duplicated": 1,
    }
    assert report.rows_kept == table.num_rows - 3
    # strict mode names the earliest bad row
    with pytest.raises(ValidationError, match=r"row 2 \(request_id 'r2'\): propensity 7.0"):
        validate_table(table, "impressions")


def test_tolerance_accepts_rounding(world):
    # a distribution that sums to 1 within 1e-7 and a propensity within 1e-7 of its entry are fine
    table = world["impressions"]
    dist = table.column("action_dist")[0].as_py()
    cands = table.column("candidate_image_ids")[0].as_py()
    pos = cands.index(table.column("chosen_image_id")[0].as_py())
    table = set_cell(table, "action_dist", 0, off_by(dist, pos, 1e-7))
    table = set_cell(table, "propensity", 0, dist[pos] + 1e-7)
    assert validate_table(table, "impressions").rows_quarantined == 0


# --- table-level problems: raise in both modes ------------------------------------------------------


def add_metadata(table: pa.Table, key: bytes, value: bytes) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), key: value})


TABLE_CASES = [
    (
        "missing column",
        IMP,
        lambda t: t.drop_columns(["propensity"]),
        "propensity",
        None,
        "required column is missing",
    ),
    (
        "unknown column",
        IMP,
        lambda t: t.append_column("score2", pa.array([0.0] * t.num_rows)),
        "score2",
        None,
        "not part of the impressions contract",
    ),
    (
        "propensity as string",
        IMP,
        lambda t: set_type(t, "propensity", pa.string()),
        "propensity",
        None,
        "column has type string, expected double",
    ),
    (
        "uint64 ids",
        IMP,
        lambda t: set_type(t, "member_id", pa.uint64()),
        "member_id",
        None,
        "type uint64, expected int64",
    ),
    (
        "float64 member_features",
        IMP,
        lambda t: set_type(t, "member_features", pa.list_(pa.float64())),
        "member_features",
        None,
        "expected list<item: float>",
    ),
    (
        "naive timestamps",
        IMP,
        lambda t: set_type(
            t, "timestamp", pa.timestamp("us"), t.column("timestamp").cast(pa.int64()).to_pylist()
        ),
        "timestamp",
        None,
        "assume_timezone",
    ),
    (
        "sub-microsecond timestamps",
        IMP,
        lambda t: set_type(
            t,
            "timestamp",
            pa.timestamp("ns", tz="UTC"),
            [v * 1000 + (i == 5) for i, v in enumerate(t.column("timestamp").cast(pa.int64()).to_pylist())],
        ),
        "timestamp",
        5,
        "sub-microsecond",
    ),
    (
        "other contract version",
        IMP,
        lambda t: add_metadata(t, METADATA_VERSION_KEY, b"0.9"),
        None,
        None,
        "contract version '0.9'",
    ),
    (
        "other table kind",
        "images",
        lambda t: add_metadata(t, b"deepbandit.table", b"titles"),
        None,
        None,
        "metadata says this is a 'titles' table",
    ),
    (
        "embedding width differs, no width given",
        "images",
        lambda t: set_cell(relax(t), "embedding", 4, [1.0, 2.0]),
        "embedding",
        4,
        "has 2 values but earlier rows have 4",
    ),
    (
        "member_features width differs, no width given",
        IMP,
        lambda t: set_cell(t, "member_features", 6, [1.0]),
        "member_features",
        6,
        "has 1 values but earlier rows have 3",
    ),
    (
        "float64 embedding",
        "images",
        lambda t: set_type(t, "embedding", pa.list_(pa.float64())),
        "embedding",
        None,
        "column has type list<item: double>",
    ),
    (
        "duplicated column",
        "titles",
        lambda t: t.append_column("genres", t.column("genres")),
        "genres",
        None,
        "more than once",
    ),
]


@pytest.mark.parametrize("mode", ["strict", "quarantine"])
@pytest.mark.parametrize(
    ("name", "kind", "mutate", "column", "row", "fragment"), TABLE_CASES, ids=[c[0] for c in TABLE_CASES]
)
def test_table_level_problems_raise_in_both_modes(world, mode, name, kind, mutate, column, row, fragment):
    with pytest.raises(ValidationError) as err:
        validate_table(mutate(world[kind]), kind, file="t.parquet", mode=mode)
    assert (err.value.file, err.value.column, err.value.row) == ("t.parquet", column, row), str(err.value)
    assert fragment in str(err.value)


def test_lossless_variants_are_normalised(world):
    t = world["impressions"]
    t = set_type(t, "request_id", pa.large_string())
    t = set_type(t, "member_id", pa.int32(), [i % 1000 for i in range(t.num_rows)])
    t = set_type(t, "candidate_image_ids", pa.large_list(pa.int32()))
    t = set_type(t, "timestamp", pa.timestamp("ms", tz="Europe/Paris"))
    t = set_type(t, "hour", pa.int64())
    t = set_type(t, "propensity", pa.float64())
    t = set_type(t, "country", pa.dictionary(pa.int8(), pa.string()), t.column("country").to_pylist())
    t = set_type(t, "reward", pa.null(), [None] * t.num_rows)
    report = validate_table(t, "impressions")
    kept = report.kept
    expected = world["impressions"]
    assert kept.schema.equals(expected.schema)
    for name in ("request_id", "candidate_image_ids", "hour", "country", "timestamp"):
        assert kept.column(name).equals(expected.column(name)), name
    assert kept.column("member_id").to_pylist() == [i % 1000 for i in range(t.num_rows)]
    assert kept.column("reward").null_count == t.num_rows

    images = world["images"]
    variable = set_type(images, "embedding", pa.list_(pa.float32()))
    assert validate_table(variable, "images").kept.equals(images)  # stored back as fixed_size_list[4]


def test_bad_arguments_are_refused(world):
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_table(world["titles"], "titles", mode="lenient")
    with pytest.raises(ValueError, match="kind must be one of"):
        validate_table(world["titles"], "title")
    with pytest.raises(ValueError, match="impressions tables only"):
        validate_table(world["titles"], "titles", known_image_ids=np.arange(3))
    with pytest.raises(ValueError, match=">= 1"):
        validate_table(world["images"], "images", embedding_dim=0)


# --- datasets ---------------------------------------------------------------------------------------


def write_dataset(root, parts: list[pa.Table] | None = None, world=None) -> None:
    """Layout of schema.py: titles.parquet, images.parquet, impressions/ hive-partitioned by day."""
    world = world or make_world()
    if parts is None:
        parts = [
            make_world(n_rows=10, seed=1)["impressions"],
            make_world(n_rows=12, seed=2, first_request=100)["impressions"],
        ]
    write_parquet_atomic(world["titles"], root / "titles.parquet")
    write_parquet_atomic(world["images"], root / "images.parquet")
    for k, part in enumerate(parts):
        write_parquet_atomic(
            part, root / "impressions" / f"day=2024-05-0{k + 1}" / "part-0.parquet", row_group_size=4
        )
    # what pyarrow skips, we skip
    (root / "impressions" / "_SUCCESS").write_text("")
    (root / "impressions" / ".part-9.parquet.tmp").write_bytes(b"half a file")


PART0 = "impressions/day=2024-05-01/part-0.parquet"
PART1 = "impressions/day=2024-05-02/part-0.parquet"


def test_valid_dataset_passes(tmp_path):
    write_dataset(tmp_path)
    for mode in ("strict", "quarantine"):
        report = validate_dataset(tmp_path, mode, quarantine_dir=_outside(tmp_path), batch_size=5)
        assert [r.file for r in report.files] == ["titles.parquet", "images.parquet", PART0, PART1]
        assert report.rows_read == N_TITLES + N_TITLES * IMAGES_PER_TITLE + 22
        assert report.rows_kept == report.rows_read and report.rows_quarantined == 0
        assert not report.reasons
        assert report.skipped == []
    assert not (_outside(tmp_path)).exists()
    # a stray non-Parquet file is not read (as by the readers) but is listed, not passed over in silence
    (tmp_path / "impressions" / "notes.csv").write_text("a,b\n")
    assert validate_dataset(tmp_path).skipped == ["impressions/notes.csv"]


def test_quarantine_across_files(tmp_path):
    """Duplicates across files, unknown images and an image set aside: counts add up file by file."""
    world = make_world()
    images = set_cell(world["images"], "embedding", 0, [float("nan")] * EMBEDDING_DIM)  # image 1000 (title 0)
    world = {**world, "images": set_type(images, "embedding", pa.list_(pa.float32(), EMBEDDING_DIM))}
    part0 = make_world(n_rows=10, seed=1)["impressions"]
    part1 = make_world(n_rows=12, seed=2, first_request=100)["impressions"]
    part1 = set_cell(part1, "request_id", 7, "r3")  # duplicates part0 row 3
    part1 = unknown_candidate(part1, 5)
    using_1000 = [
        i for i, c in enumerate(part0.column("candidate_image_ids").to_pylist()) if image_id(0, 0) in c
    ]
    write_dataset(tmp_path, [part0, part1], world)

    with pytest.raises(ValidationError) as err:
        validate_dataset(tmp_path)
    assert (err.value.file, err.value.column, err.value.row) == ("images.parquet", "embedding", 0)

    report = validate_dataset(tmp_path, "quarantine", quarantine_dir=_outside(tmp_path), batch_size=3)
    by_file = {r.file: r for r in report.files}
    for r in report.files:
        assert r.rows_read == r.rows_kept + r.rows_quarantined
    assert report.rows_read == report.rows_kept + report.rows_quarantined
    assert sum(report.reasons.values()) == report.rows_quarantined

    assert by_file["images.parquet"].rows_quarantined == 1
    q_images = pq.read_table(_outside(tmp_path) / "images.parquet.quarantine.parquet")
    assert q_images.column("image_id").to_pylist() == [image_id(0, 0)]
    assert q_images.column("reason").to_pylist() == ["embedding contains NaN or infinity"]

    # impressions showing the quarantined image lose it as an unknown id
    q0 = pq.read_table(_outside(tmp_path) / (PART0 + ".quarantine.parquet"))
    assert using_1000 and q0.column("row").to_pylist() == using_1000
    assert set(q0.column("reason").to_pylist()) == {"candidate image id not in the images table"}

    q1 = pq.read_table(_outside(tmp_path) / (PART1 + ".quarantine.parquet"))
    rows1 = dict(zip(q1.column("row").to_pylist(), q1.column("reason").to_pylist(), strict=True))
    assert rows1[7] == "request_id is duplicated"
    assert rows1[5] == "candidate image id not in the images table"
    assert by_file[PART1].rows_quarantined == len(rows1)
    assert q1.column("request_id").to_pylist() == [
        part1.column("request_id")[r].as_py() for r in sorted(rows1)
    ]
    assert not (_outside(tmp_path) / "titles.parquet.quarantine.parquet").exists()


def test_duplicate_request_id_across_files_strict(tmp_path):
    part0 = make_world(n_rows=10, seed=1)["impressions"]
    part1 = set_cell(make_world(n_rows=12, seed=2, first_request=100)["impressions"], "request_id", 6, "r4")
    write_dataset(tmp_path, [part0, part1])
    with pytest.raises(ValidationError) as err:
        validate_dataset(tmp_path, batch_size=4)
    assert (err.value.file, err.value.column, err.value.row) == (PART1, "request_id", 6)
    assert f"already appears at {PART0} row 4" in str(err.value)


def test_unknown_image_ids_in_dataset(tmp_path):
    part0 = make_world(n_rows=10, seed=1)["impressions"]
    part1 = unknown_candidate(make_world(n_rows=12, seed=2, first_request=100)["impressions"], 9)
    write_dataset(tmp_path, [part0, part1])
    with pytest.raises(ValidationError, match=r"row 9 \(request_id 'r109'\): candidate image id 987654"):
        validate_dataset(tmp_path, batch_size=4)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def replace_part1(table_fn):
    def mutate(root):
        path = root / PART1
        write_parquet_atomic(table_fn(pq.read_table(path)), path)

    return mutate


FILE_CASES = [
    ("truncated file", lambda root: truncate(root / PART1), PART1, None, "unreadable Parquet file"),
    (
        "truncated images",
        lambda root: truncate(root / "images.parquet"),
        "images.parquet",
        None,
        "unreadable",
    ),
    (
        "not Parquet",
        lambda root: (root / "impressions" / "part-9.parquet").write_text("a,b\n1,2\n"),
        "impressions/part-9.parquet",
        None,
        "unreadable Parquet file",
    ),
    (
        "drift: optional column dropped",
        replace_part1(lambda t: t.drop_columns(["action_dist"])),
        PART1,
        "action_dist",
        "schema drift: column missing here but present in " + PART0,
    ),
    (
        "drift: type variant",
        replace_part1(lambda t: set_type(t, "member_id", pa.int32(), [1] * t.num_rows)),
        PART1,
        "member_id",
        "schema drift: type int32 here but int64",
    ),
    (
        "wrong schema version",
        replace_part1(lambda t: add_metadata(t, METADATA_VERSION_KEY, b"2.0")),
        PART1,
        None,
        "contract version '2.0'",
    ),
    (
        "missing column in one file",
        replace_part1(lambda t: t.drop_columns(["reward"])),
        PART1,
        "reward",
        "missing",
    ),
    (
        "mistyped column in one file",
        replace_part1(lambda t: set_type(t, "hour", pa.string(), ["1"] * t.num_rows)),
        PART1,
        "hour",
        "column has type string",
    ),
    (
        "tz-naive timestamps in one file",
        replace_part1(lambda t: set_type(t, "timestamp", pa.timestamp("us"), [0] * t.num_rows)),
        PART1,
        "timestamp",
        "no time zone",
    ),
    (
        "embedding of wrong size (fixed size lists)",
        lambda root: write_parquet_atomic(
            set_type(
                set_type(pq.read_table(root / "images.parquet"), "embedding", pa.list_(pa.float32())),
                "embedding",
                pa.list_(pa.float32()),
                [[0.0] * (EMBEDDING_DIM + (i == 3)) for i in range(N_TITLES * IMAGES_PER_TITLE)],
            ),
            root / "images.parquet",
        ),
        "images.parquet",
        "embedding",
        "has 5 values but earlier rows have 4",
    ),
    (
        "images missing",
        lambda root: (root / "images.parquet").unlink(),
        "images.parquet",
        None,
        "file not found",
    ),
]


@pytest.mark.parametrize("mode", ["strict", "quarantine"])
@pytest.mark.parametrize(
    ("name", "mutate", "file", "column", "fragment"), FILE_CASES, ids=[c[0] for c in FILE_CASES]
)
def test_file_level_problems_name_the_file(tmp_path, mode, name, mutate, file, column, fragment):
    write_dataset(tmp_path)
    mutate(tmp_path)
    with pytest.raises(ValidationError) as err:
        validate_dataset(tmp_path, mode, quarantine_dir=_outside(tmp_path))
    assert (err.value.file, err.value.column) == (file, column), str(err.value)
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"{file}: ")


def test_quarantine_files_are_replaced_on_rerun(tmp_path):
    part1 = set_cell(make_world(n_rows=12, seed=2, first_request=100)["impressions"], "hour", 2, 30)
    write_dataset(tmp_path, [make_world(n_rows=10, seed=1)["impressions"], part1])
    q = _outside(tmp_path) / (PART1 + ".quarantine.parquet")
    assert validate_dataset(tmp_path, "quarantine", _outside(tmp_path)).rows_quarantined == 1
    assert pq.read_table(q).column("row").to_pylist() == [2]
    write_parquet_atomic(set_cell(part1, "hour", 2, 3), tmp_path / PART1)
    assert validate_dataset(tmp_path, "quarantine", _outside(tmp_path)).rows_quarantined == 0
    assert not q.exists()


def test_quarantine_needs_a_directory(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(ValueError, match="quarantine_dir"):
        validate_dataset(tmp_path, "quarantine")
    for inside in ("impressions/q", "impressions/_q", ".", "q"):  # anywhere in the dataset, hidden or not
        with pytest.raises(ValueError, match="lies inside the dataset"):
            validate_dataset(tmp_path, "quarantine", tmp_path / inside)


# --- the command ------------------------------------------------------------------------------------


def compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        return compose(config_name="validate", overrides=overrides)


def test_cli_run_returns_counts(tmp_path):
    from deepbandit.cli.validate import run

    part1 = set_cell(make_world(n_rows=12, seed=2, first_request=100)["impressions"], "propensity", 0, 0.0)
    write_dataset(tmp_path, [make_world(n_rows=10, seed=1)["impressions"], part1])
    cfg = compose(
        [f"dataset={tmp_path}", "mode=quarantine", f"quarantine_dir={_outside(tmp_path)}", "progress=false"]
    )
    summary = run(cfg)
    assert summary["rows_quarantined"] == 1
    assert summary["rows_read"] == summary["rows_kept"] + 1
    assert summary["reasons"] == {"propensity is outside (0, 1]": 1}
    assert summary["files"][PART1]["rows_quarantined"] == 1
    with pytest.raises(ValidationError, match="propensity 0.0 is outside"):
        run(compose([f"dataset={tmp_path}", "progress=false"]))


def test_cli_config_rejects_unknown_mode():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["dataset=x", "mode=lenient"])


def test_cli_exits_non_zero_on_strict_failure(tmp_path, monkeypatch, capsys):
    from deepbandit.cli import validate

    part1 = set_cell(make_world(n_rows=12, seed=2, first_request=100)["impressions"], "weekday", 3, 9)
    write_dataset(tmp_path / "data", [make_world(n_rows=10, seed=1)["impressions"], part1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["deepbandit validate", f"dataset={tmp_path / 'data'}"])
    with pytest.raises(SystemExit) as exit_:
        validate.main()
    assert exit_.value.code == 1
    assert "row 3" in capsys.readouterr().err


def test_sliced_tables_number_rows_from_the_slice(world):
    # a slice's list columns carry an offset into their values: row numbers and list checks must honour it
    table = set_cell(world["impressions"], "action_dist", 13, [0.5, 0.5, 0.5])
    with pytest.raises(ValidationError, match="row 3 .*sums to 1.5"):
        validate_table(table.slice(10), "impressions")
    chunked = pa.concat_tables([table.slice(0, 10), table.slice(10)])
    with pytest.raises(ValidationError, match="row 13 .*sums to 1.5"):
        validate_table(chunked, "impressions")
