"""Typed training config: the ``train_schema`` dataclass tree (registered by ``deepbandit.cli.schemas``).

Groups (``conf/<group>/*.yaml``): data, model, uncertainty, loss, policy, trainer, experiment,
hparams_search. A misspelt key or a wrong type fails when the config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deepbandit.errors import ConfigError
from deepbandit.losses.objectives import ObjectiveConfig
from deepbandit.models.encoders import POOLINGS, ModelConfig
from deepbandit.models.uncertainty import CAPABILITIES, UncertaintyConfig, capabilities, check_uncertainty
from deepbandit.policies.config import PolicyConfig
from deepbandit.training.fit import OptimConfig


@dataclass
class DataConfig:
    """Where the logs are and how they are split in time.

    path: a dataset root in the contract layout (impressions/, images.parquet, titles.parquet, and for
    simulated data world.npz). Validation rows are the last ``val_fraction`` of the time range, or every row
    at or after ``split_at`` (ISO date/time, UTC) when given. ``resident``: hold each split as tensors on the
    training device and draw batches there (true), stream Parquet record batches (false), or decide by
    ``resident_max_rows`` (null).
    """

    path: str = "???"
    val_fraction: float = 0.2
    split_at: str | None = None
    max_history: int = 64  # most recent played titles the model reads per impression
    resident: bool | None = None
    resident_max_rows: int = 20_000_000  # row limit for resident=null to hold a split on the device
    stream_batch_rows: int = 65_536  # Parquet rows read and converted at once on the streaming path
    num_workers: int = 0  # streaming loader workers
    validate: bool = True  # validate as `deepbandit validate` does first (false: logs validated before)


@dataclass
class ModelGroupConfig:
    """``ModelConfig`` without the vocabulary sizes (filled from the fitted vocabularies at run time).

    ``hidden`` is ModelConfig.hidden_dim (short so that ``model.hidden=64,256`` sweeps read naturally).
    """

    hidden: int = 128  # width of the hidden layer of each tower (ModelConfig.hidden_dim)
    tower_dim: int = 64  # width d of the member and image representations
    head_dim: int = 128  # width of the interaction head's last hidden layer (neural-linear features)
    id_dim: int = 32  # width of the learned embeddings: titles, countries, languages, devices, genres
    dropout: float = 0.0  # dropout on each tower's hidden layer, in [0, 1)
    last_layer_dropout: float = 0.0  # dropout on the head's last hidden layer, in [0, 1)
    pooling: str = "mean"  # pooling of the viewing history: mean | attention
    image_id_hash_buckets: int = 0  # hash buckets of a learned image-id embedding; 0 = none (content only)
    # buckets of a learned member-id embedding (member_id modulo buckets); 0 = none (context only)
    member_id_hash_buckets: int = 0

    def model_config(
        self, vocabs, n_genres: int, embedding_dim: int, member_features_dim: int
    ) -> ModelConfig:
        """The scorer's ModelConfig: these widths and the vocabulary sizes of ``vocabs`` (FeatureVocabs)."""
        return ModelConfig(
            n_titles=len(vocabs.title) - 2,
            n_countries=len(vocabs.country) - 2,
            n_languages=len(vocabs.language) - 2,
            n_devices=len(vocabs.device) - 2,
            n_images=len(vocabs.image) - 2,
            n_genres=n_genres,
            embedding_dim=embedding_dim,
            member_features_dim=member_features_dim,
            id_dim=self.id_dim,
            tower_dim=self.tower_dim,
            hidden_dim=self.hidden,
            head_dim=self.head_dim,
            dropout=self.dropout,
            last_layer_dropout=self.last_layer_dropout,
            pooling=self.pooling,
            image_id_hash_buckets=self.image_id_hash_buckets,
            member_id_hash_buckets=self.member_id_hash_buckets,
        )


@dataclass
class LossConfig(ObjectiveConfig):
    """ObjectiveConfig (``name``, ``clip``, ...) plus the label transform of ``reward_targets``."""

    transform: str = "identity"  # reward -> training label: identity | threshold | graded
    threshold: float = 0.5  # transform=threshold: label 1 where reward >= threshold, else 0

    def objective(self) -> ObjectiveConfig:
        return ObjectiveConfig(**{f.name: getattr(self, f.name) for f in fields(ObjectiveConfig)})


@dataclass
class TrainerConfig(OptimConfig):
    """The Lightning run; the optimiser's fields (batch_size, lr, weight_decay, gradient_clip_val) come from
    ``OptimConfig`` (``deepbandit.training.fit``), which the closed loop's deep agents share."""

    max_epochs: int = 5  # passes over the training split
    precision: str = "32-true"  # "bf16-mixed" on GPUs
    accelerator: str = "auto"  # Lightning accelerator: auto | cpu | gpu | cuda | mps | tpu
    devices: int | str = 1  # devices per node: a count, -1 = all, "auto", or a list such as "0,1"
    num_nodes: int = 1  # machines in a distributed run
    strategy: str = "auto"  # "ddp" for several processes
    compile: bool = False  # torch.compile the training step (forward and loss)
    seed: int = 0  # seeds the initial weights, the batch order and the validation draws
    logger: str = "csv"  # csv | tensorboard | mlflow | none
    monitor: str = "val/snips_greedy"  # metric whose maximum ModelCheckpoint keeps
    ckpt_path: str | None = None  # resume from this Lightning checkpoint (loaded weights-only)
    allow_remote_ckpt: bool = False  # let ckpt_path be a URL (http://, s3://, ...) rather than a local file
    progress: bool = True  # show the progress bar
    progress_every_n_steps: int = 10  # progress bar refresh (each refresh reads the loss: a host sync)
    log_every_n_steps: int = 50  # training steps between logged training metrics
    finite_check_every_n_steps: int = 1  # how often the host reads the non-finite-loss flag (FiniteLossCheck)
    deterministic: bool = False  # use only deterministic torch algorithms (slower; Lightning's flag)
    tune_allocator: bool = True  # glibc malloc reuses freed memory (CPU steps ~20% faster; RSS stays at peak)
    val_interval: str = "normal"  # interval on the validation estimates: normal | bootstrap | none


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelGroupConfig = field(default_factory=ModelGroupConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    name: str = "train"  # experiment name (logger run name)
    out_dir: str | None = None  # run directory; the CLI uses Hydra's


# Lightning's precision names that a CPU or CUDA run takes (transformer-engine ones need that package)
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "64")


