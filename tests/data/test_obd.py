"""The Open Bandit Dataset importer: tiny OBD-format fixtures with known content, malformed inputs, the CLI,
and the real small sample (skipped when absent)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from deepbandit.cli import import_obd as cli
from deepbandit.data import schema
from deepbandit.data.obd import IMAGE_ID_STRIDE, METADATA_FILE, ObdFormatError, import_obd
from deepbandit.data.validation import validate_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2019, 11, 24, tzinfo=dt.UTC)
USER_VOCAB = [["a0", "a1"], ["b0", "b1", "b2"], ["c0", "c1"], ["d0", "d1", "d2", "d3"]]


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    """Write ``columns`` the way OBD does: a leading unnamed index column, then the named ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", *columns])
        writer.writerows([i, *row] for i, row in enumerate(zip(*columns.values(), strict=True)))


def write_obd(
    root: Path, policy: str, campaign: str = "c", *, n_rows: int = 300, n_items: int = 5, seed: int = 0,
    click_rate: float = 0.3,
) -> dict:  # fmt: skip
    """Write ``root/<policy>/<campaign>/`` in OBD's layout and return what was written (numpy arrays)."""
    rng = np.random.default_rng(seed)
    folder = root / policy / campaign
    item_ids = rng.permutation(n_items)  # stored out of order: the importer sorts by item id
    item_f0 = rng.normal(size=n_items)
    item_cat = [rng.choice([f"f{k}v{j}" for j in range(k + 2)], size=n_items) for k in range(1, 4)]
    _write_csv(
        folder / "item_context.csv",
        {"item_id": item_ids.tolist(), "item_feature_0": item_f0.tolist()}
        | {f"item_feature_{k}": item_cat[k - 1].tolist() for k in range(1, 4)},
    )
    seconds = np.sort(rng.uniform(0, 14 * 86400, size=n_rows))
    times = [T0 + dt.timedelta(seconds=float(s)) for s in seconds]
    item = rng.integers(0, n_items, size=n_rows)
    position = rng.integers(1, 4, size=n_rows)
    click = (rng.random(n_rows) < click_rate).astype(int)
    if policy == "random":
        propensity = np.full(n_rows, 1.0 / n_items)
    else:
        propensity = np.round(rng.uniform(0.001, 1.0, size=n_rows), 6)
    user = [rng.choice(vocab, size=n_rows) for vocab in USER_VOCAB]
    affinity = rng.poisson(0.2, size=(n_rows, n_items)).astype(float)
    _write_csv(
        folder / f"{campaign}.csv",
        {
            "timestamp": [t.isoformat(sep=" ") for t in times],
            "item_id": item.tolist(),
            "position": position.tolist(),
            "click": click.tolist(),
            "propensity_score": [repr(float(p)) for p in propensity],
        }
        | {f"user_feature_{k}": user[k].tolist() for k in range(4)}
        | {f"user-item_affinity_{i}": affinity[:, i].tolist() for i in range(n_items)},
    )
    return {
        "folder": folder, "item_ids": item_ids, "item_f0": item_f0, "item_cat": item_cat, "times": times,
        "item": item, "position": position, "click": click, "propensity": propensity, "user": user,
        "affinity": affinity,
    }  # fmt: skip


