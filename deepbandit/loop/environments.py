"""Environments of the closed loop: a small protocol, the artwork world, and classification-as-bandit.

An environment hands out batches of requests (contexts in the impression contract's columns plus padded
candidates), knows the expected reward of every candidate (the ground truth the loop's regret is measured
against) and draws rewards. Any object with the methods of ``Environment`` can be plugged into the loop.

Rewards are drawn with **common random numbers**: the uniform behind a Bernoulli reward is a hash of
(environment seed, request key, chosen image id), so two agents that show the same image on the same request
get the same reward, and agents are compared on the same noise as well as the same request stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from deepbandit.data.hashing import hash_uniform
from deepbandit.data.logs import candidates_from_impressions, contexts_from_impressions
from deepbandit.data.schema import TITLES_SCHEMA, images_schema
from deepbandit.errors import ConfigError
from deepbandit.policies import Decisions
from deepbandit.sim.logging_policies import LoggingPolicyConfig
from deepbandit.sim.simulator import SIMULATED_IMPRESSIONS_SCHEMA, SimulateConfig, TruthAccumulator, build
from deepbandit.sim.world import S_PER_DAY, US_PER_S, WorldConfig

# Columns of a request: the impression contract minus what the decision and the outcome add.
REQUEST_COLUMNS = (
    "request_id", "timestamp", "member_id", "title_id", "candidate_image_ids", "played_title_ids",
    "country", "language", "device", "hour", "weekday", "recommender_score", "prior_interaction",
)  # fmt: skip
_REWARD_SALT = 0x5EED_0BAD


@dataclass
class Requests:
    """B requests of one round.

    table: Arrow table with ``REQUEST_COLUMNS`` (and ``member_features`` list<float32> when the
        environment has dense member features), in the impression contract's types.
    candidates: (B, A) int64 candidate image ids, left-aligned, padded with -1.
    mask: (B, A) bool, True on real candidates.
    timestamp_us: (B,) int64 request times, UTC microseconds.
    row_key: (B,) int64 request index since ``reset``: keys the reward draws (common random numbers).
    cache: per-batch memo (expected rewards, model features) shared by every agent of a round.
    """

    table: pa.Table
    candidates: np.ndarray
    mask: np.ndarray
    timestamp_us: np.ndarray
    row_key: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.row_key)


@runtime_checkable
class Environment(Protocol):
    """What the closed loop needs from a world.

    name: short label for reports. member_features_dim: F of the ``member_features`` column (0: none).
    reset(seed): restart the request stream and the reward noise from ``seed``.
    next_requests(n): the next n requests (``Requests``); the environment's clock moves forward.
    expected_rewards(requests): (B, A) float64 expected reward of each candidate, 0 on padding.
    sample_rewards(requests, actions): (B,) float64 rewards of the candidates at positions ``actions``
        (B,) int64, a deterministic function of (seed, request, chosen image) (common random numbers).
    images_table(): the image catalogue (``image_id``, ``title_id``, ``embedding``, ``launched_at``).
    titles_table(): the title catalogue (``title_id``, ``genres``, ``launched_at``).
    """

    name: str
    member_features_dim: int

    def reset(self, seed: int) -> None: ...

    def next_requests(self, n: int) -> Requests: ...

    def expected_rewards(self, requests: Requests) -> np.ndarray: ...

    def sample_rewards(self, requests: Requests, actions: np.ndarray) -> np.ndarray: ...

    def images_table(self) -> pa.Table: ...

    def titles_table(self) -> pa.Table: ...


def chosen_ids(requests: Requests, actions: np.ndarray) -> np.ndarray:
    """Image ids at positions ``actions`` (B,); raises if an action points at padding or out of range."""
    actions = np.asarray(actions, dtype=np.int64)
    if actions.shape != (len(requests),):
        raise ValueError(f"actions: shape {actions.shape}, expected ({len(requests)},)")
    bad = (actions < 0) | (actions >= requests.mask.shape[1])
    bad[~bad] = ~requests.mask[np.flatnonzero(~bad), actions[~bad]]
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"actions: row {row} picks position {actions[row]}, not a candidate")
    return requests.candidates[np.arange(len(actions)), actions]


def impressions_table(requests: Requests, d: Decisions, rewards: np.ndarray) -> pa.Table:
    """The agent's logged round in the log contract: the requests plus chosen image, propensity, reward,
    action_dist (aligned with candidate_image_ids) and propensity_kind."""
    n_cand = requests.mask.sum(axis=1)
    offsets = np.zeros(len(requests) + 1, np.int32)
    np.cumsum(n_cand, out=offsets[1:])
    table = requests.table
    for name, values in (
        ("chosen_image_id", pa.array(chosen_ids(requests, d.action))),
        ("propensity", pa.array(np.asarray(d.propensity, np.float64))),
        ("reward", pa.array(np.asarray(rewards, np.float64))),
        ("action_dist", pa.ListArray.from_arrays(pa.array(offsets), pa.array(d.action_dist[requests.mask]))),
        ("propensity_kind", pa.repeat(pa.scalar(d.propensity_kind), len(requests))),
    ):
        table = table.append_column(name, values)
    return table


def keyed_bernoulli(seed: int, requests: Requests, actions: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bernoulli(p) rewards (B,) float64 whose uniforms are hash(seed, row_key, chosen image id)."""
    image = chosen_ids(requests, actions)
    u = hash_uniform((seed ^ _REWARD_SALT) & 0xFFFFFFFFFFFFFFFF, requests.row_key, image)
    return (u < p).astype(np.float64)