def parse_split_at(split_at: str) -> int:
    """``data.split_at`` (an ISO date or time, UTC; a trailing Z allowed) as UTC microseconds."""
    try:
        return int(np.datetime64(split_at.replace("Z", ""), "us").astype(np.int64))
    except ValueError as err:
        raise ConfigError(f"data.split_at={split_at!r} is not an ISO date or time (UTC): {err}") from err


def _check_ranges(cfg: TrainConfig) -> None:
    """Values that Lightning or the data module would refuse only after the logs are read (or, for
    ``max_epochs=-1``, would accept as "train forever")."""
    t, d = cfg.trainer, cfg.data
    for name, value in (("trainer.max_epochs", t.max_epochs), ("trainer.batch_size", t.batch_size),
                        ("trainer.num_nodes", t.num_nodes), ("data.max_history", d.max_history),
                        ("trainer.progress_every_n_steps", t.progress_every_n_steps),
                        ("trainer.log_every_n_steps", t.log_every_n_steps),
                        ("trainer.finite_check_every_n_steps", t.finite_check_every_n_steps)):  # fmt: skip
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not t.lr > 0:
        raise ConfigError(f"trainer.lr must be > 0, got {t.lr}")
    if t.weight_decay < 0:
        raise ConfigError(f"trainer.weight_decay must be >= 0, got {t.weight_decay}")
    indices = isinstance(t.devices, str) and all(p.strip().isdigit() for p in t.devices.split(","))
    if isinstance(t.devices, str) and t.devices not in ("auto", "-1") and not indices:
        raise ConfigError(
            f"trainer.devices must be a number of devices, indices like '0,1', -1 or auto; got {t.devices!r}"
        )
    if isinstance(t.devices, int) and t.devices == 0:
        raise ConfigError("trainer.devices must not be 0 (a number of devices, -1 for all, or auto)")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {t.precision!r}")
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={t.accelerator} but torch sees no CUDA device here; use trainer=cpu "
            "(or trainer.accelerator=auto)"
        )
    if cfg.model.pooling not in POOLINGS:
        raise ConfigError(f"model.pooling must be one of {', '.join(POOLINGS)}; got {cfg.model.pooling!r}")
    if d.split_at is not None:
        parse_split_at(d.split_at)
    elif not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")


def check_choices(cfg: TrainConfig) -> list[str]:
    """Refuse choices of policy, uncertainty and model that cannot work, before any data is read (the
    scorer would only refuse them after the logs are loaded); return warnings for the ones that work in
    training but not in serving.

    Thompson sampling draws from ``uncertainty``'s posterior: without one (``none``) it would silently be
    greedy, which logs propensity 1 and leaves the next round of training nothing to learn from. MC dropout
    needs dropout somewhere; an ensemble needs two members. Export serves Thompson from ensembles and
    neural-linear models; MC-dropout Thompson is reported in validation but must be exported as another
    policy, and neural-linear's last layer is fitted on the training split after training, so validation
    reports only greedy for it.
    """
    _check_ranges(cfg)
    check_uncertainty(cfg.uncertainty, cfg.model.dropout, cfg.model.last_layer_dropout)
    if cfg.policy.name != "thompson":
        return []
    offers, kind = capabilities(cfg.uncertainty), cfg.uncertainty.kind
    if offers.posterior == "none":
        with_posterior = [
            k for k, offer in CAPABILITIES.items() if offer(cfg.uncertainty).posterior != "none"
        ]
        raise ConfigError(
            f"policy=thompson needs a posterior to sample from: uncertainty={' or '.join(with_posterior)}, got "
            f"uncertainty={kind}. For a single model choose policy=epsilon_greedy (the default), softmax or greedy."
        )
    if not offers.exported_posterior:
        return [
            f"policy=thompson with uncertainty={kind}: validation reports it, but export serves Thompson "
            "from ensembles and neural-linear models only; export this model with policy=epsilon_greedy, "
            "softmax or greedy"
        ]
    if not offers.posterior_in_training:
        return [
            f"policy=thompson with uncertainty={kind}: its posterior is fitted on the training split after "
            "training, so validation reports greedy only; export serves Thompson sampling from it"
        ]
    return []


def typed_config(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """A TrainConfig from a composed DictConfig (validated through the schema) or as is."""
    if isinstance(cfg, TrainConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
