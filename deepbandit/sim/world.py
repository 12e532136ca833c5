"""The artwork world: a generative model of members, titles and images with an exposed ground truth.

The story follows Netflix's "Artwork Personalization" post: a member's tastes decide which image of a title
makes them play it (a comedy fan is drawn by the comedian's face, a romance fan by a kissing scene).

* Genres map to visual **themes** (``genre_themes``, G x T). A member has a genre taste ``psi`` (G,) and a
  theme taste ``theta`` (T,) = genre taste seen through that map plus an idiosyncratic part, a few
  favourite cast members with weights, a country (fixed UTC offset, main language), a language, a device mix
  and an activity level. Tastes can drift linearly over the timeline (``taste_drift``).
* A title has 1-3 genres, a popularity, an appeal, an original language, a cast and a launch time; some
  titles launch part-way through the timeline (cold start).
* A title has a pool of images (truncated geometric count). An image highlights one or two themes drawn
  from its title's theme profile and, often, one cast member; it has an intrinsic ``quality``, a
  ``clickbait`` factor and a synthetic vision embedding = fixed random projection of those attributes plus
  noise. Some images launch after their title (new artwork for an old title).
* Viewing histories are drawn from the tastes before and during the timeline; they are exogenous (the
  simulated rewards do not feed back into them).

Ground truth. For a context ``x`` (the logged columns of an impression, see ``Contexts``) and image ``a``:

    start_logit(x, a)   = base_start(x) + gain(x) * (match(x, a) + quality_start * quality_a
                                                      + clickbait_start * clickbait_a)
    quality_logit(x, a) = base_quality(x) + quality_effect * quality_a - clickbait_penalty * clickbait_a
    q(x, a) = P(quality play | x, a) = sigmoid(start_logit) * sigmoid(quality_logit)

with ``match`` = theme taste . image themes + favourite-cast weight of the highlighted cast member,
``gain`` = artwork_scale * device gain * (prior_artwork_factor if the member already played the title),
``base_start`` = intercept + genre affinity + title appeal + recommender-score (row position) effect +
device, hour, weekday, country and language-match effects + prior-interaction effect. Clickbait raises play
starts and lowers quality plays; the logged reward is Bernoulli(q). ``q`` depends only on logged columns and
on hidden parameters indexed by member, title and image id, so the exact value of any policy on any logged
rows is computable: ``World.expected_reward`` and ``World.policy_value``.

Ids are indices: members 0..n_members-1, titles 0..n_titles-1, images 0..n_images-1 (images of a title are
contiguous and sorted by launch time). Times are UTC; ``hour``/``weekday`` are the member's local ones
(country's fixed offset, no daylight saving).

(One module of about 1,000 lines on purpose: the world's generation, its saved form and its ground truth
read the same hidden parameters, and a change to one that the others miss would make the truth wrong
without any error; sampling and the log writer live beside it in ``sim/``.)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepbandit.atomic import atomic_file
from deepbandit.data.logs import Contexts
from deepbandit.errors import ConfigError, DataError

US_PER_S = 1_000_000
S_PER_DAY = 86_400

GENRES = (
    "comedy", "romance", "action", "drama", "thriller", "horror", "documentary", "animation",
    "sci-fi", "crime", "family", "fantasy", "music", "sports", "war", "western",
)  # fmt: skip
# country -> (UTC offset in hours, main language, share of members)
COUNTRIES: dict[str, tuple[int, str, float]] = {
    "US": (-5, "en", 0.30), "BR": (-3, "pt", 0.10), "GB": (0, "en", 0.08), "FR": (1, "fr", 0.07),
    "DE": (1, "de", 0.07), "IN": (5, "hi", 0.10), "JP": (9, "ja", 0.06), "MX": (-6, "es", 0.07),
    "ES": (1, "es", 0.05), "KR": (9, "ko", 0.05), "CA": (-5, "en", 0.03), "AU": (10, "en", 0.02),
}  # fmt: skip
# Local-hour traffic shape (relative): quiet at night, a lunch bump, an evening peak at 21h.
_HOURS = np.arange(24)
TRAFFIC_BY_HOUR = 0.08 + np.exp(-0.5 * (np.minimum(abs(_HOURS - 21), 24 - abs(_HOURS - 21)) / 2.5) ** 2)
TRAFFIC_BY_HOUR += 0.35 * np.exp(-0.5 * ((_HOURS - 13) / 2.0) ** 2)
_TRAFFIC_CUM = np.concatenate([[0.0], np.cumsum(TRAFFIC_BY_HOUR)])  # (25,)
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_HOUR_US = 3600 * US_PER_S
_DAY_US = 24 * _HOUR_US


@dataclass
class WorldConfig:
    """Size and effect sizes of the world. Counts first; the defaults of the effects give, on the ``small``
    world, a random take rate near 0.15 and an oracle about 1.6x random."""

    n_members: int = 20_000  # members (ids 0..n_members-1)
    n_titles: int = 2_000  # titles in the catalogue (ids 0..n_titles-1); at least n_genres
    n_genres: int = 12  # at most len(GENRES)
    n_themes: int = 16  # visual themes an image can highlight (each genre shows mostly two)
    n_cast: int = 1_000  # cast members over the catalogue (Zipf popularity)
    cast_per_title: int = 6  # cast members drawn per title, by popularity
    favourite_cast: int = 3  # favourite cast members per member
    images_min: int = 3  # images per title: truncated geometric on [images_min, images_max]
    images_max: int = 24  # at most schema.MAX_CANDIDATES
    images_mean: float = 8.0  # mean images per title, before the cap at images_max
    image_cast_prob: float = 0.6  # share of images highlighting one cast member
    embedding_dim: int = 32  # width D of each image's synthetic vision embedding
    embedding_noise: float = 0.5  # std of the noise added to the projected attributes (signal std ~1)
    # member countries, each at most once: US | BR | GB | FR | DE | IN | JP | MX | ES | KR | CA | AU
    countries: list[str] = field(default_factory=lambda: ["US", "BR", "GB", "FR", "DE", "IN", "JP", "MX"])
    # device names, distinct; device_share and device_artwork_gain give one value per device
    devices: list[str] = field(default_factory=lambda: ["tv", "mobile", "tablet", "web"])
    # mean device mix of a member, one positive weight per device (each member: Dirichlet around it)
    device_share: list[float] = field(default_factory=lambda: [0.4, 0.35, 0.1, 0.15])
    # multiplier of the artwork effect per device (larger on big screens)
    device_artwork_gain: list[float] = field(default_factory=lambda: [1.25, 0.7, 0.9, 1.0])
    history_mean: float = 8.0  # plays per member of average activity, over history_days + the timeline
    history_days: float = 60.0  # history starts this long before the timeline
    max_history: int = 32  # played_title_ids kept per impression (at most schema.MAX_HISTORY)
    rewatch_prob: float = 0.2  # share of impressions for a title from the member's history
    new_title_fraction: float = 0.1  # titles launching during the timeline
    new_image_fraction: float = 0.1  # non-first images launching after their title, during the timeline
    taste_drift: float = 0.0  # std of each member's genre-taste change over the whole timeline
    # --- effects (logits) ---
    genre_taste_std: float = 1.0  # std of member genre tastes (plus boosts on two favourite genres)
    theme_taste_std: float = 1.3  # idiosyncratic part of the theme taste
    theme_from_genre: float = 0.8  # weight of the genre taste in the theme taste
    intercept_start: float = -3.0  # intercept of the play-start logit
    intercept_quality: float = 1.0  # intercept of the quality-given-start logit
    genre_effect: float = 0.5  # genre affinity on play start
    genre_quality_effect: float = 0.3  # genre affinity on quality given start
    appeal_std: float = 0.4  # std of the titles' appeal (play-start logit; also in recommender_score)
    recommender_effect: float = 0.8  # per unit of recommender_score (0..1): row position
    recommender_noise: float = 0.6  # std of the noise added to the recommender_score logit
    hour_effect: float = 0.25  # evening boost amplitude
    weekend_effect: float = 0.1  # play-start logit added on the member's local Saturday and Sunday
    country_effect_std: float = 0.1  # std of the per-country play-start logit effect
    language_match_effect: float = 0.3  # start logit added when the title's language is the member's
    prior_start_effect: float = 0.7  # play-start logit added when the member played the title before
    prior_quality_effect: float = 0.3  # quality logit added when the member played the title before
    artwork_scale: float = 0.7  # weight of the image terms (match, quality, clickbait) in the start logit
    prior_artwork_factor: float = 0.35  # artwork matters less once the member knows the title
    quality_std: float = 0.5  # std of the images' intrinsic quality (normal, mean 0)
    quality_start: float = 0.4  # weight of image quality in the artwork term of the start logit
    quality_effect: float = 0.6  # weight of image quality in the quality-given-start logit
    clickbait_mean: float = 0.4  # mean of the images' clickbait factor (exponential; 0 = none)
    clickbait_start: float = 0.8  # weight of clickbait in the artwork term of the start logit
    clickbait_penalty: float = 1.6  # weight of clickbait subtracted from the quality-given-start logit
    unpersonalised_samples: int = 256  # contexts per title to rank its images without personalisation

    def validate(self) -> None:
        from deepbandit.data.schema import MAX_CANDIDATES, MAX_HISTORY

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"world config: {what}")

        for name in ("n_members", "n_titles", "n_themes", "n_cast", "cast_per_title", "favourite_cast"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(1 <= self.n_genres <= len(GENRES), f"n_genres must be in 1..{len(GENRES)}, got {self.n_genres}")
        need(
            self.n_titles >= self.n_genres,
            f"n_titles ({self.n_titles}) must be >= n_genres ({self.n_genres})",
        )
        need(
            1 <= self.images_min <= self.images_max <= MAX_CANDIDATES,
            f"need 1 <= images_min <= images_max <= {MAX_CANDIDATES}, got {self.images_min}, {self.images_max}",
        )
        need(
            self.images_min <= self.images_mean <= self.images_max,
            f"images_mean {self.images_mean} outside [images_min, images_max]",
        )
        need(1 <= self.max_history <= MAX_HISTORY, f"max_history must be in 1..{MAX_HISTORY}")
        unknown = [c for c in self.countries if c not in COUNTRIES]
        need(not unknown and self.countries, f"countries must be among {sorted(COUNTRIES)}, got {unknown}")
        need(len(set(self.countries)) == len(self.countries), "countries must be unique")
        need(len(set(self.devices)) == len(self.devices) >= 1, "devices must be unique and non-empty")
        for name in ("device_share", "device_artwork_gain"):
            need(len(getattr(self, name)) == len(self.devices), f"{name} needs one value per device")
        need(min(self.device_share) > 0, "device_share must be positive")
        for name in ("rewatch_prob", "new_title_fraction", "new_image_fraction", "image_cast_prob"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        need(self.embedding_dim >= 1, "embedding_dim must be >= 1")
        need(self.unpersonalised_samples >= 1, "unpersonalised_samples must be >= 1")
        for name in ("history_mean", "history_days", "taste_drift", "clickbait_mean", "embedding_noise"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sigmoid_(x: np.ndarray) -> np.ndarray:
    """Sigmoid computed in place (x is overwritten and returned)."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


