"""Training end to end on tiny simulated worlds with known truth (fixed seeds, CPU)."""

from __future__ import annotations

import json
import shutil

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from deepbandit.cli import sweep_report
from deepbandit.data.features import REQUIRED_INPUTS, ModelInputs
from deepbandit.data.layout import DATASET_RECORD_FILE
from deepbandit.data.tensors import ImpressionBatch
from deepbandit.errors import ConfigError
from deepbandit.models.bundle import ModelBundle
from deepbandit.sim.simulator import simulate
from deepbandit.training.callbacks import NonFiniteLossError
from deepbandit.training.config import DataConfig, ModelGroupConfig, TrainConfig, TrainerConfig
from deepbandit.training.datamodule import ResidentLoader, TrainingDataError
from deepbandit.training.train import train


def _simulate(out, policy: str, n: int, seed: int = 0, world: str = "tiny"):
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        c = compose(
            "simulate",
            overrides=[f"world={world}", f"logging_policy={policy}", f"n_impressions={n}", f"out_dir={out}",
                       "progress=false", f"seed={seed}"],
        )  # fmt: skip
    simulate(OmegaConf.to_object(c))
    return out


def _cfg(path, model: ModelGroupConfig | None = None, **trainer) -> TrainConfig:
    t = {"max_epochs": 2, "batch_size": 512, "lr": 3e-3, "progress": False, "logger": "none"} | trainer
    model = model or ModelGroupConfig(hidden=32, tower_dim=16, head_dim=32, id_dim=8)
    return TrainConfig(data=DataConfig(path=str(path)), model=model, trainer=TrainerConfig(**t))


