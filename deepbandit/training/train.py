"""``train(cfg) -> dict``: validate the logs, split them in time, fit, write ``model.pt`` and ``metrics.json``.

When the dataset is simulated (``world.npz`` beside it), the metrics also hold the *true* value of the
trained greedy policy on the validation rows next to random, the unpersonalised bandit learned from the same
training rows, the best unpersonalised image and the oracle, overall and by
``prior_interaction``, and on the rows with at least two images never shown in the training window
("cold start": the model's pick among the new images against a uniform pick).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import sys
import time
import warnings
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from omegaconf import DictConfig, OmegaConf

from deepbandit.data.schema import WORLD_FILE
from deepbandit.data.tensors import ImpressionBatch, tune_allocator
from deepbandit.data.validation import gate_dataset
from deepbandit.errors import ConfigError, DataError
from deepbandit.evaluation.baselines import drop_open_rewards, fit_take_rates, logged_rows
from deepbandit.evaluation.epoch_metrics import ValidationMetrics
from deepbandit.evaluation.ground_truth import true_values
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import ImageEmbeddingLookup, ModelConfig, model_inputs
from deepbandit.models.uncertainty import build_scorer, capabilities
from deepbandit.sim.world import World
from deepbandit.training.callbacks import EpochLines, FiniteLossCheck, StreamEpoch, TrueValueMonitor
from deepbandit.training.config import TrainConfig, TrainerConfig, check_choices, typed_config
from deepbandit.training.datamodule import BanditDataModule
from deepbandit.training.fit import TrainingStep, fit_conjugate_posterior, make_optimizer
from deepbandit.training.module import BanditModule

log = logging.getLogger(__name__)


def model_config(cfg: TrainConfig, dm: BanditDataModule) -> ModelConfig:
    return cfg.model.model_config(
        dm.vocabs, dm.title_genres.shape[1], dm.image_table.dim, dm.member_features_dim
    )


def build_module(
    cfg: TrainConfig, model_cfg: ModelConfig, image_embedding: torch.Tensor, title_genres: torch.Tensor
) -> BanditModule:
    """The network of ``model``/``uncertainty``, its training step (``loss``), AdamW (``trainer``) and the
    validation metrics of greedy and ``policy``, handed to the LightningModule."""
    offers = capabilities(cfg.uncertainty)
    model = build_scorer(model_cfg, cfg.uncertainty, title_genres)
    lookup = ImageEmbeddingLookup(image_embedding)
    step = TrainingStep(
        model,
        lookup,
        cfg.loss.objective(),
        transform=cfg.loss.transform,
        threshold=cfg.loss.threshold,
        bootstrap_seed=cfg.uncertainty.bootstrap_seed if offers.bootstrap_members else None,
    )
    exploration = None
    if cfg.policy.name != "thompson" or offers.posterior_in_training:
        exploration = cfg.policy.build(offers.thompson_kind)
    t = cfg.trainer
    metrics = ValidationMetrics(exploration, None if t.val_interval == "none" else t.val_interval, t.seed)
    n_draws = cfg.policy.n_samples if cfg.policy.n_samples is not None else offers.posterior_draws
    return BanditModule(
        model,
        lookup,
        step,
        lambda m: make_optimizer(m, t),
        metrics,
        posterior_draws=n_draws,
        compile=t.compile,
        seed=t.seed,
        log_every=(t.log_every_n_steps, t.progress_every_n_steps),
    )


# trainer.logger -> the Lightning logger of a run (its package is imported when built)
LOGGERS = {
    "none": lambda cfg, out_dir: False,
    "csv": lambda cfg, out_dir: L.pytorch.loggers.CSVLogger(out_dir, name="logs"),
    "tensorboard": lambda cfg, out_dir: L.pytorch.loggers.TensorBoardLogger(out_dir, name="logs"),
    "mlflow": lambda cfg, out_dir: L.pytorch.loggers.MLFlowLogger(
        experiment_name=cfg.name, save_dir=str(out_dir / "mlruns")
    ),
}


def _logger(cfg: TrainConfig, out_dir: Path):
    kind = cfg.trainer.logger
    if kind not in LOGGERS:
        raise ConfigError(f"trainer.logger must be one of {', '.join(LOGGERS)}; got {kind!r}")
    try:
        return LOGGERS[kind](cfg, out_dir)
    except ModuleNotFoundError as e:
        raise ConfigError(f"trainer.logger={kind} needs its package: pip install 'deepbandit[{kind}]'") from e


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Each of Lightning's lines once, and none that is not about this run.

    Lightning gives its loggers handlers of their own when it is imported; where the root logger already
    prints (Hydra's console handler), every line would appear twice. Its advert for a cloud logger, its
    own deprecation notices and the note that a short epoch logs less often than log_every_n_steps say
    nothing about the run."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # BanditModule moves its own batches (Lightning's generic walk deep-copies them), on purpose
    warnings.filterwarnings(
        "ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*"
    )


def build_trainer(cfg: TrainConfig, out_dir: Path, logger, callbacks: list | None = None) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer``, with ``logger`` as ``_logger`` built it."""
    t = cfg.trainer
    # Validation metrics are computed by every rank over the whole validation split, so they are already
    # identical everywhere; Lightning's advice to reduce them across ranks does not apply.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*", module="lightning")
    best = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out_dir / "checkpoints", monitor=t.monitor, mode="max", save_top_k=1, filename="best-{epoch}"
    )
    # Lightning's save_last only copies when a top-k checkpoint is written; resuming needs every epoch's
    last = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        monitor=None,
        save_top_k=1,
        filename="last",
        enable_version_counter=False,
    )
    # A progress bar on a terminal; elsewhere (a pipe, a CI log, a notebook's captured output) a line per epoch.
    bar = t.progress and sys.stderr.isatty()
    progress = [L.pytorch.callbacks.TQDMProgressBar(refresh_rate=t.progress_every_n_steps)] if bar else []
    if t.progress and not bar:
        progress = [EpochLines(t.monitor)]
    _quiet_lightning()
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val,
        logger=logger,
        callbacks=[
            best,
            last,
            FiniteLossCheck(t.finite_check_every_n_steps),
            StreamEpoch(),
            *progress,
            *(callbacks or []),
        ],
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        default_root_dir=out_dir,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # our loaders shard themselves (same global batches on any world size)
    )