def _softmax_cum(logits: np.ndarray) -> np.ndarray:
    """Cumulative softmax of each row of ``logits`` (B, K), last column exactly 1."""
    cum = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    return cum


def _grouped_count(
    key: np.ndarray, n_groups: int, group: np.ndarray, rel: np.ndarray, side: str
) -> np.ndarray:
    """``np.searchsorted(key, (group << 32) | rel, side)`` for keys sorted by (group, 32-bit time).

    Random binary searches over a large array miss the cache at every step. The queries of a batch span
    a short time range [lo, hi], so locate every group's keys at lo and hi with sorted (cache-friendly)
    queries, and binary-search only the few keys that fall inside the range. (B,) int64."""
    lo, hi = int(rel.min()), int(rel.max())
    groups = np.arange(n_groups, dtype=np.int64) << 32
    before = np.searchsorted(key, groups | lo, side=side)
    inside = np.searchsorted(key, groups | hi, side=side) - before
    start = segment_offsets(inside)
    window = key[np.repeat(before - start[:-1], inside) + np.arange(start[-1])]
    return before[group] + np.searchsorted(window, (group << 32) | rel, side=side) - start[group]


def _traffic_cdf(rel_us: np.ndarray) -> np.ndarray:
    """Cumulative traffic (in hour-weights) from a local midnight to ``rel_us`` microseconds after it."""
    day, rem = np.divmod(rel_us, _DAY_US)
    hour = rem // _HOUR_US
    return (
        day * _TRAFFIC_CUM[-1]
        + _TRAFFIC_CUM[hour]
        + (rem - hour * _HOUR_US) / _HOUR_US * TRAFFIC_BY_HOUR[hour]
    )


def _traffic_inverse(value: np.ndarray) -> np.ndarray:
    """Inverse of ``_traffic_cdf``: microseconds after the local midnight. (B,) int64."""
    day = np.floor(value / _TRAFFIC_CUM[-1])
    rest = value - day * _TRAFFIC_CUM[-1]
    hour = np.clip(np.searchsorted(_TRAFFIC_CUM, rest, side="right") - 1, 0, 23)
    within = (rest - _TRAFFIC_CUM[hour]) / TRAFFIC_BY_HOUR[hour] * _HOUR_US
    return day.astype(np.int64) * _DAY_US + hour * _HOUR_US + within.astype(np.int64)


def segment_offsets(counts: np.ndarray) -> np.ndarray:
    """Offsets (n + 1,) of segments with the given lengths."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def alias_table(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker alias tables of every row of ``prob`` (B, K) (rows sum to 1), built Robin-Hood style for all
    rows at once: K - 1 steps, each filling the smallest remaining bin from the largest. Returns
    (threshold (B, K) float64, alias (B, K) int64); draw with ``alias_draw``."""
    n, k = prob.shape
    rows = np.arange(n)
    scaled = prob * k
    threshold = np.ones((n, k))
    alias = np.tile(np.arange(k), (n, 1))
    done = np.zeros((n, k), dtype=bool)
    for _ in range(k - 1):
        small = np.where(done, np.inf, scaled).argmin(axis=1)
        large = np.where(done, -np.inf, scaled).argmax(axis=1)
        threshold[rows, small] = scaled[rows, small]
        alias[rows, small] = large
        done[rows, small] = True
        scaled[rows, large] -= 1.0 - scaled[rows, small]
    return threshold, alias


