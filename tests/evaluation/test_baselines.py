"""Baselines on hand-made logs: arrays, split, reweighted take rates, cold start, profiles, segments."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from deepbandit.evaluation.baselines import (
    dominant_genre,
    fit_take_rates,
    logged_rows,
    on_policy_value,
    time_split,
    uniform_action_dist,
    unpersonalised_action_dist,
)
from deepbandit.evaluation.segments import segment_codes


def log(candidates, chosen, propensity, reward, titles=None, **extra) -> pa.Table:
    n = len(chosen)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return pa.table({
        "title_id": pa.array(titles if titles is not None else [1] * n, pa.int64()),
        "candidate_image_ids": pa.array(candidates, pa.list_(pa.int64())),
        "chosen_image_id": pa.array(chosen, pa.int64()),
        "propensity": pa.array(propensity, pa.float64()),
        "reward": pa.array(reward, pa.float64()),
        "timestamp": pa.array([t0 + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        **extra,
    })  # fmt: skip


def test_logged_rows_arrays():
    rows = logged_rows(log([[10, 11, 12], [20, 21]], [12, 20], [0.5, 0.25], [1.0, 0.0], titles=[1, 2]))
    assert rows.action.tolist() == [2, 0]
    assert rows.candidate_ids.tolist() == [[10, 11, 12], [20, 21, -1]]
    assert rows.chosen_image_id.tolist() == [12, 20]
    np.testing.assert_allclose(uniform_action_dist(rows.candidate_mask).sum(axis=1), 1.0)
    assert uniform_action_dist(rows.candidate_mask)[1].tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    ("chosen", "propensity", "reward", "message"),
    [
        ([10, 99], [0.5, 0.5], [1.0, 0.0], r"'chosen_image_id' at row 1: image 99 is not among"),
        ([10, 11], [0.5, 0.0], [1.0, 0.0], r"'propensity' at row 1 is 0.0, outside \(0, 1\]"),
        ([10, 11], [0.5, 0.5], [1.0, None], r"'reward' is null at row 1"),
    ],
)
def test_logged_rows_rejects_bad_rows(chosen, propensity, reward, message):
    with pytest.raises(ValueError, match=message):
        logged_rows(log([[10, 11]] * 2, chosen, propensity, reward), source="x.parquet")


def test_time_split_is_by_time_and_validated():
    ts = np.array([5, 1, 4, 2, 3])
    train, ev = time_split(ts, 0.4)
    assert ts[train].tolist() == [1, 2] and sorted(ts[ev].tolist()) == [3, 4, 5]
    with pytest.raises(ValueError, match="train_fraction"):
        time_split(ts, 1.0)


def test_unpersonalised_uses_reweighted_rates_and_falls_back_on_cold_start():
    # image 10 looks better on raw take rate (shown where members play anyway, propensity 0.9) but image 11,
    # shown rarely (propensity 0.1), wins once reweighted
    rng = np.random.default_rng(0)
    n = 4000
    pick11 = rng.random(n) < 0.1
    reward = np.where(pick11, rng.random(n) < 0.3, rng.random(n) < 0.2).astype(float)
    rows = logged_rows(log([[10, 11]] * n, np.where(pick11, 11, 10), np.where(pick11, 0.1, 0.9), reward))
    rates = fit_take_rates(rows)
    assert rates.best_image.tolist() == [11]
    shows = rates.image_shows[1]
    assert abs(rates.image_rate[1] - 0.3) < 4 * np.sqrt(0.3 * 0.7 / shows)
    ev = logged_rows(
        log([[10, 11], [10, 12], [30, 31]], [10, 10, 30], [0.5] * 3, [0.0] * 3, titles=[1, 1, 3])
    )
    dist, cold = unpersonalised_action_dist(ev, rates)
    assert cold == 2  # row 1: image 11 not a candidate; row 2: title 3 never seen in training
    assert dist.tolist() == [[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]]


def test_on_policy_value_se():
    res = on_policy_value(np.array([0.0, 1.0, 1.0, 0.0]))
    assert res["value"] == 0.5 and res["se"] == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2)


def test_dominant_genre_profiles():
    titles = pa.table({"title_id": pa.array([1, 2, 3], pa.int64()),
                       "genres": pa.array([["comedy"], ["romance", "comedy"], ["romance"]])})  # fmt: skip
    played = pa.array([[1, 2], [3, 3, 2], [], [99]], pa.list_(pa.int64()))
    codes, labels = dominant_genre(played, titles)
    assert labels == ("comedy", "romance", "no history")
    assert [labels[c] for c in codes] == ["comedy", "romance", "no history", "no history"]


def test_segment_codes_and_errors():
    table = pa.table({"device": ["tv", "mobile", "tv"], "played": pa.array([[1], [], [2]]),
                      "country": pa.array(["US", None, "FR"])})  # fmt: skip
    codes, labels = segment_codes(table, "device")
    assert [labels[c] for c in codes] == ["tv", "mobile", "tv"]
    with pytest.raises(ValueError, match="segment column 'nope' not found"):
        segment_codes(table, "nope")
    with pytest.raises(ValueError, match="is a list column"):
        segment_codes(table, "played")
    with pytest.raises(ValueError, match="'country' is null at row 1"):
        segment_codes(table, "country")