def _describe(self) -> dict:
    """The environment's settings and reward range, for loop.json's record of what ran."""
    return {**self.settings, "reward_range": list(getattr(self, "reward_range", (0.0, 1.0)))}


class ArtworkEnvironment:
    """The simulated artwork world (``deepbandit.sim.world``) as a loop environment.

    Requests follow the simulator's traffic (members by activity, local-hour traffic, titles on the
    recommendation or rewatch path); round after round they move along the timeline of ``n_days``, with
    ``horizon`` requests spread over it, so titles and images launching part-way through the timeline enter
    the candidate sets mid-run (cold start). Expected rewards are the world's exact quality-play
    probabilities; rewards are Bernoulli draws of them with common random numbers.
    """

    name = "artwork"
    member_features_dim = 0
    describe = _describe

    def __init__(
        self,
        world: WorldConfig,
        horizon: int,
        *,
        n_days: int = 14,
        start_date: str = "2024-01-01",
        seed: int = 0,
    ):
        if horizon < 1:
            raise ValueError(f"ArtworkEnvironment: horizon must be >= 1 request, got {horizon}")
        self.settings = {
            "world": asdict(world),
            "horizon": horizon,
            "n_days": n_days,
            "start_date": start_date,
        }
        config = SimulateConfig(
            world=world,
            logging_policy=LoggingPolicyConfig(name="uniform"),
            n_impressions=horizon,
            n_days=n_days,
            start_date=start_date,
            seed=seed,
        )
        self.world, _, self.generator = build(config)
        self.horizon = horizon
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.seed, self.position = int(seed), 0

    def next_requests(self, n: int) -> Requests:
        if n < 1 or self.position + n > self.horizon:
            raise ValueError(
                f"ArtworkEnvironment: asked for {n} requests at position {self.position} of a horizon of "
                f"{self.horizon}; build the environment with a larger horizon"
            )
        rng = np.random.default_rng([self.seed, 0x100F, self.position])
        # the generator also draws a uniform-logging decision and reward: ignored, only contexts are used
        table = self.generator.batch(self.position, self.position + n, self.horizon, rng, TruthAccumulator())
        table = table.select(list(REQUEST_COLUMNS))
        candidates, mask = candidates_from_impressions(table)
        timestamp = table.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy()
        row_key = np.arange(self.position, self.position + n, dtype=np.int64)
        self.position += n
        return Requests(table, candidates, mask, timestamp, row_key)

    def expected_rewards(self, requests: Requests) -> np.ndarray:
        if "expected" not in requests.cache:
            contexts = contexts_from_impressions(requests.table, "requests")
            requests.cache["expected"] = self.world.expected_reward(contexts, requests.candidates)
        return requests.cache["expected"]

    def sample_rewards(self, requests: Requests, actions: np.ndarray) -> np.ndarray:
        q = self.expected_rewards(requests)
        return keyed_bernoulli(self.seed, requests, actions, q[np.arange(len(requests)), actions])

    def images_table(self) -> pa.Table:
        return self.world.images_table()

    def titles_table(self) -> pa.Table:
        return self.world.titles_table()


