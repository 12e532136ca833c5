"""Logged rows as arrays, the train/evaluation split, and the built-in policies every report compares.

Everything here is numpy on arrays read once from an impressions table; nothing knows about models.

Baselines (each an ``action_dist`` (n, A) on the evaluated rows, aligned with ``candidate_ids``):

* ``random``: uniform over the row's candidates.
* ``logging``: the policy that wrote the logs. Its value is the on-policy mean reward (no weights needed);
  when the log has no ``action_dist`` column the one-hot on the logged image is *not* that policy, so only the
  mean reward is reported.
* ``unpersonalised``: per title, the image with the best take rate on the train split, where the take rate
  is reweighted by 1 / propensity (what the image would get if shown to all of the title's members,
  :func:`fit_take_rates`). When that image is not among a row's candidates (it had not launched yet, or the
  title was unseen in training: cold start) the row falls back to uniform, and the count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.data.logs import candidates_from_impressions, padded_list_column
from deepbandit.errors import ConfigError, DataError

# Columns the evaluation reads from an impressions table (segments may add more).
EVAL_COLUMNS = (
    "request_id", "timestamp", "member_id", "title_id", "candidate_image_ids", "chosen_image_id",
    "propensity", "reward", "played_title_ids", "country", "language", "device", "hour", "weekday",
    "recommender_score", "prior_interaction",
)  # fmt: skip


@dataclass
class LoggedRows:
    """n logged decisions as arrays; A = widest candidate list (padding: id -1, mask False)."""

    reward: np.ndarray  # (n,) float64 in the log's reward range
    action: np.ndarray  # (n,) int64 position of the chosen image among the row's candidates
    pscore: np.ndarray  # (n,) float64 logging propensity of the chosen image
    candidate_ids: np.ndarray  # (n, A) int64 image ids, -1 on padding
    candidate_mask: np.ndarray  # (n, A) bool
    title_id: np.ndarray  # (n,) int64
    timestamp: np.ndarray  # (n,) int64 microseconds UTC
    logging_action_dist: np.ndarray | None  # (n, A) float64 or None when the log has no action_dist

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def chosen_image_id(self) -> np.ndarray:
        return self.candidate_ids[np.arange(len(self)), self.action]

    def take(self, index: np.ndarray) -> LoggedRows:
        """Rows ``index`` (bool mask or integer positions)."""
        dist = None if self.logging_action_dist is None else self.logging_action_dist[index]
        return LoggedRows(
            self.reward[index],
            self.action[index],
            self.pscore[index],
            self.candidate_ids[index],
            self.candidate_mask[index],
            self.title_id[index],
            self.timestamp[index],
            dist,
        )


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def logged_rows(table: pa.Table, source: str = "impressions") -> LoggedRows:
    """Arrays of every row of ``table``; ``source`` names the data in errors.

    Raises ValueError naming the source, column and row when a reward is null (the attribution window is
    still open: filter those rows out first, see :func:`drop_open_rewards`), a chosen image is not among
    its row's candidates, or a propensity is outside (0, 1].
    """
    missing = [c for c in ("title_id", "candidate_image_ids", "chosen_image_id", "propensity", "reward",
                           "timestamp") if c not in table.column_names]  # fmt: skip
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    reward_col = table.column("reward")
    if reward_col.null_count:
        row = _first(reward_col.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{source}: column 'reward' is null at row {row} (reward window still open)")
    reward = reward_col.to_numpy().astype(np.float64)
    candidates, mask = candidates_from_impressions(table)
    chosen = table.column("chosen_image_id").to_numpy()
    hit = candidates == chosen[:, None]
    bad = ~hit.any(axis=1)
    if bad.any():
        row = _first(bad)
        raise DataError(
            f"{source}: column 'chosen_image_id' at row {row}: image {chosen[row]} is not among the row's "
            f"candidate_image_ids {candidates[row][mask[row]].tolist()}"
        )
    pscore = table.column("propensity").to_numpy().astype(np.float64)
    bad = ~((pscore > 0) & (pscore <= 1))
    if bad.any():
        row = _first(bad)
        raise DataError(f"{source}: column 'propensity' at row {row} is {pscore[row]}, outside (0, 1]")
    dist = None
    # action_dist null on some rows (the contract allows it): the logging distribution is known only in part
    # and is not used, as for logs without the column (evaluate's notes count those rows)
    if "action_dist" in table.column_names and table.column("action_dist").null_count == 0:
        dist, dist_mask = padded_list_column(table, "action_dist", 0.0, np.float64)
        dist = np.pad(dist, ((0, 0), (0, candidates.shape[1] - dist.shape[1])))
        dist_mask = np.pad(dist_mask, ((0, 0), (0, candidates.shape[1] - dist_mask.shape[1])))
        bad = (dist_mask != mask).any(axis=1)
        if bad.any():
            row = _first(bad)
            raise DataError(
                f"{source}: column 'action_dist' at row {row} has {dist_mask[row].sum()} entries for "
                f"{mask[row].sum()} candidates"
            )
    timestamp = table.column("timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return LoggedRows(
        reward=reward,
        action=hit.argmax(axis=1).astype(np.int64),
        pscore=pscore,
        candidate_ids=candidates,
        candidate_mask=mask,
        title_id=table.column("title_id").to_numpy().astype(np.int64),
        timestamp=np.asarray(timestamp, dtype=np.int64),
        logging_action_dist=dist,
    )


def drop_open_rewards(table: pa.Table) -> tuple[pa.Table, int]:
    """Rows whose reward is known, and how many were dropped (null reward: window still open)."""
    reward = table.column("reward")
    if not reward.null_count:
        return table, 0
    return table.filter(pc.is_valid(reward)), int(reward.null_count)


def time_split(timestamp: np.ndarray, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, eval) over rows: the earliest ``train_fraction`` of rows by timestamp train
    the data-fitted baselines (unpersonalised bandit, empirical reward model), the rest are evaluated.

    Splitting by time, not at random, mirrors deployment (fit on the past, serve the future) and keeps the
    unpersonalised bandit's choice from being scored on the rows it was chosen on (an optimistic bias).
    ``train_fraction`` 0 evaluates every row, and data-fitted baselines then fit on the same rows (biased up).
    """
    if not 0.0 <= train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in [0, 1), got {train_fraction}")
    n = len(timestamp)
    order = np.argsort(timestamp, kind="stable")
    n_train = int(round(train_fraction * n))
    train = np.zeros(n, dtype=bool)
    train[order[:n_train]] = True
    if train_fraction > 0 and (n_train == 0 or n_train == n):
        raise DataError(f"train_fraction {train_fraction} of {n} rows leaves an empty train or eval split")
    return (train, ~train) if train_fraction > 0 else (np.ones(n, dtype=bool), np.ones(n, dtype=bool))


