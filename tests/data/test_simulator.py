"""The artwork-world simulator: determinism, exact ground truth, exact propensities, cold start, outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from scipy import stats

from deepbandit.cli import simulate as simulate_cli
from deepbandit.data.logs import candidates_from_impressions, contexts_from_impressions, padded_list_column
from deepbandit.data.schema import (
    IMAGES_FILE,
    IMPRESSIONS_DIR,
    MAX_CANDIDATES,
    TITLES_FILE,
    TITLES_SCHEMA,
    images_schema,
)
from deepbandit.sim.simulator import (
    SIMULATED_IMPRESSIONS_SCHEMA,
    TRUTH_FILE,
    WORLD_FILE,
    SimulateConfig,
    TruthAccumulator,
    build,
)
from deepbandit.sim.world import COUNTRIES, US_PER_S, World, alias_draw, alias_table


def compose_config(*overrides: str) -> SimulateConfig:
    """The simulate config as `deepbandit simulate world=tiny ...` would compose it (out_dir unset)."""
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose("simulate", overrides=["world=tiny", "out_dir=unused", "progress=false", *overrides])
    return OmegaConf.to_object(cfg)


def simulate_table(config: SimulateConfig, n: int, **generator_kw) -> tuple[World, pa.Table, dict]:
    world, _, generator = build(config)
    truth = TruthAccumulator()
    table = generator.table(n, truth, **generator_kw)
    return world, table, truth.result()


@pytest.fixture(scope="module")
def tiny():
    """Tiny world, softmax logging, 20k rows: (config, world, impressions, truth)."""
    config = compose_config()
    world, table, truth = simulate_table(config, 20_000)
    return config, world, table, truth


def choice_positions(table: pa.Table) -> np.ndarray:
    """Position of chosen_image_id inside each row's candidate list. (B,)"""
    cand, _ = candidates_from_impressions(table)
    chosen = table.column("chosen_image_id").to_numpy()
    hit = cand == chosen[:, None]
    assert (hit.sum(axis=1) == 1).all()
    return hit.argmax(axis=1)


# --- determinism ------------------------------------------------------------------------------------
def test_same_seed_same_data_and_other_seed_other_data():
    config = compose_config()
    world_a, a, _ = simulate_table(config, 3_000)
    world_b, b, _ = simulate_table(config, 3_000)
    assert a.equals(b)
    assert world_a.images_table().equals(world_b.images_table())
    assert world_a.titles_table().equals(world_b.titles_table())
    assert all(np.array_equal(world_a.arrays[k], world_b.arrays[k]) for k in world_a.arrays)
    world_c, c, _ = simulate_table(compose_config("seed=1"), 3_000)
    assert not np.array_equal(world_a.member_theme_taste, world_c.member_theme_taste)
    assert not a.column("member_id").equals(c.column("member_id"))
    assert not a.column("reward").equals(c.column("reward"))


def test_world_save_load_round_trip(tiny, tmp_path):
    _, world, table, _ = tiny
    loaded = World.load(world.save(tmp_path / WORLD_FILE))
    assert loaded.config == world.config and loaded.start_us == world.start_us
    assert set(loaded.arrays) == {k for k in world.arrays if not k.startswith("_")}
    ctx, cand = contexts_from_impressions(table), candidates_from_impressions(table)[0]
    np.testing.assert_array_equal(loaded.expected_reward(ctx, cand), world.expected_reward(ctx, cand))


def test_world_file_arrays_are_the_worlds_fields(tiny, tmp_path):
    """A world file holds exactly the World's array fields: a retired array of an older version is
    skipped, a missing or unknown one is refused with the file and the names."""
    from deepbandit.errors import DataError

    _, world, _, _ = tiny
    meta = np.array(json.dumps({"config": dataclasses.asdict(world.config), "start_us": world.start_us,
                                "n_days": world.n_days, "countries": world.countries, "languages": world.languages,
                                "devices": world.devices, "genres": world.genres}))  # fmt: skip
    arrays = world.arrays
    np.savez(tmp_path / "old.npz", _meta=meta, image_best_prefix=np.zeros(3), **arrays)
    assert World.load(tmp_path / "old.npz").n_images == world.n_images
    np.savez(tmp_path / "odd.npz", _meta=meta, surprise=np.zeros(3), **arrays)
    with pytest.raises(DataError, match=r"odd.npz.*unknown arrays \['surprise'\]"):
        World.load(tmp_path / "odd.npz")
    del arrays["image_quality"]
    np.savez(tmp_path / "short.npz", _meta=meta, **arrays)
    with pytest.raises(DataError, match=r"missing arrays \['image_quality'\]"):
        World.load(tmp_path / "short.npz")