class ClassificationEnvironment:
    """A labelled data set turned into a contextual bandit (the classic "supervised-to-bandit" benchmark
    of Dudik et al. 2011 and the deep-bandit showdown of Riquelme et al. 2018).

    Each request is one sample drawn uniformly with replacement; the candidates are the C classes, shown
    as "images" 0..C-1 of a single "title" 0 whose embeddings are one-hot (C,) vectors; the context is the
    sample's features in the contract's ``member_features`` column (the other context columns hold
    constants: one country, language and device, no history, recommender score 0.5, hour and weekday of
    the request time). The reward is 1 for the true class and 0 otherwise, so the expected reward is
    exactly that 0/1 indicator (deterministic rewards: common random numbers hold trivially).
    """

    member_features_dim: int
    describe = _describe

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, *, name: str = "classification", seed: int = 0
    ):
        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels)
        if features.ndim != 2 or labels.shape != (len(features),):
            raise ValueError(
                f"features (N, F) and labels (N,) expected, got {features.shape}, {labels.shape}"
            )
        if not np.isfinite(features).all():
            row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
            raise ValueError(f"{name}: features of sample {row} are not finite")
        self.classes, self.labels = np.unique(labels, return_inverse=True)
        if len(self.classes) < 2:
            raise ValueError(f"{name}: need at least 2 classes, got {len(self.classes)}")
        self.features, self.name = features, name
        self.member_features_dim = features.shape[1]
        self.settings = {
            "n_samples": len(features),
            "n_features": features.shape[1],
            "n_classes": len(self.classes),
        }
        self.start_us = int(np.datetime64("2024-01-01", "us").astype(np.int64))
        self.reset(seed)

    @classmethod
    def digits(cls, seed: int = 0) -> ClassificationEnvironment:
        """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; no download), pixels
        scaled to [0, 1]. Needs scikit-learn (the ``loop`` extra)."""
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError(
                "the digits environment needs scikit-learn: pip install 'deepbandit[loop]'"
            ) from err
        data = load_digits()
        return cls(data.data / 16.0, data.target, name="digits", seed=seed)

    def reset(self, seed: int) -> None:
        self.seed, self.position = int(seed), 0

    def next_requests(self, n: int) -> Requests:
        if n < 1:
            raise ValueError(f"{self.name}: asked for {n} requests")
        rng = np.random.default_rng([self.seed, 0xC1A5, self.position])
        sample, features, cache = self._draw(rng, n)
        c = len(self.classes)
        row_key = np.arange(self.position, self.position + n, dtype=np.int64)
        timestamp = self.start_us + row_key * US_PER_S  # one request per second
        seconds = timestamp // US_PER_S
        self.position += n
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * c)
        f = self.member_features_dim
        columns = {
            "request_id": pa.array(np.char.add(f"{self.name}{self.seed}-", row_key.astype(np.str_))),
            "timestamp": pa.array(timestamp, pa.timestamp("us", tz="UTC")),
            "member_id": pa.array(sample.astype(np.int64)),
            "title_id": pa.array(np.zeros(n, np.int64)),
            "candidate_image_ids": pa.ListArray.from_arrays(offsets, pa.array(np.tile(np.arange(c), n))),
            "played_title_ids": pa.ListArray.from_arrays(
                pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int64())
            ),
            "country": pa.repeat(pa.scalar("US"), n),
            "language": pa.repeat(pa.scalar("en"), n),
            "device": pa.repeat(pa.scalar("web"), n),
            "hour": pa.array(((seconds % S_PER_DAY) // 3600).astype(np.int8)),
            "weekday": pa.array(((seconds // S_PER_DAY + 3) % 7).astype(np.int8)),  # 1970-01-01: Thursday
            "recommender_score": pa.array(np.full(n, 0.5, np.float32)),
            "prior_interaction": pa.array(np.zeros(n, bool)),
            "member_features": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * f), pa.array(features.ravel())
            ),
        }
        schema = pa.schema([SIMULATED_IMPRESSIONS_SCHEMA.field(k) for k in REQUEST_COLUMNS])
        schema = schema.append(pa.field("member_features", pa.list_(pa.float32()), nullable=True))
        table = pa.Table.from_pydict(columns, schema=schema)
        candidates = np.tile(np.arange(c, dtype=np.int64), (n, 1))
        requests = Requests(table, candidates, np.ones((n, c), bool), timestamp, row_key)
        requests.cache.update(cache)
        return requests

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(member ids (n,), features (n, F) float32, what expected_rewards needs): samples drawn uniformly
        with replacement, the sample index standing for the member."""
        sample = rng.integers(0, len(self.labels), n)
        return sample, self.features[sample], {"label": self.labels[sample]}

    def expected_rewards(self, requests: Requests) -> np.ndarray:
        label = requests.cache.get("label")
        if label is None:
            raise ValueError(f"{self.name}: these requests were not made by this environment")
        return (requests.candidates == label[:, None]).astype(np.float64)

    def sample_rewards(self, requests: Requests, actions: np.ndarray) -> np.ndarray:
        q = self.expected_rewards(requests)
        return keyed_bernoulli(self.seed, requests, actions, q[np.arange(len(requests)), actions])

    def images_table(self) -> pa.Table:
        c = len(self.classes)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(np.eye(c, dtype=np.float32).ravel()), c)
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(c, dtype=np.int64)),
                pa.array(np.zeros(c, np.int64)),
                embedding,
                pa.array(np.full(c, self.start_us), pa.timestamp("us", tz="UTC")),
            ],
            schema=images_schema(c),
        )

    def titles_table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [
                pa.array([0], pa.int64()),
                pa.array([[self.name]], pa.list_(pa.string())),
                pa.array([self.start_us], pa.timestamp("us", tz="UTC")),
            ],
            schema=TITLES_SCHEMA,
        )


class WheelEnvironment(ClassificationEnvironment):
    """The Wheel bandit (Riquelme, Tucker & Snoek 2018, "Deep Bayesian Bandits Showdown").

    The context is a point drawn uniformly in the unit disc (``member_features`` (x, y)); there are five
    arms. Inside the radius ``delta`` arm 5 pays 1.2 and the others 1.0; outside it, the arm of the point's
    quadrant pays 50, arm 5 pays 1.2 and the other three 1.0. Rewards carry Gaussian noise of sd ``noise``
    (0.01 in the paper) from hashed uniforms (common random numbers: the same request and arm give the same
    reward whichever agent pulls it), and are divided by ``scale`` so that they lie in [0, 1], which the
    cross-entropy and the log contract need. The hashed normal is at most 8.6 in absolute value, so the
    default scale 50.1 keeps every reward inside (0, 1] for noise up to 0.01; regret normalised by the
    uniform policy's (``normalized_regret``) does not depend on it. Larger ``delta`` makes the profitable
    arms rarer and exploration harder.
    """

    ARMS = 5
    # quadrant arms: x > 0, y > 0 -> 0; x < 0, y > 0 -> 1; x < 0, y < 0 -> 2; x > 0, y < 0 -> 3
    MEANS = (1.0, 1.2, 50.0)  # other arms, arm 5, the quadrant's arm outside delta

    def __init__(self, delta: float = 0.5, *, noise: float = 0.01, scale: float = 50.1, seed: int = 0):
        if not 0.0 <= delta <= 1.0:
            raise ConfigError(f"wheel: delta must be in [0, 1], got {delta}")
        z_max = 8.6  # the largest hashed normal, see sample_rewards
        if noise < 0 or 50.0 + z_max * noise > scale or 1.0 - z_max * noise < 0:
            raise ConfigError(
                f"wheel: noise={noise} and scale={scale} let rewards leave [0, 1]; need 0 <= noise <= "
                f"{min((scale - 50.0), 1.0) / z_max:.4g} (and scale > 50)"
            )
        self.delta, self.noise, self.scale = float(delta), float(noise), float(scale)
        super().__init__(np.zeros((self.ARMS, 2)), np.arange(self.ARMS), name=f"wheel{delta:g}", seed=seed)
        self.settings = {"delta": self.delta, "noise": self.noise, "scale": self.scale}

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
        radius = np.sqrt(rng.random(n))  # uniform in the disc
        angle = rng.random(n) * 2 * np.pi
        xy = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        return np.arange(n, dtype=np.int64), xy.astype(np.float32), {"xy": xy}

    def means(self, xy: np.ndarray) -> np.ndarray:
        """(B, 5) mean rewards before scaling, for contexts xy (B, 2)."""
        other, centre, high = self.MEANS
        out = np.full((len(xy), self.ARMS), other)
        out[:, 4] = centre
        outside = np.hypot(xy[:, 0], xy[:, 1]) > self.delta
        quadrant = np.where(xy[:, 1] >= 0, np.where(xy[:, 0] >= 0, 0, 1), np.where(xy[:, 0] < 0, 2, 3))
        rows = np.flatnonzero(outside)
        out[rows, quadrant[rows]] = high
        return out

    def expected_rewards(self, requests: Requests) -> np.ndarray:
        xy = requests.cache.get("xy")
        if xy is None:
            raise ValueError(f"{self.name}: these requests were not made by this environment")
        return self.means(xy) / self.scale

    def sample_rewards(self, requests: Requests, actions: np.ndarray) -> np.ndarray:
        q = self.expected_rewards(requests)[np.arange(len(requests)), actions]
        arm = chosen_ids(requests, actions)
        salt = (self.seed ^ _REWARD_SALT) & 0xFFFFFFFFFFFFFFFF
        u1 = hash_uniform(salt, requests.row_key, arm)
        u2 = hash_uniform(salt ^ 0x9E3779B97F4A7C15, requests.row_key, arm)
        z = np.sqrt(-2.0 * np.log(np.maximum(u1, 2.0**-53))) * np.cos(2 * np.pi * u2)  # |z| <= 8.58
        return q + self.noise * z / self.scale

    @property
    def reward_range(self) -> tuple[float, float]:
        return (0.0, 1.0)