def alias_draw(
    threshold: np.ndarray, alias: np.ndarray, row: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One draw from each row ``row`` (B,) of alias tables (M, K): two gathers, no search. (B,) int64."""
    k = threshold.shape[1]
    column = (rng.random(len(row)) * k).astype(np.int64)
    flat = row * k + column
    return np.where(rng.random(len(row)) < threshold.ravel()[flat], column, alias.ravel()[flat])


def _categorical(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw from each row of cumulative probabilities ``cum`` (B, K) (last column 1) with uniforms u (B,)."""
    return np.minimum((cum < u[:, None]).sum(axis=1), cum.shape[1] - 1)


# The world's saved parameters, by name (World's array fields); older files may also hold these retired ones
WORLD_ARRAYS = (
    "member_country",
    "member_language",
    "member_device_prob",
    "member_activity",
    "member_genre_taste",
    "member_genre_drift",
    "member_theme_taste",
    "member_theme_drift",
    "member_fav_cast",
    "member_fav_weight",
    "title_genres",
    "title_genre_idx",
    "title_genre_w",
    "title_cast",
    "title_popularity",
    "title_appeal",
    "title_language",
    "title_launch_s",
    "title_image_offsets",
    "image_title",
    "image_launch_s",
    "image_theme1",
    "image_theme2",
    "image_theme_w1",
    "image_theme_w2",
    "image_cast",
    "image_quality",
    "image_clickbait",
    "image_embedding",
    "genre_themes",
    "hour_effect",
    "weekday_effect",
    "device_base",
    "device_gain",
    "country_effect",
    "country_offset_s",
    "genre_title_offsets",
    "genre_titles",
    "genre_title_cdf",
    "history_offsets",
    "history_title",
    "history_key",
    "unpersonalised_value",
)
RETIRED_ARRAYS = ("image_best_prefix",)


@dataclass(eq=False)
class World:
    """Hidden parameters of the artwork world (arrays indexed by member, title and image id).

    Build with ``World.generate``; ``save``/``load`` round-trip it through one ``.npz``. Every array of
    ``arrays`` reads as an attribute (``world.image_quality``). M members, N titles, I images, G genres,
    T themes, C cast per title, F favourite cast per member, D embedding dim, H history plays:

    * members: ``member_country``, ``member_language`` (M,) codes; ``member_device_prob`` (M, n_devices);
      ``member_activity`` (M,); ``member_genre_taste``/``member_genre_drift`` (M, G);
      ``member_theme_taste``/``member_theme_drift`` (M, T); ``member_fav_cast``, ``member_fav_weight`` (M, F)
    * titles: ``title_genres`` (N, G) bool; ``title_genre_idx``/``title_genre_w`` (N, 3); ``title_cast``
      (N, C); ``title_popularity``, ``title_appeal``, ``title_language``, ``title_launch_s`` (N,);
      ``title_image_offsets`` (N + 1,): the images of title t are ids offsets[t]..offsets[t + 1] - 1
    * images: ``image_title``, ``image_launch_s``, ``image_theme1``/``image_theme2`` and their weights
      ``image_theme_w1``/``image_theme_w2``, ``image_cast`` (-1: none), ``image_quality``,
      ``image_clickbait``, ``unpersonalised_value`` (I,); ``image_embedding`` (I, D)
    * histories: ``history_offsets`` (M + 1,), ``history_title`` (H,), ``history_key`` (H,) = member << 32
      | (play time - base_s), sorted
    * effects: ``genre_themes`` (G, T), ``hour_effect`` (24,), ``weekday_effect`` (7,), ``device_base``,
      ``device_gain`` (n_devices,), ``country_effect``, ``country_offset_s`` (n_countries,); the genre
      sampler ``genre_title_offsets`` (G + 1,), ``genre_titles``, ``genre_title_cdf``
    """

    config: WorldConfig
    start_us: int  # timeline start (UTC, microseconds since the epoch)
    n_days: int
    countries: tuple[str, ...]
    languages: tuple[str, ...]
    devices: tuple[str, ...]
    genres: tuple[str, ...]
    # members
    member_country: np.ndarray = field(repr=False)
    member_language: np.ndarray = field(repr=False)
    member_device_prob: np.ndarray = field(repr=False)
    member_activity: np.ndarray = field(repr=False)
    member_genre_taste: np.ndarray = field(repr=False)
    member_genre_drift: np.ndarray = field(repr=False)
    member_theme_taste: np.ndarray = field(repr=False)
    member_theme_drift: np.ndarray = field(repr=False)
    member_fav_cast: np.ndarray = field(repr=False)
    member_fav_weight: np.ndarray = field(repr=False)
    # titles
    title_genres: np.ndarray = field(repr=False)
    title_genre_idx: np.ndarray = field(repr=False)
    title_genre_w: np.ndarray = field(repr=False)
    title_cast: np.ndarray = field(repr=False)
    title_popularity: np.ndarray = field(repr=False)
    title_appeal: np.ndarray = field(repr=False)
    title_language: np.ndarray = field(repr=False)
    title_launch_s: np.ndarray = field(repr=False)
    title_image_offsets: np.ndarray = field(repr=False)
    # images
    image_title: np.ndarray = field(repr=False)
    image_launch_s: np.ndarray = field(repr=False)
    image_theme1: np.ndarray = field(repr=False)
    image_theme2: np.ndarray = field(repr=False)
    image_theme_w1: np.ndarray = field(repr=False)
    image_theme_w2: np.ndarray = field(repr=False)
    image_cast: np.ndarray = field(repr=False)
    image_quality: np.ndarray = field(repr=False)
    image_clickbait: np.ndarray = field(repr=False)
    image_embedding: np.ndarray = field(repr=False)
    # effects and samplers
    genre_themes: np.ndarray = field(repr=False)
    hour_effect: np.ndarray = field(repr=False)
    weekday_effect: np.ndarray = field(repr=False)
    device_base: np.ndarray = field(repr=False)
    device_gain: np.ndarray = field(repr=False)
    country_effect: np.ndarray = field(repr=False)
    country_offset_s: np.ndarray = field(repr=False)
    genre_title_offsets: np.ndarray = field(repr=False)
    genre_titles: np.ndarray = field(repr=False)
    genre_title_cdf: np.ndarray = field(repr=False)
    # drawn by generate once the world exists (histories, the unpersonalised ranking)
    history_offsets: np.ndarray | None = field(default=None, repr=False)
    history_title: np.ndarray | None = field(default=None, repr=False)
    history_key: np.ndarray | None = field(default=None, repr=False)
    unpersonalised_value: np.ndarray | None = field(default=None, repr=False)
    # derived arrays (float32 copies, lookup keys): computed on first use, never saved
    _derived: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every saved parameter by name (what ``save`` writes and ``load`` reads)."""
        return {name: getattr(self, name) for name in WORLD_ARRAYS if getattr(self, name) is not None}

    # ---- sizes and timeline -------------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        return len(self.member_country)

    @property
    def n_titles(self) -> int:
        return len(self.title_launch_s)

    @property
    def n_images(self) -> int:
        return len(self.image_title)

    @property
    def start_s(self) -> int:
        return self.start_us // US_PER_S

    @property
    def end_us(self) -> int:
        return self.start_us + self.n_days * S_PER_DAY * US_PER_S

    @property
    def base_s(self) -> int:
        """Origin of the 32-bit relative times inside lookup keys (long before any launch or play)."""
        return self.start_s - 40 * 365 * S_PER_DAY

    # ---- generation ---------------------------------------------------------------------------------
    @classmethod
    def generate(cls, config: WorldConfig, start_us: int, n_days: int, seed: int) -> World:
        """Draw a world; deterministic given (config, start_us, n_days, seed)."""
        config.validate()
        if not 1 <= n_days <= 3650:
            raise ValueError(f"n_days must be in 1..3650, got {n_days}")
        cfg = config
        rng = np.random.default_rng([seed, 0x5EED, 1])
        M, N, G, T, F = cfg.n_members, cfg.n_titles, cfg.n_genres, cfg.n_themes, cfg.favourite_cast
        start_s = start_us // US_PER_S
        span_s = n_days * S_PER_DAY
        countries = tuple(cfg.countries)
        languages = tuple(sorted({COUNTRIES[c][1] for c in countries} | {"en"}))
        a: dict[str, np.ndarray] = {}

        # genres -> themes: each genre shows mostly two signature themes, a little of everything else
        genre_themes = 0.05 * rng.random((G, T))
        signature = np.argsort(rng.random((G, T)), axis=1)[:, :2]
        genre_themes[np.arange(G), signature[:, 0]] += 1.0
        genre_themes[np.arange(G), signature[:, 1]] += 0.6
        genre_themes /= genre_themes.sum(axis=1, keepdims=True)
        a["genre_themes"] = genre_themes

        # --- global effects
        a["hour_effect"] = cfg.hour_effect * np.cos(2 * np.pi * (_HOURS - 21) / 24)
        a["weekday_effect"] = np.where(np.arange(7) >= 5, cfg.weekend_effect, 0.0)
        a["device_base"] = rng.normal(0.0, 0.15, len(cfg.devices))
        a["device_gain"] = np.asarray(cfg.device_artwork_gain, dtype=np.float64)
        a["country_effect"] = rng.normal(0.0, cfg.country_effect_std, len(countries))
        a["country_offset_s"] = np.array([COUNTRIES[c][0] * 3600 for c in countries], dtype=np.int64)

        # --- titles
        genre_pop = rng.dirichlet(np.full(G, 2.0))
        n_genres = rng.choice([1, 2, 3], size=N, p=[0.4, 0.4, 0.2])
        title_genres = np.zeros((N, G), dtype=bool)
        primary = rng.choice(G, size=N, p=genre_pop)
        primary[:G] = np.arange(G)  # every genre has a catalogue title
        title_genres[np.arange(N), primary] = True
        for k in (1, 2):  # extra genres, uniformly; may repeat the primary (then fewer genres)
            extra = rng.integers(0, G, N)
            title_genres[np.flatnonzero(n_genres > k), extra[n_genres > k]] = True
        a["title_genres"] = title_genres
        # sparse form for lookups: up to 3 genre indices per title, weights 1/n (0 on padding)
        n_g = title_genres.sum(axis=1)
        a["title_genre_idx"] = np.argsort(~title_genres, axis=1, kind="stable")[:, :3]
        a["title_genre_w"] = np.where(np.arange(3) < n_g[:, None], 1.0 / n_g[:, None], 0.0)
        a["title_popularity"] = rng.lognormal(0.0, 1.2, N)
        a["title_appeal"] = rng.normal(0.0, cfg.appeal_std, N)
        lang_p = np.array([0.5 if lang == "en" else 0.5 / (len(languages) - 1) for lang in languages])
        a["title_language"] = rng.choice(len(languages), size=N, p=lang_p / lang_p.sum())
        is_new = rng.random(N) < cfg.new_title_fraction
        is_new[:G] = False
        launch = start_s - rng.integers(S_PER_DAY, 5 * 365 * S_PER_DAY, N)
        launch[is_new] = start_s + (rng.uniform(0.05, 0.95, is_new.sum()) * span_s).astype(np.int64)
        a["title_launch_s"] = launch
        cast_pop = 1.0 / np.arange(1, cfg.n_cast + 1) ** 0.8
        cast_pop /= cast_pop.sum()
        title_cast = rng.choice(cfg.n_cast, size=(N, cfg.cast_per_title), p=cast_pop)
        a["title_cast"] = title_cast

        # --- images: count, then attributes, then sort by launch inside each title
        p = 1.0 / (cfg.images_mean - cfg.images_min + 1.0)
        n_img = np.minimum(cfg.images_min - 1 + rng.geometric(p, N), cfg.images_max)
        img_title = np.repeat(np.arange(N), n_img)
        first = segment_offsets(n_img)[:-1]
        I = len(img_title)  # noqa: E741
        theme_cum = np.cumsum((title_genres / n_g[:, None]) @ genre_themes, axis=1)
        theme_cum[:, -1] = 1.0
        th1 = _categorical(theme_cum[img_title], rng.random(I))
        th2 = _categorical(theme_cum[img_title], rng.random(I))
        w1 = rng.uniform(0.6, 1.0, I)
        w2 = rng.uniform(0.0, 0.5, I)
        cast = title_cast[img_title, rng.integers(0, cfg.cast_per_title, I)]
        cast = np.where(rng.random(I) < cfg.image_cast_prob, cast, -1)
        quality = rng.normal(0.0, cfg.quality_std, I)
        clickbait = rng.exponential(cfg.clickbait_mean, I) if cfg.clickbait_mean > 0 else np.zeros(I)
        img_launch = launch[img_title].copy()
        late = rng.random(I) < cfg.new_image_fraction
        late[first] = False  # a title launches with at least one image
        lo = np.maximum(img_launch, start_s)[late]
        img_launch[late] = lo + (rng.random(late.sum()) * (start_s + span_s - lo)).astype(np.int64)
        order = np.lexsort((img_launch, img_title))  # contiguous per title, by launch time
        a["title_image_offsets"] = segment_offsets(n_img)
        a["image_title"] = img_title[order]
        a["image_launch_s"] = img_launch[order]
        a["image_theme1"], a["image_theme2"] = th1[order], th2[order]
        a["image_theme_w1"], a["image_theme_w2"] = w1[order], w2[order]
        a["image_cast"] = cast[order]
        a["image_quality"], a["image_clickbait"] = quality[order], clickbait[order]
        # vision embedding: fixed random projection of (themes, cast, quality, clickbait) plus noise
        D = cfg.embedding_dim
        theme_proj = rng.normal(0.0, 1.0, (T, D))
        cast_proj = rng.normal(0.0, 0.7, (cfg.n_cast, D))
        qual_dir, cb_dir = rng.normal(0.0, 1.0, (2, D))
        o = order
        emb = w1[o, None] * theme_proj[th1[o]] + w2[o, None] * theme_proj[th2[o]]
        emb += np.where(cast[o, None] >= 0, cast_proj[np.maximum(cast[o], 0)], 0.0)
        emb += quality[o, None] / max(cfg.quality_std, 1e-9) * 0.5 * qual_dir
        emb += clickbait[o, None] / max(cfg.clickbait_mean, 1e-9) * 0.5 * cb_dir
        emb += rng.normal(0.0, cfg.embedding_noise, (I, D))
        a["image_embedding"] = emb.astype(np.float32)

        # --- members
        share = np.array([COUNTRIES[c][2] for c in countries])
        country = rng.choice(len(countries), size=M, p=share / share.sum())
        main_lang = np.array([languages.index(COUNTRIES[c][1]) for c in countries])[country]
        alt_lang = np.where(
            main_lang == languages.index("en"), rng.integers(0, len(languages), M), languages.index("en")
        )
        a["member_country"] = country
        a["member_language"] = np.where(rng.random(M) < 0.85, main_lang, alt_lang)
        a["member_device_prob"] = rng.dirichlet(np.asarray(cfg.device_share) * 2.0, M)
        activity = rng.lognormal(0.0, 0.8, M)
        a["member_activity"] = activity
        psi = rng.normal(0.0, cfg.genre_taste_std, (M, G))
        favourite = rng.integers(0, G, (M, 2))
        psi[np.arange(M), favourite[:, 0]] += 1.5
        psi[np.arange(M), favourite[:, 1]] += 0.8
        a["member_genre_taste"] = psi
        # theme taste: genre taste seen through the genre->theme map (centred), plus an idiosyncratic part
        from_genre = (psi - psi.mean(axis=1, keepdims=True)) @ genre_themes
        a["member_theme_taste"] = cfg.theme_from_genre * from_genre / from_genre.std() + rng.normal(
            0.0, cfg.theme_taste_std, (M, T)
        )
        drift = rng.normal(0.0, cfg.taste_drift, (M, G)) if cfg.taste_drift > 0 else np.zeros((M, G))
        a["member_genre_drift"] = drift  # change over the whole timeline (linear in time)
        drift_themes = (drift - drift.mean(axis=1, keepdims=True)) @ genre_themes
        a["member_theme_drift"] = cfg.theme_from_genre * drift_themes / from_genre.std()
        a["member_fav_cast"] = rng.choice(cfg.n_cast, size=(M, F), p=cast_pop)
        a["member_fav_weight"] = rng.uniform(0.5, 2.0, (M, F))

        # genre -> titles sampler (by popularity): CSR of titles per genre with within-genre cdf shifted by g
        g_idx, t_idx = np.nonzero(title_genres.T)
        pop = a["title_popularity"][t_idx]
        g_off = segment_offsets(np.bincount(g_idx, minlength=G))
        cum = np.cumsum(pop)
        seg_total = np.add.reduceat(pop, g_off[:-1])
        cum = (cum - np.repeat(cum[g_off[:-1]] - pop[g_off[:-1]], np.diff(g_off))) / np.repeat(
            seg_total, np.diff(g_off)
        )
        cum[g_off[1:] - 1] = 1.0
        a["genre_title_offsets"], a["genre_titles"], a["genre_title_cdf"] = g_off, t_idx, g_idx + cum

        world = cls(
            config=cfg,
            start_us=int(start_us),
            n_days=int(n_days),
            countries=countries,
            languages=languages,
            devices=tuple(cfg.devices),
            genres=GENRES[:G],
            **a,
        )
        world._generate_histories(rng)
        world._rank_images_unpersonalised(np.random.default_rng([seed, 0x5EED, 2]))
        return world

    def _generate_histories(self, rng: np.random.Generator) -> None:
        """Plays drawn from the tastes over [start - history_days, end), one per (member, title) (its
        first), sorted by (member, time)."""
        cfg = self.config
        activity = self.member_activity / self.member_activity.mean()
        members = np.repeat(np.arange(self.n_members), rng.poisson(cfg.history_mean * activity))
        lo_s = self.start_s - int(cfg.history_days * S_PER_DAY)
        end_s = self.end_us // US_PER_S
        frac_draw = rng.random(len(members))
        titles = self.sample_titles_by_genre(members, np.full(len(members), 0.5), None, rng)
        t_lo = np.maximum(self.title_launch_s[titles], lo_s)
        times = t_lo + (frac_draw * (end_s - t_lo)).astype(np.int64)
        order = np.lexsort((times, titles, members))
        members, titles, times = members[order], titles[order], times[order]
        first = np.ones(len(members), dtype=bool)
        first[1:] = (members[1:] != members[:-1]) | (titles[1:] != titles[:-1])
        members, titles, times = members[first], titles[first], times[first]
        order = np.lexsort((times, members))
        self.history_offsets = segment_offsets(np.bincount(members, minlength=self.n_members))
        self.history_title = titles[order]
        self.history_key = (members[order] << 32) | (times[order] - self.base_s)  # (member, time) sorted

    def _cache(self, name: str):
        """Derived arrays (float32 copies, lookup keys), computed on first use and never saved."""
        if name not in self._derived:
            a, cfg = self.arrays, self.config
            f32 = np.float32
            derived = {
                "theme_taste": lambda: a["member_theme_taste"].astype(f32).ravel(),  # (M * T,)
                "theme_drift": lambda: a["member_theme_drift"].astype(f32).ravel(),
                "genre_taste": lambda: a["member_genre_taste"].ravel(),  # (M * G,)
                "genre_drift": lambda: a["member_genre_drift"].ravel(),
                "title_genre_idx_t": lambda: np.ascontiguousarray(a["title_genre_idx"].T),
                "title_genre_w_t": lambda: np.ascontiguousarray(a["title_genre_w"].T),
                "theme_w1": lambda: a["image_theme_w1"].astype(f32),
                "theme_w2": lambda: a["image_theme_w2"].astype(f32),
                "fav_weight_t": lambda: np.ascontiguousarray(a["member_fav_weight"].T.astype(f32)),
                "fav_cast_t": lambda: np.ascontiguousarray(a["member_fav_cast"].T),
                "start_term": lambda: (
                    cfg.quality_start * a["image_quality"] + cfg.clickbait_start * a["image_clickbait"]
                ).astype(f32),
                "keep_term": lambda: (
                    cfg.quality_effect * a["image_quality"] - cfg.clickbait_penalty * a["image_clickbait"]
                ).astype(f32),
                "image_key": lambda: (a["image_title"] << 32) | (a["image_launch_s"] - self.base_s),
                "genre_alias": lambda: alias_table(
                    np.diff(_softmax_cum(a["member_genre_taste"]), prepend=0.0)
                ),
                "device_alias": lambda: alias_table(a["member_device_prob"]),
                "title_cast_bits": lambda: self._title_cast_bits(),
            }
            self._derived[name] = derived[name]()
        return self._derived[name]

    def _title_cast_bits(self) -> np.ndarray:
        """(N * ceil(n_cast / 8),) uint8: bit c (little-endian within bytes) of row t set iff t casts c."""
        n_cast = self.config.n_cast
        member_of = np.zeros((self.n_titles, n_cast), dtype=bool)
        member_of[np.arange(self.n_titles)[:, None], self.title_cast] = True
        return np.packbits(member_of, axis=1, bitorder="little").ravel()

    # ---- context sampling (shared by the simulator and the unpersonalised ranking) -------------------
    def time_fraction(self, timestamp_us: np.ndarray) -> np.ndarray:
        """Position of each timestamp on the timeline (0 at start, 1 at end; may lie outside). (B,)"""
        return (np.asarray(timestamp_us) - self.start_us) / (self.end_us - self.start_us)

    def genre_affinity(self, member: np.ndarray, title: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Member's genre taste averaged over the title's genres, at timeline positions ``frac``. (B,)"""
        G = len(self.genres)
        at = member * G
        taste, drift = self._cache("genre_taste"), self._cache("genre_drift")
        genre, weight = self._cache("title_genre_idx_t"), self._cache("title_genre_w_t")  # (3, N) each
        out = np.zeros(len(member))
        for k in range(len(genre)):
            idx = at + genre[k][title]
            psi = taste[idx]
            if self.config.taste_drift > 0:
                psi += frac * drift[idx]
            out += weight[k][title] * psi
        return out

    def sample_titles_by_genre(
        self, member: np.ndarray, frac: np.ndarray, t_s: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """The recommendation path: a genre from softmax(genre taste), then a title of that genre by
        popularity, redrawn until it has launched by ``t_s`` (seconds; None: no launch check). (B,) int64."""
        out = np.empty(len(member), dtype=np.int64)
        todo = np.arange(len(member))
        for _ in range(1000):
            m = member[todo]
            if self.config.taste_drift > 0:
                cum = _softmax_cum(self.member_genre_taste[m] + frac[todo, None] * self.member_genre_drift[m])
                genre = _categorical(cum, rng.random(len(todo)))
            else:
                genre = alias_draw(*self._cache("genre_alias"), m, rng)
            pos = np.searchsorted(self.genre_title_cdf, genre + rng.random(len(todo)), side="right")
            title = self.genre_titles[np.minimum(pos, self.genre_title_offsets[genre + 1] - 1)]
            out[todo] = title
            if t_s is None:
                return out
            todo = todo[self.title_launch_s[title] > t_s[todo]]
            if not len(todo):
                return out
        raise RuntimeError("could not draw launched titles: no title of the world launched by these times")

    def diurnal_times_us(self, lo_us, hi_us, country, rng: np.random.Generator) -> np.ndarray:
        """Times (us) in [lo_us, hi_us) per row with density proportional to the traffic of the member's
        local hour (``TRAFFIC_BY_HOUR``), by inverting the cumulative traffic. (B,) int64."""
        offset = self.country_offset_s[country] * US_PER_S
        local_lo = lo_us + offset
        origin = (local_lo // _DAY_US) * _DAY_US  # local midnight before lo: keeps float64 exact to < 1 us
        c_lo, c_hi = _traffic_cdf(local_lo - origin), _traffic_cdf(hi_us + offset - origin)
        local = origin + _traffic_inverse(c_lo + rng.random(len(c_lo)) * (c_hi - c_lo))
        return np.clip(local - offset, lo_us, hi_us - 1)  # float rounding at the range ends

    def local_hour_weekday(
        self, timestamp_us: np.ndarray, country: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Member-local (hour, weekday) of UTC timestamps, by the country's fixed offset. (B,) int8 each."""
        local_s = timestamp_us // US_PER_S + self.country_offset_s[country]
        return ((local_s // 3600) % 24).astype(np.int8), ((local_s // S_PER_DAY + _EPOCH_WEEKDAY) % 7).astype(
            np.int8
        )

    def history_position(self, member: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Index into ``history_title`` just past each member's last play strictly before ``t_s``. (B,)"""
        return _grouped_count(self.history_key, self.n_members, member, t_s - self.base_s, "left")

    def recommender_score(
        self, affinity: np.ndarray, title: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """The upstream ranker's noisy estimate of the title's relevance, in (0, 1). (B,) float32."""
        z = affinity + self.title_appeal[title] + rng.normal(0.0, self.config.recommender_noise, len(title))
        return _sigmoid(z).astype(np.float32)

    def make_contexts(
        self, member, title, timestamp_us, rng: np.random.Generator, prior: np.ndarray | None = None
    ) -> Contexts:
        """The rest of the context of (member, title, time) triples as the world logs it; ``prior`` (B,)
        bool if already known, else looked up in the histories."""
        t_s = timestamp_us // US_PER_S
        country = self.member_country[member]
        hour, weekday = self.local_hour_weekday(timestamp_us, country)
        if prior is None:
            prior = self.prior_interaction(member, title, t_s)
        affinity = self.genre_affinity(member, title, self.time_fraction(timestamp_us))
        return Contexts(
            member_id=member,
            title_id=title,
            timestamp=timestamp_us,
            hour=hour,
            weekday=weekday,
            device=alias_draw(*self._cache("device_alias"), member, rng),
            country=country,
            language=self.member_language[member],
            prior_interaction=prior,
            recommender_score=self.recommender_score(affinity, title, rng),
            device_vocab=self.devices,
            country_vocab=self.countries,
            language_vocab=self.languages,
        )

    def plays_before(self, end: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``count`` (B,) plays ending at history position ``end`` (B,) of each row, flat and most
        recent first: (row (P,), rank (P,) with 0 the most recent, title (P,))."""
        row = np.repeat(np.arange(len(end)), count)
        rank = np.arange(len(row)) - np.repeat(segment_offsets(count)[:-1], count)
        return row, rank, self.history_title[np.repeat(end - 1, count) - rank]

    def prior_interaction(self, member: np.ndarray, title: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Whether each member played the title strictly before ``t_s``. (B,) bool."""
        end = self.history_position(member, t_s)
        row, _, played = self.plays_before(end, end - self.history_offsets[member])
        return np.bincount(row[played == title[row]], minlength=len(member)) > 0

    def available_images(self, title: np.ndarray, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first image id, count) of each title's images launched by ``t_s``: a prefix of its images."""
        first = self.title_image_offsets[title]
        return first, _grouped_count(
            self._cache("image_key"), self.n_titles, title, t_s - self.base_s, "right"
        ) - first

    # ---- ground truth -------------------------------------------------------------------------------
    def _codes(self, contexts: Contexts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(device, country, language) codes of the contexts in this world's vocabularies."""
        out = []
        for name, mine in (
            ("device", self.devices),
            ("country", self.countries),
            ("language", self.languages),
        ):
            vocab, codes = getattr(contexts, f"{name}_vocab"), getattr(contexts, name)
            if tuple(vocab) == mine:
                out.append(codes)
                continue
            lookup = np.array([mine.index(v) if v in mine else -1 for v in vocab] + [-1], dtype=np.int64)
            mapped = lookup[codes]
            bad = np.flatnonzero(mapped < 0)
            if len(bad):
                raise ValueError(
                    f"contexts: {name} {vocab[codes[bad[0]]]!r} at row {bad[0]} is not one of {mine}"
                )
            out.append(mapped)
        return out[0], out[1], out[2]

    def _check_ids(self, contexts: Contexts) -> None:
        for name, n in (
            ("member_id", self.n_members),
            ("title_id", self.n_titles),
            ("hour", 24),
            ("weekday", 7),
        ):
            ids = getattr(contexts, name)
            bad = np.flatnonzero((ids < 0) | (ids >= n))
            if len(bad):
                raise ValueError(f"contexts: {name} {ids[bad[0]]} at row {bad[0]} is out of range 0..{n - 1}")

    def expected_outcomes_flat(
        self, contexts: Contexts, counts: np.ndarray, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(play start), P(quality play)) of showing image ``images[e]``, both (E,) float32.

        Entries are grouped by context: the first ``counts[0]`` belong to context 0, and so on
        (``counts`` (B,)). Ids are trusted here; ``expected_reward`` validates them."""
        cfg = self.config
        f32 = np.float32
        member, title = contexts.member_id, contexts.title_id
        device, country, language = self._codes(contexts)
        frac = self.time_fraction(contexts.timestamp)
        prior = contexts.prior_interaction.astype(bool)
        # per-context terms (B,)
        affinity = self.genre_affinity(member, title, frac)
        base_start = (
            cfg.intercept_start
            + cfg.genre_effect * affinity
            + self.title_appeal[title]
            + cfg.recommender_effect * (contexts.recommender_score.astype(np.float64) - 0.5)
            + self.device_base[device]
            + self.hour_effect[contexts.hour]
            + self.weekday_effect[contexts.weekday]
            + self.country_effect[country]
            + cfg.language_match_effect * (self.title_language[title] == language)
            + cfg.prior_start_effect * prior
        )
        gain = cfg.artwork_scale * self.device_gain[device] * np.where(prior, cfg.prior_artwork_factor, 1.0)
        base_quality = (
            cfg.intercept_quality + cfg.genre_quality_effect * affinity + cfg.prior_quality_effect * prior
        )
        # per-(context, image) terms (E,): theme match, then favourite cast, then the image's own terms
        T = self.member_theme_taste.shape[1]
        at = np.repeat(member * T, counts)
        i1, i2 = at + self.image_theme1[images], at + self.image_theme2[images]
        w1, w2 = self._cache("theme_w1")[images], self._cache("theme_w2")[images]
        taste = self._cache("theme_taste")
        match = w1 * taste[i1]
        match += w2 * taste[i2]
        if cfg.taste_drift > 0:
            drift = self._cache("theme_drift")
            match += np.repeat(frac.astype(f32), counts) * (w1 * drift[i1] + w2 * drift[i2])
        self._add_cast_match(match, member, title, counts, images)
        match += self._cache("start_term")[images]
        match *= np.repeat(gain.astype(f32), counts)
        match += np.repeat(base_start.astype(f32), counts)
        start = _sigmoid_(match)
        keep = np.repeat(base_quality.astype(f32), counts)
        keep += self._cache("keep_term")[images]
        quality_play = _sigmoid_(keep)
        quality_play *= start
        return start, quality_play

    def _add_cast_match(self, match, member, title, counts, images) -> None:
        """match[e] += weight of the member's favourite cast member highlighted by image e (in place).

        Only contexts whose title casts one of the member's favourites can match (a small share): find
        them with a (title, cast) bitset lookup per favourite, then touch only their entries. Loops run
        over the F favourites with 1-d arrays (numpy reduces short rows slowly)."""
        bits = self._cache("title_cast_bits")  # (N * W,) uint8: bit c of row t set iff title t casts c
        at = title * (bits.size // self.n_titles)
        favourites = self._cache("fav_cast_t")  # (F, M)
        fav, hit = [], []
        for k in range(len(favourites)):
            fav.append(favourites[k][member])
            hit.append(((bits[at + (fav[k] >> 3)] >> (fav[k] & 7).astype(np.uint8)) & 1).astype(bool))
        rows = np.flatnonzero(np.logical_or.reduce(hit))
        if not len(rows):
            return
        n = counts[rows]
        rep = np.repeat(np.arange(len(rows)), n)
        entry = np.repeat(segment_offsets(counts)[rows] - segment_offsets(n)[:-1], n) + np.arange(len(rep))
        cast = self.image_cast[images[entry]]
        weights = self._cache("fav_weight_t")  # (F, M)
        add = np.zeros(len(entry), dtype=np.float32)
        for k in range(len(favourites)):
            target = np.where(hit[k][rows], fav[k][rows], -2)[rep]  # -2 never matches an image's cast
            add += np.where(cast == target, weights[k][member[rows]][rep], np.float32(0.0))
        match[entry] += add

    def _flat_candidates(self, contexts: Contexts, candidate_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Validate padded candidates (B, A); return (mask (B, A), counts (B,), images (E,) row-major)."""
        candidate_ids = np.asarray(candidate_ids)
        if candidate_ids.ndim != 2 or candidate_ids.shape[0] != len(contexts):
            raise ValueError(f"candidate_ids: shape {candidate_ids.shape}, expected ({len(contexts)}, A)")
        self._check_ids(contexts)
        mask = candidate_ids >= 0
        counts = mask.sum(axis=1)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise ValueError(f"candidate_ids: row {empty[0]} has no candidate (all -1)")
        rows, cols = np.nonzero(mask)
        images = candidate_ids[rows, cols].astype(np.int64)
        bad = np.flatnonzero(images >= self.n_images)
        if len(bad):
            raise ValueError(
                f"candidate_ids: image {images[bad[0]]} at row {rows[bad[0]]} is not in the world"
            )
        wrong = np.flatnonzero(self.image_title[images] != contexts.title_id[rows])
        if len(wrong):
            e = wrong[0]
            raise ValueError(
                f"candidate_ids: image {images[e]} at row {rows[e]} belongs to title "
                f"{self.image_title[images[e]]}, not to the row's title {contexts.title_id[rows[e]]}"
            )
        return mask, counts, images

    def expected_reward(self, contexts: Contexts, candidate_ids: np.ndarray) -> np.ndarray:
        """q(x, a): quality-play probability of each candidate, (B, A) float64; 0 where ``candidate_ids``
        (B, A) int64 is padding (-1)."""
        mask, counts, images = self._flat_candidates(contexts, candidate_ids)
        out = np.zeros(mask.shape, dtype=np.float64)
        out[mask] = self.expected_outcomes_flat(contexts, counts, images)[1]
        return out

    def play_start_probability(self, contexts: Contexts, candidate_ids: np.ndarray) -> np.ndarray:
        """P(play start | x, a), (B, A) float64, 0 on padding. Clickbait raises it; the reward is not it."""
        mask, counts, images = self._flat_candidates(contexts, candidate_ids)
        out = np.zeros(mask.shape, dtype=np.float64)
        out[mask] = self.expected_outcomes_flat(contexts, counts, images)[0]
        return out

    def policy_value(self, contexts: Contexts, candidate_ids: np.ndarray, action_dist: np.ndarray) -> float:
        """Exact value of a policy on these contexts: mean over rows of sum_a pi(a|x) q(x, a).

        ``action_dist`` (B, A): probabilities aligned with ``candidate_ids`` (one-hot for a deterministic
        policy), non-negative, zero on padding, each row summing to 1 (within 1e-6)."""
        q = self.expected_reward(contexts, candidate_ids)
        pi = np.asarray(action_dist, dtype=np.float64)
        if pi.shape != q.shape:
            raise ValueError(f"action_dist: shape {pi.shape}, expected {q.shape} (that of candidate_ids)")
        sums = pi.sum(axis=1)
        problems = (
            (~np.isfinite(pi).all(axis=1), "is not finite"),
            ((pi < 0).any(axis=1), "has a negative probability"),
            (((pi != 0) & (np.asarray(candidate_ids) < 0)).any(axis=1), "puts mass on padding (-1)"),
            (np.abs(sums - 1.0) > 1e-6, "does not sum to 1"),
        )
        for bad, what in problems:
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"action_dist: row {row} {what}: {pi[row].tolist()}")
        return float((pi * q).sum(axis=1).mean())

    def oracle_action(self, contexts: Contexts, candidate_ids: np.ndarray) -> np.ndarray:
        """Position (into each row of ``candidate_ids``) of the candidate with the highest q. (B,) int64."""
        q = self.expected_reward(contexts, candidate_ids)
        return np.where(np.asarray(candidate_ids) >= 0, q, -np.inf).argmax(axis=1)

    def best_unpersonalised_action(self, contexts: Contexts, candidate_ids: np.ndarray) -> np.ndarray:
        """Position of the candidate with the highest ``unpersonalised_value``: the same image for every
        member (the best available one while a title's better images have not launched). (B,) int64."""
        self._flat_candidates(contexts, candidate_ids)
        cand = np.asarray(candidate_ids)
        return np.where(cand >= 0, self.unpersonalised_value[np.maximum(cand, 0)], -np.inf).argmax(axis=1)

    def baseline_values(self, contexts: Contexts, candidate_ids: np.ndarray) -> dict[str, float]:
        """Exact values of the uniform-random, best-unpersonalised and oracle policies on these contexts."""
        q = self.expected_reward(contexts, candidate_ids)
        mask = np.asarray(candidate_ids) >= 0
        best = self.best_unpersonalised_action(contexts, candidate_ids)
        return {
            "random": float((q.sum(axis=1) / mask.sum(axis=1)).mean()),
            "best_unpersonalised": float(q[np.arange(len(q)), best].mean()),
            "oracle": float(np.where(mask, q, -np.inf).max(axis=1).mean()),
        }

    def _rank_images_unpersonalised(self, rng: np.random.Generator) -> None:
        """``unpersonalised_value`` (I,): each image's q averaged over its title's contexts on the
        recommendation path (member ~ activity x P(genre path picks the title | member), time on the
        title's part of the timeline with the traffic shape), estimated from ``unpersonalised_samples``
        self-normalised importance-weighted contexts per title shared by all its images (common random
        numbers keep the ranking sharp)."""
        K, N, G = self.config.unpersonalised_samples, self.n_titles, len(self.genres)
        value, weight_sum = np.zeros(self.n_images), np.zeros(N)
        act_cum = np.cumsum(self.member_activity)
        act_cum /= act_cum[-1]
        # P(genre path picks title t | genre g) = pop_t / total popularity of g
        genre_of = np.repeat(np.arange(G), np.diff(self.genre_title_offsets))
        pop = self.title_popularity[self.genre_titles]
        p_title = np.zeros((N, G))
        p_title[self.genre_titles, genre_of] = pop / np.bincount(genre_of, weights=pop)[genre_of]
        n_img = np.diff(self.title_image_offsets)
        per_batch = max(1, 2_000_000 // (K * max(1, int(n_img.mean()))))
        for lo in range(0, N, per_batch):
            titles = np.arange(lo, min(N, lo + per_batch))
            title = np.repeat(titles, K)
            member = np.minimum(
                np.searchsorted(act_cum, rng.random(len(title)), side="right"), self.n_members - 1
            )
            t_lo = np.maximum(self.title_launch_s[title], self.start_s) * US_PER_S
            t_us = self.diurnal_times_us(
                t_lo, np.full(len(title), self.end_us), self.member_country[member], rng
            )
            frac = self.time_fraction(t_us)
            genre_taste = self.member_genre_taste[member]
            if self.config.taste_drift > 0:
                genre_taste = genre_taste + frac[:, None] * self.member_genre_drift[member]
            weight = (np.diff(_softmax_cum(genre_taste), axis=1, prepend=0.0) * p_title[title]).sum(axis=1)
            ctx = self.make_contexts(member, title, t_us, rng)
            counts = n_img[title]
            images = np.repeat(self.title_image_offsets[title] - segment_offsets(counts)[:-1], counts)
            images += np.arange(len(images))
            q = self.expected_outcomes_flat(ctx, counts, images)[1]
            value += np.bincount(images, weights=np.repeat(weight, counts) * q, minlength=self.n_images)
            weight_sum[titles] = np.add.reduceat(weight, np.arange(0, len(title), K))
        value /= weight_sum[self.image_title]
        self.unpersonalised_value = value

    # ---- tables and persistence ---------------------------------------------------------------------
    def titles_table(self) -> pa.Table:
        from deepbandit.data.schema import TITLES_SCHEMA

        genre_idx = np.nonzero(self.title_genres)[1]
        genres = pa.ListArray.from_arrays(
            pa.array(segment_offsets(self.title_genres.sum(axis=1)).astype(np.int32)),
            pc.take(pa.array(list(self.genres)), pa.array(genre_idx)),
        )
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(self.n_titles, dtype=np.int64)),
                genres,
                pa.array(self.title_launch_s * US_PER_S, pa.timestamp("us", tz="UTC")),
            ],
            schema=TITLES_SCHEMA,
        )

    def images_table(self) -> pa.Table:
        from deepbandit.data.schema import images_schema

        dim = self.image_embedding.shape[1]
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(self.image_embedding.ravel()), dim)
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(self.n_images, dtype=np.int64)),
                pa.array(self.image_title.astype(np.int64)),
                embedding,
                pa.array(self.image_launch_s * US_PER_S, pa.timestamp("us", tz="UTC")),
            ],
            schema=images_schema(dim),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write every parameter to one ``.npz`` (atomically); ``World.load`` reads it back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": asdict(self.config),
            "start_us": self.start_us,
            "n_days": self.n_days,
            "countries": self.countries,
            "languages": self.languages,
            "devices": self.devices,
            "genres": self.genres,
        }
        arrays = {k: v for k, v in self.arrays.items() if not k.startswith("_")}
        with atomic_file(path) as sink:
            np.savez(sink, _meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> World:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["_meta"]))
            arrays = {k: npz[k] for k in npz.files if k != "_meta" and k not in RETIRED_ARRAYS}
        missing = sorted(set(WORLD_ARRAYS) - set(arrays))
        unknown = sorted(set(arrays) - set(WORLD_ARRAYS))
        if missing or unknown:
            raise DataError(
                f"{path}: not a world file of this version (missing arrays {missing}, unknown arrays {unknown})"
            )
        return cls(
            config=WorldConfig(**meta["config"]),
            start_us=meta["start_us"],
            n_days=meta["n_days"],
            countries=tuple(meta["countries"]),
            languages=tuple(meta["languages"]),
            devices=tuple(meta["devices"]),
            genres=tuple(meta["genres"]),
            **arrays,
        )

    def summary(self) -> dict:
        n_img = np.diff(self.title_image_offsets)
        return {
            "n_members": self.n_members,
            "n_titles": self.n_titles,
            "n_images": self.n_images,
            "images_per_title_mean": float(n_img.mean()),
            "images_per_title_max": int(n_img.max()),
            "titles_launching_in_timeline": int((self.title_launch_s >= self.start_s).sum()),
            "images_launching_in_timeline": int((self.image_launch_s >= self.start_s).sum()),
            "history_plays": len(self.history_title),
        }