def _train_on_learnable_world(tmp_path_factory, logging_policy: str):
    """conf/world/learnable.yaml: artwork matters and viewing histories reveal taste (see its comments)."""
    data = _simulate(tmp_path_factory.mktemp(logging_policy), logging_policy, 100_000, world="learnable")
    out = tmp_path_factory.mktemp("run")
    small = ModelGroupConfig(hidden=64, tower_dim=32, head_dim=64, id_dim=16)  # conf/model/small.yaml
    cfg = _cfg(data, small, max_epochs=6, batch_size=1024, lr=5e-3, weight_decay=1e-4)
    cfg.data.val_fraction = 0.3
    return out, train(cfg, out_dir=out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Trained on 70k uniformly logged rows, evaluated on the last 30k (about 25 s on 2 CPU cores)."""
    return _train_on_learnable_world(tmp_path_factory, "uniform")


@pytest.fixture(scope="module")
def trained_from_epsilon_greedy(tmp_path_factory):
    """The same world logged by epsilon-greedy around the truly best image (epsilon 0.2)."""
    return _train_on_learnable_world(tmp_path_factory, "epsilon_greedy")


def _gap(split: dict, policy: str, baseline: str) -> tuple[float, float]:
    """(true value of greedy minus a baseline, its paired standard error) on one split."""
    return split[policy] - split[baseline], split[f"{policy}_minus_{baseline}_se"]


def _gap_closed(split: dict, policy: str) -> float:
    """Share of the random -> oracle gap a policy closes (0: random, 1: oracle)."""
    return (split[policy] - split["random"]) / (split["oracle"] - split["random"])


RUNS = ["trained", "trained_from_epsilon_greedy"]


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_greedy_clearly_beats_the_unpersonalised_bandit_and_the_truly_best_image(run, request):
    s = request.getfixturevalue(run)[1]["true"]["all"]
    for baseline in ("unpersonalised_bandit", "best_unpersonalised"):
        gain, se = _gap(s, "greedy", baseline)
        assert gain > 3 * se, (baseline, gain, se, s)
    # towards the oracle: closes most of the random -> oracle gap, clearly more of it than the bandit
    closed = {p: _gap_closed(s, p) for p in ("greedy", "unpersonalised_bandit")}
    assert closed["greedy"] > 0.5 and closed["greedy"] > closed["unpersonalised_bandit"] + 0.1, closed


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_gain_is_larger_for_members_new_to_the_title(run, request):
    t = request.getfixturevalue(run)[1]["true"]
    for split in ("all", "prior_interaction_true", "prior_interaction_false"):
        assert t[split]["random"] < t[split]["greedy"] < t[split]["oracle"], (split, t[split])
    new, known = (_gap(t[s], "greedy", "unpersonalised_bandit") for s in ("prior_interaction_false",
                                                                          "prior_interaction_true"))  # fmt: skip
    # the two splits are disjoint rows, so their errors add in quadrature
    assert new[0] - known[0] > 2 * np.hypot(new[1], known[1]), (new, known)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_new_images_scored_through_embeddings_beat_random(run, request):
    cold = request.getfixturevalue(run)[1]["true"]["cold_start"]
    assert cold["rows"] >= 30, cold
    assert cold["model"] - cold["random"] > 2 * cold["model_minus_random_se"], cold


@pytest.mark.slow
def test_run_writes_bundle_and_metrics(trained):
    out, m = trained
    assert json.loads((out / "metrics.json").read_text())["global_step"] == m["global_step"]
    bundle = ModelBundle.load(out / "model.pt")
    assert bundle.meta["metrics"]["rows"] == m["rows"]
    assert bundle.build_model() is not None
    # validation reported off-policy values with intervals that contain the point estimate
    v = m["val"]
    assert v["val/snips_greedy_lower"] <= v["val/snips_greedy"] <= v["val/snips_greedy_upper"]
    assert m["best_score"] == pytest.approx(max(h["val/snips_greedy"] for h in m["val_history"]))


def test_resident_loader_same_global_batches_on_any_world_size():
    n = 103
    fields = {
        f: torch.arange(n) for f in ImpressionBatch.__dataclass_fields__ if f not in ("inputs", "action_dist")
    }
    inputs = ModelInputs(**{f: torch.arange(n) for f in REQUIRED_INPUTS})
    data = ImpressionBatch(inputs=inputs, **fields)
    one = [rows for _, rows in ResidentLoader(data, 10, shuffle=True, seed=3, epoch_fn=lambda: 1)]
    two = [
        [
            rows
            for _, rows in ResidentLoader(
                data, 10, shuffle=True, seed=3, epoch_fn=lambda: 1, rank=r, world_size=2
            )
        ]
        for r in (0, 1)
    ]
    for i, rows in enumerate(one):
        assert sorted(torch.cat([two[0][i], two[1][i]]).tolist()) == sorted(rows.tolist())
    other_epoch = [rows for _, rows in ResidentLoader(data, 10, shuffle=True, seed=3, epoch_fn=lambda: 2)]
    assert not torch.equal(torch.cat(one), torch.cat(other_epoch))
    assert sorted(torch.cat(one).tolist()) == list(range(n))
    # 101 rows in batches of 10 leave a last global batch of 1 row: one process takes it, two skip it
    short = data[torch.arange(101)]
    assert sum(len(r) for _, r in ResidentLoader(short, 10, shuffle=False)) == 101
    for r in (0, 1):
        parts = [rows for _, rows in ResidentLoader(short, 10, shuffle=False, rank=r, world_size=2)]
        assert len(parts) == 10 and all(len(rows) == 5 for rows in parts)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("small"), "epsilon_greedy", 6_000, seed=1)


def test_resume_continues_exactly(small_data, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(small_data, max_epochs=2, batch_size=512), out_dir=straight)
    first = tmp_path / "resumed"
    train(_cfg(small_data, max_epochs=1, batch_size=512), out_dir=first)
    m = train(
        _cfg(small_data, max_epochs=2, batch_size=512, ckpt_path=str(first / "checkpoints" / "last.ckpt")),
        out_dir=first,
    )
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == m["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])


def _rewrite(root, column: str, value):
    path = next((root / "impressions").glob("*.parquet"))
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(
        i, table.schema.field(i), pa.array(np.full(table.num_rows, value), table.schema.field(i).type)
    )
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    (root / DATASET_RECORD_FILE).unlink()  # the simulator's record of its files no longer holds


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("reward", 0.0, "nothing to learn: every logged reward is 0"),
        ("propensity", 1.0, "propensity is 1 on every row"),
    ],
)
def test_bad_data_stops_with_a_clear_message(small_data, tmp_path, column, value, message):
    root = tmp_path / "data"
    shutil.copytree(small_data, root)
    _rewrite(root, column, value)
    with pytest.raises(TrainingDataError, match=message):
        train(_cfg_no_validate(root), out_dir=tmp_path / "out")


def _cfg_no_validate(root) -> TrainConfig:
    cfg = _cfg(root, max_epochs=1)
    cfg.data.validate = False  # propensity 1 with action_dist != 1 would fail validation first
    return cfg


def test_invalid_logs_fail_validation_naming_the_column(small_data, tmp_path):
    from deepbandit.data.validation import ValidationError

    root = tmp_path / "data"
    shutil.copytree(small_data, root)
    _rewrite(root, "propensity", 1.5)
    with pytest.raises(ValidationError, match="propensity"):
        train(_cfg(root, max_epochs=1), out_dir=tmp_path / "out")


class _Diverge(L.Callback):
    """Corrupts one weight before the third step (batch 2), as a diverged optimiser would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("inf"))


