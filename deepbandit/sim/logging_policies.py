"""Logging policies of the simulator, with exact propensities.

A policy maps the candidates of B contexts to a full action distribution. Candidates are handled flat:
``images`` (E,) holds the candidates of context ``b`` at ``offsets[b]:offsets[b + 1]`` (every context has
at least one). The distribution is
what the policy really samples from, so the logged ``propensity`` (its entry at the chosen image) is exact.

* ``uniform``: 1 / n_candidates.
* ``epsilon_greedy``: 1 - epsilon on the best unpersonalised image available (``World.unpersonalised_value``),
  epsilon spread uniformly.
* ``softmax``: softmax(score / temperature) of a noisy scorer: the world's theme tastes plus Gaussian noise
  (member_noise, drawn once per member and theme), image appeal as seen on play starts (so it overrates
  clickbait) plus noise (image_noise, once per image); it knows nothing of cast or taste drift. The noise is
  a fixed function of the seed, so the distribution is exact for the policy actually used.

``sticky_window_hours > 0`` keys the uniform draw that picks the image by hash(member, title, time window,
seed): a member sees the same image of a title throughout a window (unless the distribution itself changes
inside it, e.g. a new image launches); propensities are unchanged because the draw is still uniform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepbandit.data.hashing import hash_uniform
from deepbandit.data.logs import Contexts
from deepbandit.errors import ConfigError
from deepbandit.sim.world import US_PER_S, World

POLICIES = ("uniform", "epsilon_greedy", "softmax")


@dataclass
class LoggingPolicyConfig:
    name: str = "softmax"  # uniform | epsilon_greedy | softmax
    epsilon: float = 0.1  # epsilon_greedy: share of uniform exploration
    temperature: float = 0.5  # softmax: scores are divided by it
    member_noise: float = 0.6  # softmax: std of the scorer's error on each member's theme tastes
    image_noise: float = 0.3  # softmax: std of the scorer's error on each image's appeal
    sticky_window_hours: float = 0.0  # > 0: same image for (member, title) inside each window

    def validate(self) -> None:
        if self.name not in POLICIES:
            raise ConfigError(f"logging_policy.name must be one of {POLICIES}, got {self.name!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"logging_policy.epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature <= 0:
            raise ConfigError(f"logging_policy.temperature must be > 0, got {self.temperature}")
        for name in ("member_noise", "image_noise", "sticky_window_hours"):
            if getattr(self, name) < 0:
                raise ConfigError(f"logging_policy.{name} must be >= 0, got {getattr(self, name)}")


def segment_argmax(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flat index of the first maximum of every segment ``offsets[b]:offsets[b + 1]``. (B,) int64."""
    counts = np.diff(offsets)
    best = np.maximum.reduceat(values, offsets[:-1])
    hit = np.flatnonzero(values == np.repeat(best, counts))
    rows = np.repeat(np.arange(len(counts)), counts)[hit]
    first = np.ones(len(hit), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return hit[first]


def segment_softmax(scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Softmax of ``scores`` (E,) inside every segment. (E,) float64."""
    counts = np.diff(offsets)
    z = np.exp(scores - np.repeat(np.maximum.reduceat(scores, offsets[:-1]), counts))
    return z / np.repeat(np.add.reduceat(z, offsets[:-1]), counts)


def sample_segments(dist: np.ndarray, offsets: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw inside every segment of ``dist`` (E,) with uniforms ``u`` (B,) in [0, 1).

    Returns the flat index (B,) of the chosen entry; never one of probability zero."""
    starts, ends = offsets[:-1], offsets[1:]
    cum = np.cumsum(dist)
    before = np.where(starts > 0, cum[starts - 1], 0.0)
    target = before + u * (cum[ends - 1] - before)
    chosen = np.minimum(np.searchsorted(cum, target, side="right"), ends - 1)
    # rounding can land a draw at u ~ 1 past the last positive entry onto a trailing zero: take that entry
    zero = np.flatnonzero(dist[chosen] <= 0)
    if len(zero):
        last_positive = np.maximum.accumulate(np.where(dist > 0, np.arange(len(dist)), -1))
        chosen[zero] = last_positive[chosen[zero]]
    return chosen


class LoggingPolicy:
    """Base: ``action_dist`` gives the full distribution; ``draw_uniforms`` the draws that sample it."""

    name = "base"

    def __init__(self, config: LoggingPolicyConfig, world: World, seed: int):
        config.validate()
        self.config, self.world, self.seed = config, world, seed

    def action_dist(self, contexts: Contexts, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Probabilities (E,) float64 of every candidate entry; they sum to 1 inside every context."""
        raise NotImplementedError

    def draw_uniforms(self, contexts: Contexts, rng: np.random.Generator) -> np.ndarray:
        """(B,) uniforms picking the image: fresh per impression, or keyed by (member, title, window)."""
        hours = self.config.sticky_window_hours
        if hours <= 0:
            return rng.random(len(contexts))
        window = (contexts.timestamp - self.world.start_us) // int(hours * 3600 * US_PER_S)
        return hash_uniform(self.seed & 0xFFFFFFFFFFFFFFFF, contexts.member_id, contexts.title_id, window)


class UniformPolicy(LoggingPolicy):
    name = "uniform"

    def action_dist(self, contexts, images, offsets):
        counts = np.diff(offsets)
        return np.repeat(1.0 / counts, counts)


class EpsilonGreedyPolicy(LoggingPolicy):
    name = "epsilon_greedy"

    def action_dist(self, contexts, images, offsets):
        eps = self.config.epsilon
        counts = np.diff(offsets)
        dist = np.repeat(eps / counts, counts)
        dist[segment_argmax(self.world.unpersonalised_value[images], offsets)] += 1.0 - eps
        return dist


class SoftmaxPolicy(LoggingPolicy):
    name = "softmax"

    def __init__(self, config: LoggingPolicyConfig, world: World, seed: int):
        super().__init__(config, world, seed)
        rng = np.random.default_rng([seed, 0x5EED, 3])
        wc = world.config
        taste = world.member_theme_taste
        self.theme_taste = (taste + rng.normal(0.0, config.member_noise, taste.shape)).ravel()  # (M * T,)
        self.image_score = (
            wc.quality_start * world.image_quality
            + wc.clickbait_start * world.image_clickbait
            + rng.normal(0.0, config.image_noise, world.n_images)
        )  # (I,)

    def action_dist(self, contexts, images, offsets):
        w = self.world
        idx = np.repeat(contexts.member_id * w.member_theme_taste.shape[1], np.diff(offsets))
        score = (
            w.image_theme_w1[images] * self.theme_taste[idx + w.image_theme1[images]]
            + w.image_theme_w2[images] * self.theme_taste[idx + w.image_theme2[images]]
            + self.image_score[images]
        )
        return segment_softmax(score / self.config.temperature, offsets)


def make_logging_policy(config: LoggingPolicyConfig, world: World, seed: int) -> LoggingPolicy:
    """The logging policy named by ``config.name``."""
    config.validate()
    return {"uniform": UniformPolicy, "epsilon_greedy": EpsilonGreedyPolicy, "softmax": SoftmaxPolicy}[
        config.name
    ](config, world, seed)