# --- the ground truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["uniform", "epsilon_greedy", "softmax"])
def test_mean_logged_reward_matches_exact_logging_value(policy):
    _, table, truth = simulate_table(compose_config(f"logging_policy={policy}"), 40_000)
    t = truth["all"]
    reward = table.column("reward").to_numpy()
    # reward_i ~ Bernoulli(v_i) with v_i = sum_a pi(a|x_i) q(x_i, a): its variance is at most p(1-p)
    se = np.sqrt(t["logging"] * (1 - t["logging"]) / len(reward))
    assert abs(reward.mean() - t["logging"]) < 3 * se
    assert abs(t["take_rate"] - reward.mean()) < 1e-12
    if policy == "uniform":
        assert t["logging"] == pytest.approx(t["random"], rel=1e-6)


def test_world_api_reproduces_the_simulator_truth(tiny):
    _, world, table, truth = tiny
    ctx = contexts_from_impressions(table)
    cand, mask = candidates_from_impressions(table)
    dist, dist_mask = padded_list_column(table, "action_dist", 0.0, np.float64)
    np.testing.assert_array_equal(mask, dist_mask)
    t = truth["all"]
    assert world.policy_value(ctx, cand, dist) == pytest.approx(t["logging"], rel=1e-6)
    base = world.baseline_values(ctx, cand)
    for name in ("random", "best_unpersonalised", "oracle"):
        assert base[name] == pytest.approx(t[name], rel=1e-6), name
    rows = np.arange(len(cand))
    oracle = np.zeros(cand.shape)
    oracle[rows, world.oracle_action(ctx, cand)] = 1.0
    assert world.policy_value(ctx, cand, oracle) == pytest.approx(t["oracle"], rel=1e-6)
    # the chosen image's q, as the simulator drew the reward from it
    q = world.expected_reward(ctx, cand)
    assert q[rows, choice_positions(table)].mean() == pytest.approx(
        t["expected_take_rate_of_chosen"], rel=1e-6
    )
    assert ((q >= 0) & (q <= 1)).all() and (q[~mask] == 0).all()


def test_policy_ordering_and_bigger_artwork_effect_without_prior_interaction(tiny):
    truth = tiny[3]
    for split in ("all", "prior_interaction_true", "prior_interaction_false"):
        v = truth[split]
        assert v["rows"] > 1_000, split
        assert v["oracle"] > v["best_unpersonalised"] > v["random"], split
    gap = {s: truth[s]["oracle"] - truth[s]["best_unpersonalised"] for s in truth if s != "all"}
    assert gap["prior_interaction_false"] > 1.5 * gap["prior_interaction_true"]


def test_small_world_calibration():
    """On the default world personalisation matters: oracle clearly above best-unpersonalised, clearly
    above random, and random's take rate in a realistic range."""
    config = compose_config("world=small", "world.unpersonalised_samples=64")
    _, table, truth = simulate_table(config, 30_000)
    v = truth["all"]
    assert 0.08 < v["random"] < 0.2
    assert 1.4 < v["oracle"] / v["random"] < 2.2
    assert v["best_unpersonalised"] - v["random"] > 0.02 and v["oracle"] - v["best_unpersonalised"] > 0.02


def test_clickbait_raises_starts_and_lowers_quality_plays(tiny):
    _, world, table, _ = tiny
    ctx = contexts_from_impressions(table)
    cand, mask = candidates_from_impressions(table)
    start, q = world.play_start_probability(ctx, cand), world.expected_reward(ctx, cand)
    clickbait = np.where(mask, world.image_clickbait[np.maximum(cand, 0)], np.nan)
    high = mask & (clickbait > np.nanquantile(clickbait, 0.9))
    low = mask & (clickbait < np.nanquantile(clickbait, 0.1))
    assert start[high].mean() > start[low].mean()
    assert (q / np.where(mask, start, 1.0))[high].mean() < (q / np.where(mask, start, 1.0))[low].mean()