@pytest.mark.parametrize(
    ("every_n_steps", "message"),
    [
        (1, "non-finite training loss (nan|inf) at epoch 0, global step 3, batch 2;"),
        (4, "a non-finite training loss in the 4 steps up to epoch 0, global step 4, batch 3;"),
        (
            10_000,
            r"a non-finite training loss in the \d+ steps up to epoch 0, global step \d+;",
        ),  # before validation
    ],
)
def test_non_finite_loss_stops_the_run_before_any_checkpoint(small_data, tmp_path, every_n_steps, message):
    cfg = _cfg(small_data, max_epochs=2, finite_check_every_n_steps=every_n_steps)
    with pytest.raises(NonFiniteLossError, match=message):
        train(cfg, out_dir=tmp_path, callbacks=[_Diverge()])
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_typo_fails_at_compose_time_and_sweep_example_composes():

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data.path=x", "model.hidden=64", "loss.clip=10"])
        assert cfg.model.hidden == 64 and cfg.loss.clip == 10
        with pytest.raises(Exception, match="hiden"):
            compose("train", overrides=["data.path=x", "model.hiden=64"])
        with pytest.raises(Exception, match="max_epochs"):
            compose("train", overrides=["data.path=x", "trainer.max_epochs=many"])


def test_sweep_report_ranks_runs(tmp_path):
    for i, (value, lo, hi) in enumerate([(0.1, 0.08, 0.12), (0.3, 0.25, 0.35), (0.2, 0.1, 0.3)]):
        run = tmp_path / str(i)
        run.mkdir()
        hist = [{"val/snips_greedy": value, "val/snips_greedy_lower": lo, "val/snips_greedy_upper": hi}]
        (run / "metrics.json").write_text(
            json.dumps({"monitor": "val/snips_greedy", "val": hist[0], "val_history": hist})
        )
    rows = sweep_report.run(tmp_path)
    assert [r["run"] for r in rows] == ["1", "2", "0"]
    assert rows[0]["lower"] == 0.25
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        sweep_report.run(tmp_path / "empty")


