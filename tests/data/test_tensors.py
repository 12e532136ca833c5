"""Logs to tensors: vocabularies, the batch type, padding, the chosen position, the stream, and the round
trip write -> read -> tensors checked against a plain per-row Python reference."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from deepbandit.data import io
from deepbandit.data.schema import (
    IMPRESSIONS_SCHEMA,
    OPTIONAL_IMPRESSION_FIELDS,
    TITLES_SCHEMA,
    images_schema,
)
from deepbandit.data.tensors import ImageTable, ImpressionBatch, ImpressionStream, table_to_batch
from deepbandit.data.vocab import PAD, UNK, FeatureVocabs, Vocab

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
US = 1_000_000
IMAGES = np.arange(1000, 1040)  # 40 images; 1040.. are never in the catalogue
OPTIONAL = {f.name: f for f in OPTIONAL_IMPRESSION_FIELDS}


def make_impressions(n: int, seed: int = 0, *, unknown: bool = False, extras: bool = False) -> pa.Table:
    """n impressions over 2 days: 1..6 candidates, 0..7 plays, null rewards. ``unknown`` draws some ids and
    countries outside the catalogue; ``extras`` adds action_dist and 3 member features."""
    rng = np.random.default_rng(seed)
    n_cand = rng.integers(1, 7, n)
    pool = np.arange(1000, 1050) if unknown else IMAGES
    candidates = [rng.choice(pool, k, replace=False).tolist() for k in n_cand]
    chosen = [c[int(rng.integers(0, len(c)))] for c in candidates]
    titles = np.arange(10, 30 if unknown else 20)
    cols = {
        "request_id": [f"q{seed}-{i}" for i in range(n)],
        "timestamp": pa.array(
            int(T0.timestamp()) * US + np.sort(rng.integers(0, 2 * 86_400 * US, n)),
            pa.timestamp("us", tz="UTC"),
        ),
        "member_id": rng.integers(-5, 50, n),
        "title_id": rng.choice(titles, n),
        "candidate_image_ids": candidates,
        "chosen_image_id": chosen,
        "propensity": rng.uniform(0.05, 1.0, n),
        "reward": pa.array(rng.random(n), mask=rng.random(n) < 0.25),
        "played_title_ids": [rng.choice(titles, k).tolist() for k in rng.integers(0, 8, n)],
        "country": rng.choice(["US", "GB", "FR"] if unknown else ["US", "GB"], n),
        "language": rng.choice(["en", "fr"], n),
        "device": rng.choice(["tv", "phone", "web"], n),
        "hour": rng.integers(0, 24, n).astype(np.int8),
        "weekday": rng.integers(0, 7, n).astype(np.int8),
        "recommender_score": rng.normal(size=n).astype(np.float32),
        "prior_interaction": rng.random(n) < 0.5,
    }
    fields = list(IMPRESSIONS_SCHEMA)
    if extras:
        dist = [rng.dirichlet(np.ones(k)) for k in n_cand]
        cols["action_dist"] = [d.tolist() for d in dist]
        cols["propensity"] = [float(d[c.index(x)]) for d, c, x in zip(dist, candidates, chosen, strict=True)]
        cols["member_features"] = rng.normal(size=(n, 3)).astype(np.float32).tolist()
        fields += [OPTIONAL["action_dist"], OPTIONAL["member_features"]]
    return pa.table(cols, schema=pa.schema(fields, metadata=IMPRESSIONS_SCHEMA.metadata))


def replace(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


def make_catalogue(seed: int = 0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    images = pa.table(
        {
            "image_id": IMAGES[::-1],  # not sorted: the image table must place rows by vocab index
            "title_id": np.repeat(np.arange(10, 20), 4),
            "embedding": rng.normal(size=(len(IMAGES), 4)).astype(np.float32).tolist(),
            "launched_at": pa.nulls(len(IMAGES), pa.timestamp("us", tz="UTC")),
        },
        schema=images_schema(4),
    )
    titles = pa.table(
        {
            "title_id": np.arange(10, 20),
            "genres": [["drama", "comedy"][: i % 3] for i in range(10)],
            "launched_at": pa.nulls(10, pa.timestamp("us", tz="UTC")),
        },
        schema=TITLES_SCHEMA,
    )
    return images, titles


@pytest.fixture(scope="module")
def catalogue():
    return make_catalogue()


@pytest.fixture(scope="module")
def vocabs(catalogue) -> FeatureVocabs:
    images, titles = catalogue
    return FeatureVocabs.build(make_impressions(200), images=images, titles=titles)


def reference(table: pa.Table, vocabs: FeatureVocabs, max_history: int) -> dict[str, np.ndarray]:
    """The expected batch, one row at a time with plain Python dicts: the slow obvious way."""
    rows = table.to_pylist()

    def index(vocab: Vocab, value) -> int:
        keys = {k: i + 2 for i, k in enumerate(vocab.keys.tolist())}
        return keys.get(value, UNK)

    width = max(len(r["candidate_image_ids"]) for r in rows)
    h_width = max(1, min(max_history, max(len(r["played_title_ids"]) for r in rows)))
    out = {k: [] for k in ("cand", "cmask", "action", "hist", "hmask", "reward", "observed", "ts", "dist")}
    for r in rows:
        cands = r["candidate_image_ids"]
        out["cand"].append([index(vocabs.image, c) for c in cands] + [PAD] * (width - len(cands)))
        out["cmask"].append([True] * len(cands) + [False] * (width - len(cands)))
        out["action"].append(cands.index(r["chosen_image_id"]))
        hist = r["played_title_ids"][:max_history]
        out["hist"].append([index(vocabs.title, t) for t in hist] + [PAD] * (h_width - len(hist)))
        out["hmask"].append([True] * len(hist) + [False] * (h_width - len(hist)))
        out["reward"].append(0.0 if r["reward"] is None else r["reward"])
        out["observed"].append(r["reward"] is not None)
        out["ts"].append(int(r["timestamp"].timestamp()))
        if "action_dist" in r:
            out["dist"].append(r["action_dist"] + [0.0] * (width - len(cands)))
    expected = {k: np.array(v) for k, v in out.items()}
    expected["title"] = np.array([index(vocabs.title, r["title_id"]) for r in rows])
    for name in ("country", "language", "device"):
        expected[name] = np.array([index(getattr(vocabs, name), r[name]) for r in rows])
    return expected


def assert_matches_reference(
    batch: ImpressionBatch, table: pa.Table, vocabs: FeatureVocabs, max_history: int
):
    exp = reference(table, vocabs, max_history)
    np.testing.assert_array_equal(batch.inputs.candidate_image_idx.numpy(), exp["cand"])
    np.testing.assert_array_equal(batch.candidate_mask.numpy(), exp["cmask"])
    np.testing.assert_array_equal(batch.n_candidates.numpy(), exp["cmask"].sum(1))
    np.testing.assert_array_equal(batch.action.numpy(), exp["action"])
    np.testing.assert_array_equal(batch.inputs.history_title_idx.numpy(), exp["hist"])
    np.testing.assert_array_equal(batch.inputs.history_mask.numpy(), exp["hmask"])
    np.testing.assert_array_equal(batch.reward.numpy(), exp["reward"].astype(np.float32))
    np.testing.assert_array_equal(batch.reward_observed.numpy(), exp["observed"])
    np.testing.assert_array_equal(batch.timestamp.numpy(), exp["ts"])
    np.testing.assert_array_equal(batch.inputs.title_idx.numpy(), exp["title"])
    for name in ("country", "language", "device"):
        np.testing.assert_array_equal(getattr(batch.inputs, f"{name}_idx").numpy(), exp[name])
    col = table.column
    np.testing.assert_array_equal(batch.member_id.numpy(), col("member_id").to_numpy())
    np.testing.assert_array_equal(batch.pscore.numpy(), col("propensity").to_numpy().astype(np.float32))
    np.testing.assert_array_equal(batch.inputs.hour.numpy(), col("hour").to_numpy())
    np.testing.assert_array_equal(batch.inputs.weekday.numpy(), col("weekday").to_numpy())
    np.testing.assert_array_equal(batch.inputs.recommender_score.numpy(), col("recommender_score").to_numpy())
    np.testing.assert_array_equal(
        batch.inputs.prior_interaction.numpy(),
        np.asarray(col("prior_interaction").to_pylist(), dtype=np.float32),
    )
    if "action_dist" in table.column_names:
        np.testing.assert_array_equal(batch.action_dist.numpy(), exp["dist"].astype(np.float32))
        np.testing.assert_array_equal(
            batch.inputs.member_features.numpy(),
            np.array(col("member_features").to_pylist(), dtype=np.float32),
        )
    else:
        assert batch.action_dist is None and batch.inputs.member_features is None
    assert batch.pscore.dtype == batch.reward.dtype == batch.inputs.recommender_score.dtype == torch.float32
    assert (
        batch.inputs.candidate_image_idx.dtype
        == batch.inputs.history_title_idx.dtype
        == batch.action.dtype
        == torch.int64
    )


# --- vocabularies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        np.arange(100, 200),  # contiguous: index = id - lo + 2
        np.arange(100, 400, 3),  # gaps: dense table
        np.sort(np.random.default_rng(0).choice(2**62, 100, replace=False)) - 2**61,  # sparse: hash lookup
    ],
    ids=["contiguous", "dense", "sparse"],
)
def test_int_vocab_maps_known_ids_and_falls_back_to_unknown(keys):
    vocab = Vocab("image", keys)
    assert len(vocab) == len(keys) + 2
    rng = np.random.default_rng(1)
    known = rng.choice(keys, 500)
    unseen = np.array([keys[0] - 1, keys[-1] + 1, 0, -(2**63), 2**63 - 1, keys[0] - 2**40])
    unseen = unseen[~np.isin(unseen, keys)]
    values = np.concatenate([known, unseen])
    idx = vocab.lookup(values)
    expected = np.concatenate([np.searchsorted(keys, known) + 2, np.full(len(unseen), UNK)])
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(vocab.decode(idx[: len(known)]), known)
    np.testing.assert_array_equal(vocab.lookup(pa.array(values)), expected)  # Arrow input, same answer


def test_int_vocab_far_outside_a_range_near_the_int64_limits_is_unknown():
    # ids near +2**63 and a query near -2**63: the difference wraps around and must still be caught
    keys = np.arange(2**63 - 10, 2**63 - 1, dtype=np.int64)
    vocab = Vocab("title", keys)
    query = np.array([-(2**63), -(2**63) + 5, 2**63 - 5], dtype=np.int64)
    np.testing.assert_array_equal(vocab.lookup(query), [UNK, UNK, 2 + 5])


def test_string_vocab_on_plain_and_dictionary_arrays():
    vocab = Vocab.fit("country", pa.array(["US", "GB", "US", "DE"]))
    assert vocab.keys.tolist() == ["DE", "GB", "US"]
    plain = pa.array(["US", "FR", "DE", "GB", "FR"])
    np.testing.assert_array_equal(vocab.lookup(plain), [4, UNK, 2, 3, UNK])
    np.testing.assert_array_equal(vocab.lookup(plain.dictionary_encode()), [4, UNK, 2, 3, UNK])
    np.testing.assert_array_equal(vocab.lookup(["GB"]), [3])


def test_vocab_rejects_nulls_and_unsorted_keys():
    with pytest.raises(ValueError, match="'country': 1 null values among those to fit"):
        Vocab.fit("country", ["US", None])
    with pytest.raises(ValueError, match="'country': 1 null values to look up"):
        Vocab.fit("country", ["US"]).lookup(pa.array(["US", None]))
    with pytest.raises(ValueError, match="'title': 1 null"):
        Vocab("title", [1, 2]).lookup(pa.array([1, None]))
    with pytest.raises(ValueError, match="sorted and unique; key 2 \\(3\\) follows 3"):
        Vocab("title", [1, 3, 3])
    with pytest.raises(ValueError, match="has no value"):
        Vocab("title", [1, 3]).decode([UNK])


def test_vocabs_survive_json(vocabs):
    text = json.dumps(vocabs.to_dict())
    back = FeatureVocabs.from_dict(json.loads(text))
    assert back == vocabs
    values = np.array([10, 15, 99])
    np.testing.assert_array_equal(back.title.lookup(values), vocabs.title.lookup(values))
    with pytest.raises(ValueError, match="lacks \\['genre'\\]"):
        FeatureVocabs.from_dict({k: v for k, v in vocabs.to_dict().items() if k != "genre"})


def test_feature_vocabs_from_tables_and_from_a_path_agree(tmp_path, catalogue):
    images, titles = catalogue
    table = make_impressions(150, seed=4, unknown=True)
    io.write_impressions(table, tmp_path, partition_by_date=True, row_group_size=20)
    from_path = FeatureVocabs.build(tmp_path, images=images, titles=titles, batch_rows=32)
    from_table = FeatureVocabs.build(table, images=images, titles=titles)
    assert from_path == from_table
    # titles: catalogue plus every title seen in impressions (played or shown); images: the catalogue only
    seen = set(table.column("title_id").to_pylist()) | {
        t for h in table.column("played_title_ids").to_pylist() for t in h
    }
    assert set(from_path.title.keys.tolist()) == seen | set(range(10, 20))
    assert from_path.image.keys.tolist() == IMAGES.tolist()
    assert from_path.genre.keys.tolist() == ["comedy", "drama"]
    assert from_path.country.keys.tolist() == sorted(set(table.column("country").to_pylist()))


# --- conversion -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_history", [1, 3, 256])
@pytest.mark.parametrize("extras", [False, True])
def test_table_to_batch_matches_the_per_row_reference(vocabs, max_history, extras):
    table = make_impressions(120, seed=7, unknown=True, extras=extras)
    batch = table_to_batch(table, vocabs, max_history=max_history)
    assert len(batch) == 120
    assert batch.n_actions == 6 and batch.inputs.history_title_idx.shape == (120, min(max_history, 7))
    assert (batch.inputs.candidate_image_idx == UNK).any() and (
        batch.inputs.history_title_idx == UNK
    ).any()  # unknowns hit
    assert_matches_reference(batch, table, vocabs, max_history)


def test_sliced_and_chunked_inputs_convert_like_contiguous_ones(vocabs):
    table = make_impressions(90, seed=8)
    chunked = pa.concat_tables([table.slice(0, 30), table.slice(30, 45), table.slice(75)])
    assert chunked.column("candidate_image_ids").num_chunks == 3
    sliced = table.to_batches()[0].slice(17, 40)  # list offsets not starting at 0
    assert_matches_reference(table_to_batch(chunked, vocabs), table, vocabs, 256)
    assert_matches_reference(table_to_batch(sliced, vocabs), table.slice(17, 40), vocabs, 256)


def test_history_width_is_at_least_one_when_nobody_has_history(vocabs):
    table = make_impressions(5, seed=9)
    table = replace(table, "played_title_ids", [[]] * 5, pa.list_(pa.int64()))
    batch = table_to_batch(table, vocabs)
    assert batch.inputs.history_title_idx.shape == (5, 1)
    assert not batch.inputs.history_mask.any() and (batch.inputs.history_title_idx == PAD).all()


def test_action_is_the_position_of_the_chosen_image(vocabs):
    table = make_impressions(4, seed=1)
    cands = [[1003, 1001, 1007], [1002], [1010, 1011, 1012, 1013, 1014], [1020, 1021]]
    chosen = [1007, 1002, 1011, 1020]
    table = replace(table, "candidate_image_ids", cands, pa.list_(pa.int64()))
    table = replace(table, "chosen_image_id", chosen, pa.int64())
    assert table_to_batch(table, vocabs).action.tolist() == [2, 0, 1, 0]


@pytest.mark.parametrize(
    ("cands", "chosen", "message"),
    [
        (
            [[1001, 1002], [1003, 1004]],
            [1001, 1005],
            "row 1 \\(request_id 'q0-1'\\): chosen_image_id 1005 is not among",
        ),
        ([[1001, 1002], [1003, 1003]], [1002, 1003], "row 1 .*chosen_image_id 1003 appears 2 times in"),
        ([[1001], [0, 1003]], [1001, 0], None),  # id 0 is a real id, not padding
    ],
)
def test_chosen_not_exactly_once_among_candidates_names_the_row(vocabs, cands, chosen, message):
    table = make_impressions(2, seed=0)
    table = replace(table, "candidate_image_ids", cands, pa.list_(pa.int64()))
    table = replace(table, "chosen_image_id", chosen, pa.int64())
    if message is None:
        assert table_to_batch(table, vocabs).action.tolist() == [0, 0]
        return
    with pytest.raises(ValueError, match=message):
        table_to_batch(table, vocabs)


def test_bad_columns_are_named(vocabs):
    table = make_impressions(6, seed=2, extras=True)
    with pytest.raises(KeyError, match="'played_title_ids'"):
        table_to_batch(table.drop_columns(["played_title_ids"]), vocabs)
    nulls = replace(table, "country", ["US", None, "GB", "US", "US", "US"])
    with pytest.raises(ValueError, match="column 'country' row 1 \\(request_id 'q2-1'\\): null"):
        table_to_batch(nulls, vocabs)
    dist = table.column("action_dist").to_pylist()
    dist[3] = dist[3] + [0.0]
    short = replace(table, "action_dist", dist)
    with pytest.raises(ValueError, match="'action_dist' row 3 .*probabilities for"):
        table_to_batch(short, vocabs)
    feats = table.column("member_features").to_pylist()
    feats[5] = feats[5][:2]
    ragged = replace(table, "member_features", feats, pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="'member_features' row 5: 2 values, row 0 has 3"):
        table_to_batch(ragged, vocabs)


def test_round_trip_write_read_filter_to_tensors(tmp_path, vocabs):
    """The acceptance test: write (hive by date) -> read (time range, projection) -> tensors."""
    table = make_impressions(400, seed=11, unknown=True, extras=True)
    io.write_impressions(table, tmp_path, partition_by_date=True, row_group_size=50)
    start, end = "2026-01-01T12:00:00", "2026-01-02T12:00:00"
    columns = [c for c in table.column_names if c != "request_id"]
    batches = [
        table_to_batch(rb, vocabs, max_history=4)
        for rb in io.iter_record_batches(tmp_path, columns=columns, start=start, end=end, batch_rows=64)
    ]
    got = ImpressionBatch.cat(batches)
    micros = table.column("timestamp").cast(pa.int64()).to_numpy()
    lo, hi = (int(dt.datetime.fromisoformat(t).replace(tzinfo=dt.UTC).timestamp()) * US for t in (start, end))
    expected = table.filter(pa.array((micros >= lo) & (micros < hi)))
    assert 100 < len(got) == expected.num_rows < 400
    assert_matches_reference(got, expected, vocabs, 4)  # files sorted by date keep time order


# --- the batch type and the image table ----------------------------------------------------------------------


def trimmed(batch: ImpressionBatch) -> ImpressionBatch:
    """The batch with its (B, A) and (B, H) fields cut to the widths its rows use (checking the rest is pad)."""
    a, h = int(batch.n_candidates.max()), max(1, int(batch.inputs.history_mask.sum(1).max()))
    assert not batch.candidate_mask[:, a:].any() and not batch.inputs.history_mask[:, h:].any()
    cut = {"candidate_image_idx": a, "candidate_mask": a, "history_title_idx": h, "history_mask": h}
    inputs = batch.inputs.replace(**{k: getattr(batch.inputs, k)[:, :w] for k, w in cut.items()})
    dist = batch.action_dist[:, :a] if batch.action_dist is not None else None
    return dataclasses.replace(batch, inputs=inputs, action_dist=dist)


def test_batch_indexing_slicing_and_cat(vocabs):
    table = make_impressions(50, seed=12, extras=True)
    batch = table_to_batch(table, vocabs)
    rows = torch.tensor([4, 0, 49, 4])
    picked = batch[rows]
    assert len(picked) == 4 and picked.n_actions == batch.n_actions  # widths kept
    assert_matches_reference(trimmed(picked), table.take(rows.numpy()), vocabs, 256)
    assert len(batch[10:20]) == 10 and len(batch[3]) == 1
    assert len(batch[batch.reward_observed]) == int(batch.reward_observed.sum())
    # cat pads narrower (B, A) / (B, H) parts with padding
    narrow = table_to_batch(table.slice(0, 5), vocabs, max_history=1)
    both = ImpressionBatch.cat([narrow, batch])
    assert both.n_actions == batch.n_actions and len(both) == 55
    assert (both.inputs.candidate_image_idx[:5, narrow.n_actions :] == PAD).all()
    assert not both.inputs.history_mask[:5, 1:].any()
    assert torch.equal(both.inputs.candidate_image_idx[5:], batch.inputs.candidate_image_idx)


def test_batch_moves_between_devices(vocabs):
    batch = table_to_batch(make_impressions(8, seed=13), vocabs)
    moved = batch.to("meta")
    assert moved.inputs.title_idx.device.type == "meta" and moved.action_dist is None
    assert (
        batch.to("cpu").inputs.title_idx.data_ptr() == batch.inputs.title_idx.data_ptr()
    )  # no copy when already there


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_batch_goes_to_gpu_and_is_indexed_there(vocabs):
    batch = table_to_batch(make_impressions(64, seed=14, extras=True), vocabs)
    pinned = batch.pin_memory()
    assert pinned.inputs.candidate_image_idx.is_pinned()
    gpu = pinned.to("cuda", non_blocking=True)
    rows = torch.randint(0, 64, (16,), device="cuda")
    sub = gpu[rows]
    assert sub.device.type == "cuda"
    assert torch.equal(sub.inputs.candidate_image_idx.cpu(), batch[rows.cpu()].inputs.candidate_image_idx)


def test_image_table_rows_follow_the_vocab(catalogue, vocabs):
    images, _ = catalogue
    table = ImageTable.from_table(images, vocabs.image)
    assert table.embedding.shape == (len(IMAGES) + 2, 4) and table.dim == 4
    assert not table.embedding[:2].any()  # pad and unknown rows are zeros
    ids = images.column("image_id").to_numpy()
    expected = np.array(images.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(table.embedding[vocabs.image.lookup(ids)].numpy(), expected)
    with pytest.raises(ValueError, match="image_id 1039 appears 2 times"):
        ImageTable.from_table(pa.concat_tables([images, images.slice(0, 1)]), vocabs.image)
    with pytest.raises(ValueError, match="lacks 1 image ids of the vocab"):
        ImageTable.from_table(images.slice(1), vocabs.image)
    with pytest.raises(ValueError, match="row 0: image_id 5 is not in the image vocab"):
        ImageTable.from_table(
            images.set_column(0, "image_id", pa.array([5] + ids[1:].tolist())), vocabs.image
        )


# --- the stream ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("stream")
    table = make_impressions(500, seed=20, extras=True)
    io.write_impressions(table, root, partition_by_date=True, row_group_size=40)
    return root, table


def test_stream_over_ranks_and_workers_covers_every_row_once(stream_dir, vocabs):
    root, table = stream_dir
    counts = []
    rows = 0
    for rank in range(2):
        stream = ImpressionStream(root, vocabs, batch_rows=64, rank=rank, world_size=2)
        batches = list(DataLoader(stream, batch_size=None, num_workers=2))
        assert all(len(b) <= 64 for b in batches)
        counts.append(sum(len(b) for b in batches))
        rows += counts[-1]
        assert all(b.action_dist is not None and b.inputs.member_features.shape[1] == 3 for b in batches)
    assert rows == table.num_rows
    assert abs(counts[0] - counts[1]) <= 40  # balanced to within one row group


def test_stream_without_shuffle_matches_direct_conversion(stream_dir, vocabs):
    root, table = stream_dir
    batches = list(ImpressionStream(root, vocabs, batch_rows=128, max_history=5))
    assert_matches_reference(ImpressionBatch.cat(batches), table, vocabs, 5)


def test_stream_reads_only_the_optional_columns_asked_for(stream_dir, vocabs):
    root, _ = stream_dir
    batch = next(iter(ImpressionStream(root, vocabs, optional_columns=["member_features"])))
    assert batch.action_dist is None and batch.inputs.member_features is not None
    with pytest.raises(ValueError, match="optional_columns \\['request_id'\\]"):
        ImpressionStream(root, vocabs, optional_columns=["request_id"])


def test_stream_shuffles_per_epoch_with_a_seed(stream_dir, vocabs):
    root, _ = stream_dir
    stream = ImpressionStream(root, vocabs, batch_rows=1000, shuffle_seed=0)

    def epoch(e):
        stream.set_epoch(e)
        return ImpressionBatch.cat(list(stream)).timestamp

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert torch.equal(first.sort().values, second.sort().values)


def test_stream_and_vocabs_pickle_for_spawned_workers(stream_dir, vocabs):
    root, table = stream_dir
    stream = pickle.loads(pickle.dumps(ImpressionStream(root, vocabs, batch_rows=128)))
    assert stream.vocabs == vocabs
    np.testing.assert_array_equal(
        stream.vocabs.country.lookup(["GB", "XX"]), vocabs.country.lookup(["GB", "XX"])
    )
    assert sum(len(b) for b in stream) == table.num_rows


def test_stream_fails_early_on_a_missing_path(tmp_path, vocabs):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImpressionStream(tmp_path / "nowhere", vocabs)