def _read(out: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    return (
        pq.read_table(out / schema.IMPRESSIONS_DIR),
        pq.read_table(out / schema.IMAGES_FILE),
        pq.read_table(out / schema.TITLES_FILE),
    )


@pytest.mark.parametrize("policy", ["random", "bts"])
def test_fixture_round_trip(tmp_path: Path, policy: str) -> None:
    src = write_obd(tmp_path / "obd", policy, seed=1 if policy == "random" else 2)
    out = tmp_path / "out"
    summary = import_obd(tmp_path / "obd", policy, "c", out)
    report = validate_dataset(out, mode="strict")
    assert report.rows_quarantined == 0
    imp, images, titles = _read(out)
    n, n_items = len(src["item"]), len(src["item_ids"])

    # schema: the contract's columns and metadata; action_dist only where the logging policy is known
    optional = ["member_features", "propensity_kind"] + (["action_dist"] if policy == "random" else [])
    expected = schema.IMPRESSION_FIELDS + [f for f in schema.OPTIONAL_IMPRESSION_FIELDS if f.name in optional]
    assert imp.schema.names == [f.name for f in expected]
    assert [imp.schema.field(f.name).type for f in expected] == [f.type for f in expected]
    meta = pq.read_schema(next((out / schema.IMPRESSIONS_DIR).glob("*.parquet"))).metadata
    assert meta[schema.METADATA_VERSION_KEY] == schema.SCHEMA_VERSION.encode()

    # decisions: title = position, chosen = (position, item), candidates = every item at that position
    col = {name: imp.column(name).to_numpy(zero_copy_only=False) for name in imp.column_names}
    np.testing.assert_array_equal(col["title_id"], src["position"])
    np.testing.assert_array_equal(col["chosen_image_id"], src["position"] * IMAGE_ID_STRIDE + src["item"])
    candidates = np.stack(col["candidate_image_ids"])  # (n, n_items)
    np.testing.assert_array_equal(
        candidates // IMAGE_ID_STRIDE, np.repeat(src["position"][:, None], n_items, 1)
    )
    np.testing.assert_array_equal(candidates % IMAGE_ID_STRIDE, np.tile(np.arange(n_items), (n, 1)))
    np.testing.assert_array_equal(col["reward"], src["click"].astype(float))
    np.testing.assert_allclose(col["propensity"], src["propensity"], rtol=1e-12)
    assert set(col["propensity_kind"]) == {"exact" if policy == "random" else "logged"}
    if policy == "random":
        dist = np.stack(col["action_dist"])
        np.testing.assert_allclose(dist, 1.0 / n_items, rtol=1e-12)
        chosen = dist[np.arange(n), np.argmax(candidates == col["chosen_image_id"][:, None], axis=1)]
        np.testing.assert_array_equal(chosen, col["propensity"])

    # context: time fields from the UTC timestamp, fixed values where OBD has nothing
    np.testing.assert_array_equal(col["hour"], [t.hour for t in src["times"]])
    np.testing.assert_array_equal(col["weekday"], [t.weekday() for t in src["times"]])
    assert imp.column("timestamp").to_pylist() == src["times"]
    assert {*col["country"], *col["language"], *col["device"]} == {"unknown"}
    assert not col["prior_interaction"].any() and not col["recommender_score"].any()
    assert all(len(p) == 0 for p in col["played_title_ids"])
    assert len(set(col["request_id"])) == n and col["request_id"][7] == f"obd-{policy}-c-7"

    # member features: one-hot blocks over the sorted vocabularies, then the affinities in item-id order
    feats = np.stack(col["member_features"])
    assert feats.shape == (n, sum(map(len, USER_VOCAB)) + n_items)
    start = 0
    for k, vocab in enumerate(USER_VOCAB):
        block = feats[:, start : start + len(vocab)]
        np.testing.assert_array_equal(block.sum(axis=1), 1.0)
        np.testing.assert_array_equal(np.array(sorted(vocab))[block.argmax(axis=1)], src["user"][k])
        start += len(vocab)
    np.testing.assert_array_equal(feats[:, start:], src["affinity"].astype(np.float32))
    assert summary["member_feature_names"][0] == "user_feature_0=a0"

    # member ids: the documented hash of the profile, equal exactly when the profiles are equal
    profile = ["|".join(values) for values in zip(*src["user"], strict=True)]
    digest = hashlib.blake2b(profile[0].encode(), digest_size=8).digest()
    assert col["member_id"][0] == int.from_bytes(digest, "little") >> 1
    pairs = set(zip(profile, col["member_id"].tolist(), strict=True))
    assert (
        len(pairs) == len(set(profile)) == len(set(col["member_id"].tolist())) == summary["n_member_profiles"]
    )

    # images: one per (position, item), the item's features whatever the position; titles: the positions
    positions = sorted(set(src["position"].tolist()))
    assert titles.column("title_id").to_pylist() == positions
    assert titles.column("genres").to_pylist() == [[]] * len(positions)
    image_ids = images.column("image_id").to_numpy()
    assert len(set(image_ids.tolist())) == len(image_ids) == len(positions) * n_items
    np.testing.assert_array_equal(images.column("title_id").to_numpy(), image_ids // IMAGE_ID_STRIDE)
    emb = np.stack(images.column("embedding").to_numpy(zero_copy_only=False))
    by_item = {item: emb[image_ids % IMAGE_ID_STRIDE == item] for item in range(n_items)}
    row_of = {int(item): row for row, item in enumerate(src["item_ids"])}
    for item, rows in by_item.items():
        assert (rows == rows[0]).all()  # same picture at every position
        np.testing.assert_allclose(rows[0, 0], src["item_f0"][row_of[item]], rtol=1e-6)
        names = summary["embedding_feature_names"]
        hot = {names[j] for j in np.flatnonzero(rows[0, 1:]) + 1}
        assert hot == {f"item_feature_{k}={src['item_cat'][k - 1][row_of[item]]}" for k in range(1, 4)}


def test_take_rate_matches_clicks(tmp_path: Path) -> None:
    """The summary's take rate is the mean click, within sampling error of the rate the clicks came from."""
    rate, n = 0.3, 4000
    src = write_obd(tmp_path / "obd", "random", n_rows=n, seed=3, click_rate=rate)
    summary = import_obd(tmp_path / "obd", "random", "c", tmp_path / "out")
    assert summary["n_impressions"] == n
    assert summary["take_rate"] == pytest.approx(src["click"].mean(), rel=1e-12)
    se = np.sqrt(rate * (1 - rate) / n)
    assert summary["take_rate_se"] == pytest.approx(
        np.sqrt(src["click"].mean() * (1 - src["click"].mean()) / n)
    )
    assert abs(summary["take_rate"] - rate) < 4 * se
    for p, by in summary["take_rate_by_position"].items():
        at = src["position"] == int(p)
        assert by["n"] == at.sum() and by["take_rate"] == pytest.approx(src["click"][at].mean(), rel=1e-12)


def test_streams_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks and row groups split the log; rows, numbering and checks must not depend on where."""
    import deepbandit.data.obd as obd

    monkeypatch.setattr(obd, "BLOCK_SIZE", 1 << 12)  # a few dozen rows per parser block
    monkeypatch.setattr(obd, "DEFAULT_ROW_GROUP_ROWS", 97)
    src = write_obd(tmp_path / "obd", "bts", n_rows=1000, seed=4)
    import_obd(tmp_path / "obd", "bts", "c", tmp_path / "out")
    meta = pq.ParquetFile(next((tmp_path / "out" / schema.IMPRESSIONS_DIR).glob("*.parquet"))).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [97] * 10 + [30]
    imp = pq.read_table(tmp_path / "out" / schema.IMPRESSIONS_DIR)
    assert imp.column("request_id").to_pylist() == [f"obd-bts-c-{i}" for i in range(1000)]
    np.testing.assert_array_equal(imp.column("reward").to_numpy(), src["click"])
    # a bad cell deep in the file is still reported at its own row
    path = src["folder"] / "c.csv"
    _set_cell(path, 876, "propensity_score", "oops")
    with pytest.raises(ObdFormatError, match=r"column 'propensity_score', data row 876 \(line 878\)"):
        import_obd(tmp_path / "obd", "bts", "c", tmp_path / "out2")


# --- malformed input -------------------------------------------------------------------------------


def _set_cell(path: Path, row: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = value
    lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _drop_column(path: Path, column: str) -> None:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    j = rows[0].index(column)
    path.write_text("\n".join(",".join(r[:j] + r[j + 1 :]) for r in rows) + "\n")


def _truncate_row(path: Path, row: int) -> None:
    lines = path.read_text().splitlines()
    lines[row + 1] = lines[row + 1].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")


LOG, ITEMS = "c.csv", "item_context.csv"
# fmt: off
MALFORMED = [
    # (file, corruption, policy, message)
    (LOG, lambda p: _drop_column(p, "click"), "bts", r"c\.csv: missing column\(s\) \['click'\]"),
    (LOG, lambda p: _drop_column(p, "user-item_affinity_3"), "bts", r"missing column\(s\) \['user-item_affinity_3'\]"),
    (LOG, lambda p: _set_cell(p, 5, "propensity_score", "abc"), "bts",
     r"c\.csv: column 'propensity_score', data row 5 \(line 7\): cannot parse abc as double"),
    (LOG, lambda p: _set_cell(p, 6, "propensity_score", "0"), "bts",
     r"column 'propensity_score', data row 6 \(line 8\): expected a probability in \(0, 1\], got 0\.0"),
    (LOG, lambda p: _set_cell(p, 7, "propensity_score", "1.5"), "bts", r"data row 7 .*probability in \(0, 1\]"),
    (LOG, lambda p: _set_cell(p, 8, "propensity_score", ""), "bts",
     r"column 'propensity_score', data row 8 \(line 10\): missing value"),
    (LOG, lambda p: _set_cell(p, 9, "propensity_score", "0.1"), "random",
     r"data row 9 .*uniform random policy over 5 items has propensity 1/5, got 0\.1"),
    (LOG, lambda p: _set_cell(p, 10, "item_id", "7"), "bts", r"column 'item_id', data row 10 .*absent from item_context"),
    (LOG, lambda p: _set_cell(p, 11, "timestamp", "yesterday"), "bts",
     r"column 'timestamp', data row 11 \(line 13\): cannot parse yesterday as timestamp"),
    (LOG, lambda p: _set_cell(p, 12, "timestamp", "2019-11-24 01:02:03"), "bts",
     r"column 'timestamp', data row 12 .*cannot parse 2019-11-24 01:02:03"),  # no UTC offset
    (LOG, lambda p: _set_cell(p, 13, "click", "2"), "bts", r"column 'click', data row 13 .*expected 0 or 1, got 2"),
    (LOG, lambda p: _set_cell(p, 14, "click", "1.0"), "bts", r"column 'click', data row 14 .*cannot parse 1\.0 as int64"),
    (LOG, lambda p: _set_cell(p, 15, "position", "0"), "bts", r"column 'position', data row 15 .*count from 1"),
    (LOG, lambda p: _set_cell(p, 16, "user-item_affinity_2", "inf"), "bts",
     r"column 'user-item_affinity_2', data row 16 .*finite"),
    (LOG, lambda p: _set_cell(p, 17, "user_feature_1", ""), "bts", r"column 'user_feature_1', data row 17 .*missing value"),
    (LOG, lambda p: _truncate_row(p, 18), "bts", r"c\.csv: line 20: expected \d+ fields, found \d+"),
    (ITEMS, lambda p: _set_cell(p, 2, "item_id", p.read_text().splitlines()[2].split(",")[1]), "bts",
     r"item_context\.csv: column 'item_id', data row 2 \(line 4\): duplicate item id"),
    (ITEMS, lambda p: _set_cell(p, 1, "item_feature_0", "nan"), "bts", r"item_context\.csv: column 'item_feature_0', data row 1 .*finite"),
    (ITEMS, lambda p: _set_cell(p, 3, "item_id", "1000"), "bts", r"data row 3 .*\[0, 1000\)"),
    (ITEMS, lambda p: p.unlink(), "bts", r"item_context\.csv: file not found"),
    (ITEMS, lambda p: p.write_text(""), "bts", r"item_context\.csv: empty file"),
]
# fmt: on


@pytest.mark.parametrize(("file", "corrupt", "policy", "message"), MALFORMED)
def test_malformed_input_is_named(tmp_path: Path, file: str, corrupt, policy: str, message: str) -> None:
    src = write_obd(tmp_path / "obd", policy, n_rows=40, seed=5)
    corrupt(src["folder"] / file)
    with pytest.raises(ObdFormatError, match=message):
        import_obd(tmp_path / "obd", policy, "c", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["obd"]  # and no temporary folder left behind


def test_stray_affinity_column(tmp_path: Path) -> None:
    src = write_obd(tmp_path / "obd", "bts", n_items=4, seed=6)
    path = src["folder"] / ITEMS
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # drop the last item: its affinity column is now a stray
    with pytest.raises(ObdFormatError, match=r"column\(s\) \['user-item_affinity_\d'\] name items absent"):
        import_obd(tmp_path / "obd", "bts", "c", tmp_path / "out")


def test_candidate_limit(tmp_path: Path) -> None:
    write_obd(tmp_path / "obd", "random", n_items=12, seed=7)
    with pytest.raises(ValueError, match=r"has 12 items but max_candidates is 10.*max_candidates=12"):
        import_obd(tmp_path / "obd", "random", "c", tmp_path / "out", max_candidates=10)
    summary = import_obd(tmp_path / "obd", "random", "c", tmp_path / "out", max_candidates=12)
    assert summary["n_items"] == 12


def test_overwrite_rules(tmp_path: Path) -> None:
    write_obd(tmp_path / "obd", "bts", seed=8)
    out = tmp_path / "out"
    import_obd(tmp_path / "obd", "bts", "c", out)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        import_obd(tmp_path / "obd", "bts", "c", out)
    (out / "mine.txt").write_text("kept")
    import_obd(tmp_path / "obd", "bts", "c", out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / METADATA_FILE).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not replacing what we did not write"):
        import_obd(tmp_path / "obd", "bts", "c", foreign, overwrite=True)
    assert (foreign / "precious.txt").read_text() == "x"
    with pytest.raises(ValueError, match="policy must be one of"):
        import_obd(tmp_path / "obd", "epsilon", "c", tmp_path / "other")


# --- CLI ------------------------------------------------------------------------------------------


def _compose(overrides: list[str]):
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        return compose(config_name="import_obd", overrides=overrides)


def test_cli_reports_take_rate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_obd(tmp_path / "obd", "random", campaign="men", n_rows=500, seed=9)
    cfg = _compose([f"source={tmp_path / 'obd'}", "behavior_policy=random", "campaign=men"])
    assert cfg.out_dir == "data/obd/random/men"  # the default follows policy and campaign
    cfg.out_dir = str(tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="deepbandit.cli.import_obd"):
        summary = cli.run(cfg)
    assert summary["take_rate"] == pytest.approx(src["click"].mean(), rel=1e-12)
    assert f"(mean click): {src['click'].mean():.5f}" in caplog.text
    assert validate_dataset(tmp_path / "out").rows_quarantined == 0


def test_cli_config_is_typed() -> None:
    with pytest.raises(ConfigCompositionException):
        _compose(["source=x", "polcy=random"])
    with pytest.raises(ConfigCompositionException):
        _compose(["source=x", "max_candidates=many"])


# --- the real small sample --------------------------------------------------------------------------


def _obd_dir() -> Path | None:
    candidates = [os.environ.get("DEEPBANDIT_OBD_DIR"), REPO_ROOT.parent / "shared" / "data" / "obd"]
    return next((Path(c) for c in candidates if c and (Path(c) / "random").is_dir()), None)


needs_obd = pytest.mark.skipif(
    _obd_dir() is None, reason="OBD sample absent: set DEEPBANDIT_OBD_DIR or put it in ../shared/data/obd"
)


def _mean_click(path: Path) -> tuple[float, int]:
    with path.open(newline="") as handle:
        clicks = [int(row["click"]) for row in csv.DictReader(handle)]
    return float(np.mean(clicks)), len(clicks)


@needs_obd
@pytest.mark.parametrize("policy", ["random", "bts"])
@pytest.mark.parametrize(("campaign", "n_items"), [("all", 80), ("men", 34), ("women", 46)])
def test_real_sample_passes_validation(tmp_path: Path, policy: str, campaign: str, n_items: int) -> None:
    assert schema.MAX_CANDIDATES >= 80, (
        "the `all` campaign needs MAX_CANDIDATES >= 80 (the lead raises it to 128)"
    )
    summary = import_obd(_obd_dir(), policy, campaign, tmp_path / "out")
    report = validate_dataset(tmp_path / "out", mode="strict")
    mean, n = _mean_click(_obd_dir() / policy / campaign / f"{campaign}.csv")
    assert report.rows_read == n + 3 * n_items + 3 and report.rows_quarantined == 0
    assert (
        summary["n_impressions"] == n and summary["n_items"] == n_items and summary["positions"] == [1, 2, 3]
    )
    assert summary["take_rate"] == pytest.approx(mean, rel=1e-12)
    imp = pq.read_table(
        tmp_path / "out" / schema.IMPRESSIONS_DIR, columns=["candidate_image_ids", "propensity"]
    )
    assert set(np.diff(imp.column("candidate_image_ids").combine_chunks().offsets.to_numpy())) == {n_items}
    if policy == "random":
        assert set(imp.column("propensity").to_numpy()) == {1.0 / n_items}


@needs_obd
def test_real_random_take_rate_from_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The CLI summary reports the on-policy take rate of the uniform random logs (mean click) with its s.e."""
    cfg = _compose(
        [f"source={_obd_dir()}", "behavior_policy=random", "campaign=all", f"out_dir={tmp_path / 'out'}"]
    )
    with caplog.at_level(logging.INFO, logger="deepbandit.cli.import_obd"):
        summary = cli.run(cfg)
    mean, n = _mean_click(_obd_dir() / "random" / "all" / "all.csv")
    assert summary["take_rate"] == pytest.approx(mean, rel=1e-12)
    assert summary["take_rate_se"] == pytest.approx(np.sqrt(mean * (1 - mean) / n), rel=1e-12)
    assert f"{mean:.5f} +- {np.sqrt(mean * (1 - mean) / n):.5f}" in caplog.text
