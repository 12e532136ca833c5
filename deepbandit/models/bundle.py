"""The trained-model bundle: everything needed to score impressions again, in one file.

Training writes it (`<run_dir>/model.pt`); evaluation, export and the closed loop read it. It holds the
plain network's configs and weights, the vocabularies that map raw ids to embedding rows, the image
embedding table of the images known at training time, the title-genre matrix, and free-form metadata
(training data window, validation metrics, policy config, package version). It holds no Lightning state:
resuming training uses Lightning's own checkpoint, this file is for inference.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepbandit.atomic import atomic_file
from deepbandit.data.vocab import FeatureVocabs
from deepbandit.errors import ConfigError
from deepbandit.models.encoders import ModelConfig
from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer

BUNDLE_FORMAT = 1


@dataclass
class ModelBundle:
    """A trained scorer and what it needs to turn raw logged values into inputs.

    Fields:
        model_cfg, uncertainty_cfg: the network's configs (``build_scorer`` rebuilds it from them).
        state_dict: the network's weights (CPU tensors).
        vocabs: id/category vocabularies fitted on the training data.
        image_embedding: float32 (n_images + 2, D), rows aligned with ``vocabs.image`` (rows 0/1 zero).
        title_genres: float32 (n_titles + 2, G) normalised multi-hot genres, aligned with ``vocabs.title``.
        meta: JSON-serialisable metadata (train window, metrics, policy config, version, ...).
    """

    model_cfg: ModelConfig
    uncertainty_cfg: UncertaintyConfig
    state_dict: dict[str, torch.Tensor]
    vocabs: FeatureVocabs
    image_embedding: torch.Tensor
    title_genres: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """The plain network with the bundle's weights, in eval mode, on CPU."""
        model = build_scorer(self.model_cfg, self.uncertainty_cfg, self.title_genres)
        model.load_state_dict(self.state_dict)
        return model.eval()

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        model_cfg: ModelConfig,
        uncertainty_cfg: UncertaintyConfig,
        vocabs: FeatureVocabs,
        image_embedding: torch.Tensor,
        title_genres: torch.Tensor,
        meta: dict[str, Any] | None = None,
    ) -> ModelBundle:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(
            model_cfg=model_cfg,
            uncertainty_cfg=uncertainty_cfg,
            state_dict=state,
            vocabs=vocabs,
            image_embedding=image_embedding.detach().cpu().float(),
            title_genres=title_genres.detach().cpu().float(),
            meta=dict(meta or {}),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file then rename), as plain tensors and dicts (loadable weights_only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": BUNDLE_FORMAT,
            "model_cfg": asdict(self.model_cfg),
            "uncertainty_cfg": asdict(self.uncertainty_cfg),
            "state_dict": self.state_dict,
            "vocabs": self.vocabs.to_dict(),
            "image_embedding": self.image_embedding,
            "title_genres": self.title_genres,
            "meta": self.meta,
        }
        with atomic_file(path) as sink:
            torch.save(payload, sink)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelBundle:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no model bundle at {path} (deepbandit train writes <run dir>/model.pt, deepbandit pipeline "
                "<run dir>/train/model.pt)"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types; name the file whatever they are
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if first.startswith("Weights only load failed"):  # torch's advice to unpickle is not ours to give
                first = "not a file deepbandit wrote: the safe, weights-only load refused it"
            raise ConfigError(f"{path}: not a readable deepbandit model bundle ({first})") from err
        if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ConfigError(
                f"{path}: bundle format {found!r}, this deepbandit reads format {BUNDLE_FORMAT}"
            )
        return cls(
            model_cfg=ModelConfig(**payload["model_cfg"]),
            uncertainty_cfg=UncertaintyConfig(**payload["uncertainty_cfg"]),
            state_dict=payload["state_dict"],
            vocabs=FeatureVocabs.from_dict(payload["vocabs"]),
            image_embedding=payload["image_embedding"],
            title_genres=payload["title_genres"],
            meta=payload["meta"],
        )
