"""The default model: one logit per candidate image from a member tower, an image tower and an interaction.

Shapes: B requests, A padded candidates, D image-embedding width, d = ``tower_dim``, L the leading
member/sample dimension of ``encoders``. Expected reward = sigmoid(logit); padded candidates get
``PAD_LOGIT``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepbandit.data.features import ModelInputs
from deepbandit.models.capabilities import Capabilities
from deepbandit.models.encoders import (
    PAD_LOGIT,
    ImageTower,
    MemberTower,
    ModelConfig,
    StackedLinear,
    dropout,
)


class InteractionHead(nn.Module):
    """MLP over [member, image, member * image] per candidate, written so the member part runs per request.

    The first layer of an MLP on the concatenation equals W_m m + W_v v + W_p (m * v): W_m m is computed
    once per request and broadcast over candidates instead of materialising (B, A, 3d).

    forward: member (L, B, d), images (L, B, A, d) -> (logits (L', B, A) unmasked, features (L, B, A, h)),
    where features is the last hidden layer (before ``last_layer_dropout``) used by the neural-linear head.
    """

    def __init__(self, cfg: ModelConfig, n_members: int = 1):
        super().__init__()
        d, h = cfg.tower_dim, cfg.head_dim
        self.member = StackedLinear(n_members, d, h)
        self.image = StackedLinear(n_members, d, h, bias=False)
        self.product = StackedLinear(n_members, d, h, bias=False)
        self.out = StackedLinear(n_members, h, 1)
        self.p = cfg.last_layer_dropout

    def forward(
        self, member: Tensor, images: Tensor, dropout_active: bool = False, n_samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        m = member.unsqueeze(2)  # (L, B, 1, d)
        features = F.relu(self.member(m) + self.image(images) + self.product(m * images))
        logits = self.out(dropout(features, self.p, dropout_active, n_samples)).squeeze(-1)
        return logits, features


class ArtworkScorer(nn.Module):
    """Scores each candidate image of a request: logits (B, A), expected reward sigmoid(logit).

    title_genres: (n_titles + 2, G) multi-hot buffer. ``n_members`` > 1 stacks independent copies of every
    layer (the vectorised ensemble, see ``EnsembleScorer``); ``forward`` then averages member logits.
    Candidates enter as embeddings (B, A, D) so serving can score images never seen in training; use
    ``ImageEmbeddingLookup`` to get them from the catalogue during training.
    """

    def __init__(self, cfg: ModelConfig, title_genres: Tensor, n_members: int = 1):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        self.cfg = cfg
        self.n_members = n_members
        self.member_tower = MemberTower(cfg, title_genres, n_members)
        self.image_tower = ImageTower(cfg, n_members)
        self.head = InteractionHead(cfg, n_members)

    @classmethod
    def from_config(cls, cfg: ModelConfig, uncertainty, title_genres: Tensor) -> ArtworkScorer:
        """The plain scorer of ``uncertainty=none`` (one network)."""
        return cls(cfg, title_genres)

    @staticmethod
    def offers(uncertainty) -> Capabilities:
        """No posterior: point scores only."""
        return Capabilities()

    def scores(
        self,
        inputs: ModelInputs | Mapping[str, Tensor],
        *,
        dropout_active: bool | None = None,
        n_samples: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Unmasked logits (L, B, A) and last-layer features (L, B, A, head_dim).

        dropout_active None follows ``self.training``; with True and ``n_samples`` S > 1 (K = 1 only),
        L = S independent dropout draws computed in one batched pass.
        """
        x = ModelInputs.of(inputs)
        active = self.training if dropout_active is None else dropout_active
        if n_samples > 1 and self.n_members > 1:
            raise ValueError("dropout sampling (n_samples > 1) needs a single-member scorer")
        member = self.member_tower(x, active, n_samples)
        images = self.image_tower(x.candidate_embeddings, x.candidate_image_idx, active, n_samples)
        return self.head(member, images, active, n_samples)

    def member_logits(
        self,
        inputs: ModelInputs | Mapping[str, Tensor],
        *,
        dropout_active: bool | None = None,
        n_samples: int = 1,
    ) -> Tensor:
        """Masked logits (B, L, A): L = n_members, or n_samples dropout draws (padding = PAD_LOGIT)."""
        x = ModelInputs.of(inputs)
        logits, _ = self.scores(x, dropout_active=dropout_active, n_samples=n_samples)
        if logits.shape[0] < n_samples:  # no dropout anywhere: every draw is the same
            logits = logits.expand(n_samples, *logits.shape[1:])
        return logits.transpose(0, 1).masked_fill(~x.candidate_mask.unsqueeze(1), PAD_LOGIT)

    def forward(self, inputs: ModelInputs | Mapping[str, Tensor]) -> Tensor:
        """Point logits (B, A), the mean over members; padded candidates hold PAD_LOGIT."""
        x = ModelInputs.of(inputs)
        logits, _ = self.scores(x)
        return logits.mean(0).masked_fill(~x.candidate_mask, PAD_LOGIT)

    def posterior_samples(
        self,
        inputs: ModelInputs | Mapping[str, Tensor],
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, S, A) copies of the point logits (S = n_samples or 1): the no-uncertainty posterior."""
        return self.forward(inputs).unsqueeze(1).expand(-1, n_samples or 1, -1)