def test_seeded_runs_are_reproducible_on_cpu_and_log_to_csv(small_data, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        train(_cfg(small_data, max_epochs=1, logger="csv", log_every_n_steps=1), out_dir=out)
    a, b = (torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for out in runs)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = train(_cfg(small_data, max_epochs=1, seed=1), out_dir=tmp_path / "c")
    c = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert other["global_step"] > 0 and not all(torch.equal(a[k], c[k]) for k in a)
    # the CSV logger wrote the training loss and the validation policy values
    csv = next((tmp_path / "a" / "logs").rglob("metrics.csv")).read_text()
    assert "val/snips_greedy" in csv and "train/" in csv


def _gpu_trainer_config(data, accelerator: str) -> TrainConfig:
    """conf/trainer/gpu.yaml (bf16 autocast, compiled loss step, rare host reads), sized for tiny data."""
    from deepbandit.training.config import typed_config

    overrides = [f"data.path={data}", "trainer=gpu", f"trainer.accelerator={accelerator}", "trainer.batch_size=512",
                 "trainer.max_epochs=1", "trainer.logger=none", "trainer.progress=false", "model=small", "out_dir=null"]  # fmt: skip
    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = typed_config(compose("train", overrides=overrides))
    assert (
        cfg.trainer.precision == "bf16-mixed"
        and cfg.trainer.compile
        and cfg.trainer.finite_check_every_n_steps > 1
    )
    return cfg


@pytest.mark.slow
def test_gpu_trainer_config_code_paths_run_on_cpu(small_data, tmp_path):
    """The GPU config's paths (bf16 autocast, torch.compile, flag read every 50 steps) on the CPU, so a
    break in them shows up without a GPU."""
    m = train(_gpu_trainer_config(small_data, "cpu"), out_dir=tmp_path)
    assert m["global_step"] == -(-m["rows"]["train"] // 512)
    assert np.isfinite(m["val"]["val/logloss"]) and 0 < m["val"]["val/snips_greedy"] < 1, m["val"]
    bundle = ModelBundle.load(tmp_path / "model.pt")
    assert all(torch.isfinite(p).all() for p in bundle.build_model().parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_trainer_config_on_a_gpu_matches_fp32_on_cpu(small_data, tmp_path):
    """trainer=gpu on a real GPU (resident device tensors, bf16, compiled step) learns what fp32 on the CPU
    learns from the same rows and seed: the same steps, and a validation log loss within 0.02."""
    gpu = train(_gpu_trainer_config(small_data, "gpu"), out_dir=tmp_path / "gpu")
    cpu_cfg = _gpu_trainer_config(small_data, "cpu")
    cpu_cfg.trainer.precision, cpu_cfg.trainer.compile = "32-true", False
    cpu = train(cpu_cfg, out_dir=tmp_path / "cpu")
    assert gpu["global_step"] == cpu["global_step"] > 0
    assert abs(gpu["val"]["val/logloss"] - cpu["val"]["val/logloss"]) < 0.02, (gpu["val"], cpu["val"])


@pytest.mark.parametrize(
    ("policy", "uncertainty", "message"),
    [
        ("thompson", {"kind": "none"}, "policy=thompson needs a posterior.*got uncertainty=none"),
        ("greedy", {"kind": "mc_dropout"}, "uncertainty=mc_dropout needs dropout"),
        ("thompson", {"kind": "ensemble", "n_members": 1}, "n_members >= 2, got 1"),
    ],
)
def test_choices_that_cannot_work_are_refused_before_any_data_is_read(tmp_path, policy, uncertainty, message):
    cfg = _cfg(tmp_path / "no-such-dataset")
    cfg.policy.name = policy
    for key, value in uncertainty.items():
        setattr(cfg.uncertainty, key, value)
    with pytest.raises(ValueError, match=message):
        train(cfg, out_dir=tmp_path / "out")


def test_neural_linear_thompson_trains_fits_its_posterior_and_exports(small_data, tmp_path):
    """uncertainty=neural_linear policy=thompson: after training, the Bayesian last layer is fitted on the
    training split, saved in the bundle and served by export (Monte Carlo propensities)."""
    from deepbandit.export.onnx_export import export_bundle
    from deepbandit.models.bundle import ModelBundle

    cfg = _cfg(small_data, max_epochs=1, batch_size=512)
    cfg.policy.name, cfg.uncertainty.kind = "thompson", "neural_linear"
    metrics = train(cfg, out_dir=tmp_path / "nl")
    assert metrics["posterior_rows"] == metrics["rows"]["train"] > 0
    bundle = ModelBundle.load(tmp_path / "nl" / "model.pt")
    assert bundle.build_model().blr.n_seen.item() == metrics["rows"]["train"]
    result = export_bundle(bundle, tmp_path / "export", parity_batch_sizes=(4,), parity_candidates=(3,))
    assert result.manifest["policy"]["name"] == "thompson" and result.manifest["posterior_noise"]


def test_default_training_config_exports_an_exploring_policy():
    """The defaults compose end to end: a default run's policy is one export can serve, and it explores
    (propensities below 1 keep the next round's off-policy training possible)."""
    from deepbandit.export.onnx_export import serving_policy
    from deepbandit.models.uncertainty import UncertaintyConfig
    from deepbandit.training.config import check_choices, typed_config

    with initialize_config_module(config_module="deepbandit.conf", version_base="1.3"):
        cfg = typed_config(compose("train", overrides=["data.path=x", "out_dir=null"]))
    assert check_choices(cfg) == [] and cfg.policy.name == "epsilon_greedy" and cfg.policy.epsilon > 0

    class _Bundle:  # what serving_policy reads of a bundle
        meta = {"policy": {"name": cfg.policy.name, "epsilon": cfg.policy.epsilon}}
        uncertainty_cfg = UncertaintyConfig(kind=cfg.uncertainty.kind)

    assert serving_policy(_Bundle()) == {"name": "epsilon_greedy", "epsilon": cfg.policy.epsilon}


@pytest.mark.parametrize(
    ("logger", "modules"), [("tensorboard", ("tensorboard", "tensorboardX")), ("mlflow", ("mlflow",))]
)
def test_a_logger_whose_package_is_missing_fails_before_the_data_is_read(tmp_path, logger, modules):
    import importlib.util

    if any(importlib.util.find_spec(m) for m in modules):
        pytest.skip(f"{logger} is installed here")
    cfg = _cfg(tmp_path / "no-such-dataset", logger=logger)
    with pytest.raises(ConfigError, match=rf"trainer.logger={logger} needs .*deepbandit\[{logger}\]"):
        train(cfg, out_dir=tmp_path / "out")


def test_training_metrics_are_logged_at_the_loggers_steps_and_each_epochs_last(small_data, tmp_path):
    """self.log costs Lightning host work per call, so the module logs only when the logger writes
    (multiples of log_every_n_steps) and at each epoch's last step, where the epoch line reads the loss."""
    import csv

    cfg = _cfg(small_data, max_epochs=2, batch_size=256, logger="csv", log_every_n_steps=3,
               progress_every_n_steps=1000)  # fmt: skip
    metrics = train(cfg, out_dir=tmp_path)
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    logged = [int(r["step"]) for r in rows if r.get("train/loss")]
    steps = metrics["global_step"]
    assert steps >= 6 and logged == [s for s in range(steps) if (s + 1) % 3 == 0]