@torch.no_grad()
def point_logits(module: BanditModule, batch: ImpressionBatch, chunk: int = 16_384) -> np.ndarray:
    """(B, A) float32 point logits of the trained model on a CPU batch, in eval mode."""
    model = module.model.eval().cpu()
    module.lookup.cpu()
    out = [
        model(model_inputs(batch[slice(s, s + chunk)], module.lookup)) for s in range(0, len(batch), chunk)
    ]
    return torch.cat(out).float().numpy()


def _package_version() -> str:
    try:
        return version("deepbandit")
    except PackageNotFoundError:
        return "unknown"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, float | np.floating):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ckpt_path values that Lightning resolves itself, inside the run's own checkpoint folder
_LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def check_ckpt_path(trainer: TrainerConfig) -> None:
    """A resume checkpoint must be a local file, or a URL with ``allow_remote_ckpt``; either way it is
    loaded weights-only (tensors and plain containers), so a crafted checkpoint cannot run code."""
    path = trainer.ckpt_path
    if path is None or path in _LIGHTNING_CKPT_KEYWORDS:
        return
    if "://" in path:
        if not trainer.allow_remote_ckpt:
            raise ConfigError(
                f"trainer.ckpt_path={path!r} is a URL; download it and pass the local file, or set "
                "trainer.allow_remote_ckpt=true to let Lightning fetch it"
            )
        return
    if not Path(path).is_file():
        raise ConfigError(
            f"trainer.ckpt_path={path!r}: no such file (a Lightning checkpoint, e.g. <run>/checkpoints/last.ckpt)"
        )
    try:  # read here, weights-only, so that a crafted or foreign file is refused in one line before training
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message advises weights_only=False, which is not for a file we did not write
        if "Unsupported global" not in str(e):  # not a pickle of objects: garbage or another format
            raise DataError(f"trainer.ckpt_path={path!r}: refused: not a PyTorch checkpoint file") from e
        raise DataError(
            f"trainer.ckpt_path={path!r}: refused: it holds objects other than tensors and plain containers, "
            "and unpickling those could run code; resume only from checkpoints deepbandit train wrote"
        ) from e
    except Exception as e:  # noqa: BLE001 - RuntimeError, EOFError, zip errors...: not a checkpoint at all
        raise DataError(
            f"trainer.ckpt_path={path!r}: refused: not a PyTorch checkpoint file ({type(e).__name__})"
        ) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"trainer.ckpt_path={path!r}: not a Lightning checkpoint (no state_dict)")