def test_taste_drift_makes_the_truth_depend_on_time():
    world, table, _ = simulate_table(compose_config("world.taste_drift=1.0"), 500)
    ctx = contexts_from_impressions(table)
    cand = candidates_from_impressions(table)[0]
    later = dataclasses.replace(ctx, timestamp=ctx.timestamp + 7 * 86_400 * US_PER_S)
    assert not np.allclose(world.expected_reward(ctx, cand), world.expected_reward(later, cand))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ctx, cand, dist: dist.__setitem__((0, 0), dist[0, 0] + 0.5), "row 0 does not sum to 1"),
        (lambda ctx, cand, dist: dist.__setitem__((1, slice(None)), np.nan), "row 1 is not finite"),
        (lambda ctx, cand, dist: cand.__setitem__((2, 0), cand[3, 0] + 10_000), "is not in the world"),
        (lambda ctx, cand, dist: ctx.member_id.__setitem__(4, -1), "member_id -1 at row 4"),
        (lambda ctx, cand, dist: ctx.hour.__setitem__(5, 24), "hour 24 at row 5"),
        (lambda ctx, cand, dist: ctx.title_id.__setitem__(6, 10**6), "title_id 1000000 at row 6"),
    ],
)
def test_policy_value_rejects_bad_input(tiny, mutate, message):
    _, world, table, _ = tiny
    table = table.slice(0, 50)
    ctx = contexts_from_impressions(table)
    ctx = ctx.take(np.arange(len(ctx)))  # writable copies (arrays read from Arrow are read-only views)
    cand = candidates_from_impressions(table)[0]
    dist = padded_list_column(table, "action_dist", 0.0, np.float64)[0]
    mutate(ctx, cand, dist)
    with pytest.raises(ValueError, match=message):
        world.policy_value(ctx, cand, dist)


def test_candidate_of_another_title_is_rejected(tiny):
    _, world, table, _ = tiny
    ctx, cand = (
        contexts_from_impressions(table.slice(0, 10)),
        candidates_from_impressions(table.slice(0, 10))[0],
    )
    other = np.flatnonzero(world.image_title != ctx.title_id[3])[0]
    cand[3, 0] = other
    with pytest.raises(ValueError, match=f"image {other} at row 3 belongs to title"):
        world.expected_reward(ctx, cand)


def test_unknown_category_is_rejected(tiny):
    _, world, table, _ = tiny
    table = table.slice(0, 10)
    devices = pc.if_else(pc.equal(pa.array(np.arange(10)), 7), "fridge", table.column("device"))
    table = table.set_column(table.schema.get_field_index("device"), "device", devices)
    with pytest.raises(ValueError, match="device 'fridge' at row 7"):
        world.expected_reward(contexts_from_impressions(table), candidates_from_impressions(table)[0])


# --- logging policies: exact propensities ----------------------------------------------------------
def chi_square(table: pa.Table, dist_override: np.ndarray | None = None) -> tuple[float, int]:
    """Pearson chi-square of chosen positions against the summed logged action_dist, per candidate list.

    Rows are grouped by their candidate list; in each group the count of choices at every position is
    compared with the sum over its rows of that position's probability (cells with expectation < 5 are
    merged into one per group). Returns (statistic, degrees of freedom)."""
    cand, mask = candidates_from_impressions(table)
    dist = (
        padded_list_column(table, "action_dist", 0.0, np.float64)[0]
        if dist_override is None
        else dist_override
    )
    chosen = np.zeros(cand.shape)
    chosen[np.arange(len(cand)), choice_positions(table)] = 1.0
    _, group = np.unique(np.where(mask, cand, -1), axis=0, return_inverse=True)
    chi2, df = 0.0, 0
    for g in range(group.max() + 1):
        rows = group == g
        observed, expected = chosen[rows].sum(axis=0), dist[rows].sum(axis=0)
        small = expected < 5
        if small.any():
            observed = np.append(observed[~small], observed[small].sum())
            expected = np.append(expected[~small], expected[small].sum())
        keep = expected > 0
        if keep.sum() >= 2:
            chi2 += (((observed - expected) ** 2)[keep] / expected[keep]).sum()
            df += keep.sum() - 1
    return chi2, df


@pytest.mark.parametrize("policy", ["uniform", "epsilon_greedy", "softmax"])
def test_logged_propensities_match_choice_frequencies(policy):
    config = compose_config(f"logging_policy={policy}", "world.new_image_fraction=0.0")
    _, table, _ = simulate_table(config, 20_000)
    dist, mask = padded_list_column(table, "action_dist", 0.0, np.float64)
    positions = choice_positions(table)
    np.testing.assert_array_equal(
        dist[np.arange(len(dist)), positions], table.column("propensity").to_numpy()
    )
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    assert (table.column("propensity").to_numpy() > 0).all()
    assert pc.all(pc.equal(table.column("propensity_kind"), "exact")).as_py()
    chi2, df = chi_square(table)
    assert df > 20 and stats.chi2.sf(chi2, df) > 1e-3
    # power check: the same test rejects propensities that are only slightly off
    uniform = np.where(mask, 1.0 / mask.sum(axis=1, keepdims=True), 0.0)
    if policy != "uniform":
        chi2_wrong, df_wrong = chi_square(table, uniform)
        assert stats.chi2.sf(chi2_wrong, df_wrong) < 1e-6