def uniform_action_dist(candidate_mask: np.ndarray) -> np.ndarray:
    """Uniform over each row's candidates: (n, A) float64, 0 on padding."""
    mask = np.asarray(candidate_mask, dtype=bool)
    return mask / mask.sum(axis=1, keepdims=True)


def one_hot(position: np.ndarray, n_candidates: int) -> np.ndarray:
    """(n, A) float64 one-hot at ``position`` (n,)."""
    out = np.zeros((len(position), n_candidates))
    out[np.arange(len(position)), position] = 1.0
    return out


@dataclass
class TakeRates:
    """Per-image and per-title take rates reweighted by 1 / propensity, fitted on logged rows.

    ``image_rate[i]`` estimates the take rate image i would get if shown to every member who saw its
    title: sum(r / p) / sum(1 / p) over the rows that showed it (self-normalised IPS), shrunk towards its
    title's mean with ``prior_shows`` pseudo-rows (so an image shown twice and played twice does not win).
    """

    image_ids: np.ndarray  # (I,) sorted image ids seen in training
    image_title: np.ndarray  # (I,) their title
    image_rate: np.ndarray  # (I,) shrunk reweighted take rate
    image_raw_rate: np.ndarray  # (I,) plain observed take rate (mean reward of rows that showed it)
    image_shows: np.ndarray  # (I,) rows that showed it
    title_ids: np.ndarray  # (T,) sorted
    title_rate: np.ndarray  # (T,) mean reward of the title's rows
    best_image: np.ndarray  # (T,) image id with the highest image_rate per title
    global_rate: float

    def rate_of(self, image_ids: np.ndarray, title_ids: np.ndarray) -> np.ndarray:
        """Take rate per image id (any shape); unseen images get their title's rate, unseen titles the
        global rate (the empirical reward model for DM/DR without a trained model)."""
        ids = np.asarray(image_ids)
        pos = np.clip(np.searchsorted(self.image_ids, ids), 0, max(len(self.image_ids) - 1, 0))
        known = (self.image_ids[pos] == ids) if len(self.image_ids) else np.zeros(ids.shape, bool)
        tpos = np.clip(np.searchsorted(self.title_ids, title_ids), 0, max(len(self.title_ids) - 1, 0))
        tknown = self.title_ids[tpos] == title_ids
        fallback = np.where(tknown, self.title_rate[tpos], self.global_rate)
        fallback = np.broadcast_to(
            fallback.reshape(fallback.shape + (1,) * (ids.ndim - fallback.ndim)), ids.shape
        )
        return np.where(known, self.image_rate[pos], fallback)