def train(
    cfg: DictConfig | TrainConfig, out_dir: str | Path | None = None, callbacks: list | None = None
) -> dict:
    """Train on ``cfg.data.path`` and write ``<out_dir>/model.pt`` and ``metrics.json``; return the metrics.

    Raises ValueError on choices of policy, uncertainty and model that cannot work (``check_choices``),
    ValidationError (file, column, row) on invalid logs, TrainingDataError on logs that cannot train
    (every reward 0, propensity 1 everywhere, an empty split), NonFiniteLossError on a NaN/inf loss.
    """
    cfg = typed_config(cfg)
    for warning in check_choices(cfg):
        log.warning(warning)
    if unused := cfg.loss.objective().unused_options():
        log.warning(
            "loss.%s has no effect: loss=%s weights nothing by the propensities unless "
            "loss.importance_weight_reward=true (or a policy objective: loss=ips|snips|dr)",
            ", loss.".join(unused),
            cfg.loss.name,
        )
    check_ckpt_path(cfg.trainer)
    out = Path(out_dir or cfg.out_dir or "outputs/train")
    out.mkdir(parents=True, exist_ok=True)
    logger = _logger(cfg, out)  # now, so that a logger whose package is missing fails before the data loads
    root = Path(cfg.data.path)
    started = time.perf_counter()
    gate_dataset(root, validate=cfg.data.validate)  # what `deepbandit validate` accepts, and only that
    if cfg.trainer.tune_allocator:
        # every step allocates and frees the same large activations; glibc would hand them back to the OS
        # and fault fresh pages in on the next step (measured: 21k -> 25k impressions per CPU-second)
        tune_allocator()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm = BanditDataModule(cfg.data, cfg.trainer.batch_size, seed=cfg.trainer.seed)
    dm.prepare()
    model_cfg = model_config(cfg, dm)
    torch.manual_seed(cfg.trainer.seed)  # weights depend on the seed only, not on what ran before
    module = build_module(cfg, model_cfg, dm.image_table.embedding, dm.title_genres)
    callbacks = list(callbacks or [])
    world_path = root / WORLD_FILE
    world = World.load(world_path) if world_path.exists() else None
    train_images = pc.unique(pc.list_flatten(dm.train_table.column("candidate_image_ids"))).to_numpy()
    monitor = None
    if world is not None:
        train_rates = fit_take_rates(logged_rows(drop_open_rewards(dm.train_table)[0], "training rows"))
        monitor = TrueValueMonitor(
            lambda logits: true_values(world, dm.val_table, logits, train_images, train_rates),
            dm.batch_of(dm.val_table),
            model_inputs,
        )
        callbacks.append(monitor)
    trainer = build_trainer(cfg, out, logger, callbacks)
    fit_start = time.perf_counter()
    # weights_only: a checkpoint holds tensors and plain containers; unpickling anything else could run code
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.trainer.ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - fit_start
    if trainer.global_rank != 0:
        return {}

    checkpoint = trainer.checkpoint_callback
    if checkpoint.best_model_path:  # the bundle holds the best weights by the monitored policy value
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    posterior_rows = None
    if capabilities(cfg.uncertainty).conjugate_last_layer:
        # neural-linear: the Bayesian last layer is fitted on the training split at the kept weights'
        # features; it is saved with them, and export serves Thompson sampling from it
        posterior_rows = fit_conjugate_posterior(module.step, dm.batch_of(dm.train_table))
    metrics: dict = {
        "val": dict(module.val_metrics),  # the last epoch's
        "val_history": module.val_history,
        "monitor": cfg.trainer.monitor,
        "best_checkpoint": checkpoint.best_model_path or None,
        "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "rows": {"train": dm.train_table.num_rows, "val": dm.val_table.num_rows},
        "split_at": dm.split_iso,
        "posterior_rows": posterior_rows,
        "train_impressions_per_s": dm.train_table.num_rows * trainer.current_epoch / max(fit_seconds, 1e-9),
    }
    if world is not None:
        logits = point_logits(module, dm.batch_of(dm.val_table))
        metrics["true"] = true_values(world, dm.val_table, logits, train_images, train_rates)
        metrics["true_history"] = monitor.history  # per validation, for the weights of that epoch
    metrics["seconds"] = time.perf_counter() - started
    metrics = _jsonable(metrics)
    ts = dm.train_table.column("timestamp")
    bundle = ModelBundle.from_model(
        module.model, model_cfg, cfg.uncertainty, dm.vocabs, dm.image_table.embedding, dm.title_genres,
        meta={
            "train_window": [pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat()],
            "split_at": dm.split_iso,
            "metrics": metrics,
            "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
            "policy": asdict(cfg.policy),
            "version": _package_version(),
        },
    )  # fmt: skip
    bundle.save(out / "model.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("trained %d steps in %.1f s -> %s", trainer.global_step, fit_seconds, out)
    return metrics