def test_alias_tables_reproduce_their_probabilities():
    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.full(7, 0.3), size=200)
    prob[0] = [1.0, 0, 0, 0, 0, 0, 0]  # degenerate rows too
    prob[1] = 1 / 7
    threshold, alias = alias_table(prob)
    # P(k) = (threshold[k] + sum of (1 - threshold[j]) over the bins j aliased to k) / K
    rebuilt = threshold.copy()
    np.add.at(rebuilt, (np.arange(len(prob))[:, None].repeat(7, axis=1), alias), 1.0 - threshold)
    np.testing.assert_allclose(rebuilt / 7, prob, atol=1e-12)
    draws = alias_draw(threshold, alias, np.full(70_000, 5), rng)
    counts = np.bincount(draws, minlength=7)
    assert stats.chisquare(counts[prob[5] > 0], 70_000 * prob[5][prob[5] > 0]).pvalue > 1e-3


def test_sticky_choices_stay_fixed_inside_a_window():
    overrides = ("world.n_members=40", "world.new_image_fraction=0.0", "n_days=4")
    sticky = compose_config(*overrides, "logging_policy.sticky_window_hours=24")
    world, table, _ = simulate_table(sticky, 20_000)
    window = (table.column("timestamp").cast(pa.int64()).to_numpy() - world.start_us) // (
        24 * 3600 * US_PER_S
    )
    keys = pd.DataFrame(
        {
            "member": table.column("member_id").to_numpy(),
            "title": table.column("title_id").to_numpy(),
            "window": window,
            "chosen": table.column("chosen_image_id").to_numpy(),
        }
    )
    per_key = keys.groupby(["member", "title", "window"])["chosen"].agg(["nunique", "size"])
    assert (per_key["size"] > 1).sum() > 500  # plenty of repeated (member, title, window)
    assert (per_key["nunique"] == 1).all()
    # propensities still exact: one independent draw per (member, title, window)
    first = keys.drop_duplicates(["member", "title", "window"]).index.to_numpy()
    chi2, df = chi_square(table.take(first))
    assert df > 20 and stats.chi2.sf(chi2, df) > 1e-3
    # without the sticky option the same keys do show different images
    _, loose, _ = simulate_table(compose_config(*overrides), 20_000)
    loose_keys = keys.assign(
        member=loose.column("member_id").to_numpy(),
        title=loose.column("title_id").to_numpy(),
        chosen=loose.column("chosen_image_id").to_numpy(),
    )
    assert (loose_keys.groupby(["member", "title", "window"])["chosen"].nunique() > 1).sum() > 100


# --- time and cold start -----------------------------------------------------------------------------
def test_cold_start_images_and_titles_appear_only_after_launch():
    config = compose_config("world.new_image_fraction=0.5", "world.new_title_fraction=0.3")
    world, table, _ = simulate_table(config, 20_000)
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    cand, mask = candidates_from_impressions(table)
    launched = world.image_launch_s[np.maximum(cand, 0)] * US_PER_S
    assert (launched[mask] <= ts[np.nonzero(mask)[0]]).all()
    title = table.column("title_id").to_numpy()
    assert (world.title_launch_s[title] * US_PER_S <= ts).all()
    # late images: offered after their launch, never before, while their title was shown before it
    late = np.flatnonzero(world.image_launch_s > world.start_s)
    late = late[world.title_launch_s[world.image_title[late]] < world.image_launch_s[late]]
    offered = np.isin(late, cand[mask])
    shown_before = np.array(
        [(ts[title == world.image_title[i]] < world.image_launch_s[i] * US_PER_S).any() for i in late]
    )
    assert offered.sum() > 10 and (offered & shown_before).sum() > 5
    new_titles = np.flatnonzero(world.title_launch_s > world.start_s)
    assert len(new_titles) > 3 and np.isin(new_titles, title).sum() > 1


def test_timestamps_hours_and_weekdays(tiny):
    config, world, table, _ = tiny
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(ts) >= 0).all() and world.start_us <= ts.min() and ts.max() < world.end_us
    offset_h = np.array([COUNTRIES[c][0] for c in table.column("country").to_pylist()])
    local = pd.to_datetime(ts, unit="us") + pd.to_timedelta(offset_h, unit="h")
    np.testing.assert_array_equal(table.column("hour").to_numpy(), local.hour)
    np.testing.assert_array_equal(table.column("weekday").to_numpy(), local.day_of_week)
    # traffic peaks in the evening
    hours = np.bincount(table.column("hour").to_numpy(), minlength=24)
    assert hours[19:23].sum() > 4 * hours[2:6].sum()
    assert len(pc.unique(table.column("request_id"))) == table.num_rows