def fit_take_rates(rows: LoggedRows, prior_shows: float = 5.0) -> TakeRates:
    """Fit :class:`TakeRates` on ``rows`` (the train split)."""
    if len(rows) == 0:
        raise DataError("fit_take_rates: no rows to fit on")
    image = rows.chosen_image_id
    w = 1.0 / rows.pscore
    titles, t_inv = np.unique(rows.title_id, return_inverse=True)
    title_rate = np.bincount(t_inv, rows.reward) / np.bincount(t_inv)
    images, i_inv = np.unique(image, return_inverse=True)
    shows = np.bincount(i_inv)
    sw, swr = np.bincount(i_inv, w), np.bincount(i_inv, w * rows.reward)
    image_title = np.zeros(len(images), dtype=np.int64)
    image_title[i_inv] = rows.title_id
    prior = title_rate[np.searchsorted(titles, image_title)]
    mean_w = sw / shows  # pseudo-rows carry the image's mean weight, so shrinkage is in units of rows
    rate = (swr + prior_shows * mean_w * prior) / (sw + prior_shows * mean_w)
    # best image per title: sort by (title, rate) and keep the last of each title
    order = np.lexsort((rate, image_title))
    last = np.r_[image_title[order][1:] != image_title[order][:-1], True]
    best = images[order][last]
    return TakeRates(
        image_ids=images,
        image_title=image_title,
        image_rate=rate,
        image_raw_rate=np.bincount(i_inv, rows.reward) / shows,
        image_shows=shows,
        title_ids=titles,
        title_rate=title_rate,
        best_image=best,
        global_rate=float(rows.reward.mean()),
    )


def unpersonalised_action_dist(rows: LoggedRows, rates: TakeRates) -> tuple[np.ndarray, int]:
    """Per title the best image of ``rates``: (n, A) one-hot, uniform on cold-start rows (best image not
    among the row's candidates, or title unseen in training); returns (action_dist, cold-start rows)."""
    tpos = np.clip(np.searchsorted(rates.title_ids, rows.title_id), 0, len(rates.title_ids) - 1)
    best = np.where(rates.title_ids[tpos] == rows.title_id, rates.best_image[tpos], -2)
    hit = (rows.candidate_ids == best[:, None]) & rows.candidate_mask
    found = hit.any(axis=1)
    dist = np.where(found[:, None], hit.astype(np.float64), uniform_action_dist(rows.candidate_mask))
    return dist, int((~found).sum())


def empirical_reward_model(rows: LoggedRows, rates: TakeRates) -> np.ndarray:
    """(n, A) estimated rewards from the per-image take rates (0 on padding): a context-free DM model."""
    q = rates.rate_of(rows.candidate_ids, rows.title_id)
    return np.where(rows.candidate_mask, q, 0.0)


def on_policy_value(reward: np.ndarray, z: float = 1.959963984540054) -> dict:
    """The logging policy's value from its own logs: mean reward with its standard error."""
    n = len(reward)
    mean = float(np.mean(reward))
    se = float(np.std(reward, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"value": mean, "se": se, "lower": mean - z * se, "upper": mean + z * se, "n_rows": n}


def history_genre_counts(played: pa.ChunkedArray | pa.Array, titles: pa.Table) -> np.ndarray:
    """(n, G) how many titles of each genre (sorted genre names of ``titles``) each played history holds;
    titles absent from ``titles`` count for nothing. G is at least 1."""
    played = played.combine_chunks() if isinstance(played, pa.ChunkedArray) else played
    genres_col = titles.column("genres").combine_chunks()
    genre_names = tuple(sorted(set(pc.list_flatten(genres_col).to_pylist())))
    n, g = len(played), len(genre_names)
    title_ids = titles.column("title_id").to_numpy()
    order = np.argsort(title_ids)
    flat_genres = pc.list_flatten(genres_col)
    genre_code = np.searchsorted(
        np.array(genre_names, dtype=object), np.array(flat_genres.to_pylist(), dtype=object)
    )
    title_row = np.repeat(np.arange(len(titles)), np.diff(genres_col.offsets.to_numpy()))
    multi = np.zeros((len(titles), max(g, 1)))
    multi[title_row, genre_code] = 1.0
    offsets = played.offsets.to_numpy()
    flat = pc.list_flatten(played).to_numpy()
    row = np.repeat(np.arange(n), np.diff(offsets))
    pos = np.clip(np.searchsorted(title_ids[order], flat), 0, max(len(order) - 1, 0))
    known = title_ids[order][pos] == flat if len(order) else np.zeros(len(flat), bool)
    counts = np.zeros((n, max(g, 1)))
    np.add.at(counts, row[known], multi[order[pos[known]]])
    return counts


def dominant_genre(
    played: pa.ChunkedArray | pa.Array, titles: pa.Table
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each member's profile: the genre most frequent among the titles in their played history.

    Returns codes (n,) into the returned labels; the last label is "no history" (empty history or only
    titles without genres). Ties go to the genre first in sorted order. Titles absent from ``titles`` count
    for nothing."""
    genres_col = titles.column("genres").combine_chunks()
    g = len(set(pc.list_flatten(genres_col).to_pylist()))
    genre_names = tuple(sorted(set(pc.list_flatten(genres_col).to_pylist())))
    counts = history_genre_counts(played, titles)
    code = counts.argmax(axis=1)
    code[counts.max(axis=1) == 0] = g
    return code, (*genre_names, "no history")