def test_histories_and_prior_interaction(tiny):
    config, world, table, _ = tiny
    played = table.column("played_title_ids")
    lengths = pc.list_value_length(played).to_numpy()
    assert lengths.max() <= config.world.max_history and lengths.mean() > 1
    title = table.column("title_id").to_numpy()
    rows = np.repeat(np.arange(table.num_rows), lengths)
    in_list = (
        np.bincount(rows[played.combine_chunks().flatten().to_numpy() == title[rows]], minlength=len(title))
        > 0
    )
    prior = table.column("prior_interaction").to_numpy()
    assert (prior[in_list]).all()  # a title among the recent plays has been interacted with
    assert 0.05 < prior.mean() < 0.9


def test_embeddings_carry_the_image_themes():
    world, _, _ = simulate_table(compose_config("world=small", "world.unpersonalised_samples=8"), 10)
    emb, theme = world.image_embedding, world.image_theme1
    train = np.arange(len(theme)) % 2 == 0
    centroids = np.stack([emb[train & (theme == t)].mean(axis=0) for t in range(world.config.n_themes)])
    predicted = ((emb[~train, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (predicted == theme[~train]).mean() > 3 / world.config.n_themes


# --- outputs and the command ------------------------------------------------------------------------
def test_run_writes_the_dataset_end_to_end(tmp_path):
    from deepbandit.data.validation import validate_dataset

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose(
            "simulate",
            overrides=[
                "world=tiny",
                "n_impressions=5000",
                "chunk_rows=2000",
                "batch_rows=1000",
                f"out_dir={tmp_path}",
            ],
        )
    summary = simulate_cli.run(cfg)
    parts = sorted((tmp_path / IMPRESSIONS_DIR).glob("*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not list(tmp_path.rglob(".*.tmp"))
    for part in parts:
        assert pq.read_schema(part) == SIMULATED_IMPRESSIONS_SCHEMA
        assert pq.read_schema(part).metadata == SIMULATED_IMPRESSIONS_SCHEMA.metadata
        assert pq.ParquetFile(part).metadata.row_group(0).num_rows == 1000
    assert pq.read_schema(tmp_path / IMAGES_FILE) == images_schema(8)
    assert pq.read_schema(tmp_path / TITLES_FILE) == TITLES_SCHEMA
    impressions = pq.read_table(tmp_path / IMPRESSIONS_DIR)
    assert impressions.num_rows == 5000
    truth = json.loads((tmp_path / TRUTH_FILE).read_text())
    assert truth["seed"] == 0 and truth["config"]["world"]["n_members"] == 400
    assert truth["policy_values"] == summary["policy_values"]
    world = World.load(tmp_path / WORLD_FILE)
    ctx, cand = contexts_from_impressions(impressions), candidates_from_impressions(impressions)[0]
    dist = padded_list_column(impressions, "action_dist", 0.0, np.float64)[0]
    assert world.policy_value(ctx, cand, dist) == pytest.approx(
        truth["policy_values"]["all"]["logging"], rel=1e-6
    )
    report = validate_dataset(tmp_path)
    assert sum(f.rows_kept for f in report.files if f.kind == "impressions") == 5000
    # an existing dataset is not silently replaced
    with pytest.raises(FileExistsError, match="overwrite=true"):
        simulate_cli.run(cfg)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("world.n_memberz=5", ConfigCompositionException),
        ("world=tinyy", ConfigCompositionException),
        ("n_impressions=many", ConfigCompositionException),
        ("logging_policy.temprature=2", ConfigCompositionException),
    ],
)
def test_config_typo_fails_at_compose_time(override, error):
    with pytest.raises(error), initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        compose("simulate", overrides=[override])


def test_invalid_values_are_named():
    with pytest.raises(ValueError, match="logging_policy.name must be one of"):
        build(compose_config("logging_policy.name=greedy"))
    with pytest.raises(ValueError, match=f"images_max <= {MAX_CANDIDATES}"):
        build(compose_config(f"world.images_max={MAX_CANDIDATES + 1}"))
    with pytest.raises((ConfigKeyError, ValidationError)):
        OmegaConf.merge(OmegaConf.structured(SimulateConfig), {"world": {"n_memberz": 1}})
