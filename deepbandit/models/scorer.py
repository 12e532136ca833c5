"""The default model: one logit per candidate image from a member tower, an image tower and an interaction.

Shapes: B requests, A padded candidates, N real (request, candidate) pairs, D image-embedding width,
d = ``tower_dim``, L the leading member/sample dimension of ``encoders``. Expected reward =
sigmoid(logit); padded candidates get ``PAD_LOGIT``.

Candidate packing: logged requests have few real candidates next to the widest one (the default world:
7.4 on average, padded to 24), and the image tower and the interaction head, most of the model's work,
would run on padding. In eager torch the scorer therefore runs them on the N real pairs only and scatters
the logits back to (B, A); the member tower still runs once per request. The result is the padded path's
(padded candidates' logits are masked, so no gradient flows through them either way), tested equal. The
ONNX graph and ``torch.compile`` keep the padded path: they need shapes that do not depend on the data.
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

# pack candidates when fewer than this fraction of the (B, A) pairs are real
PACK_BELOW_FILL = 0.8


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

    def packed(
        self,
        member: Tensor,
        images: Tensor,
        request: Tensor,
        dropout_active: bool = False,
        n_samples: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """The same on real pairs only: member (L, B, d), images (L, N, d), request (N,) the request of
        each pair -> (logits (L', N), features (L, N, h))."""
        m = member.index_select(1, request)  # (L, N, d)
        first = self.member(member).index_select(1, request)  # W_m m once per request, then per pair
        features = F.relu(first + self.image(images) + self.product(m * images))
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
        # score only real candidates in eager torch (see the module docstring); False: the padded path
        # everywhere (the reference the packed path is tested and benchmarked against)
        self.pack_candidates = True
        # (L, n_rows, d) the image tower's output per catalogue row, set by ``precompute_image_towers``
        # (the export's precomputed graph); None: the tower runs on candidate_embeddings
        self.register_buffer("image_vectors", None, persistent=False)

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
        with_features: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Unmasked logits (L, B, A) and last-layer features (L, B, A, head_dim), or None without
        ``with_features``.

        dropout_active None follows ``self.training``; with True and ``n_samples`` S > 1 (K = 1 only),
        L = S independent dropout draws computed in one batched pass. Padded candidates' logits are
        unspecified (callers mask them) and their features 0 when the candidates were packed.
        """
        x = ModelInputs.of(inputs)
        active = self.training if dropout_active is None else dropout_active
        if n_samples > 1 and self.n_members > 1:
            raise ValueError("dropout sampling (n_samples > 1) needs a single-member scorer")
        member = self.member_tower(x, active, n_samples)
        pairs = self._real_pairs(x.candidate_mask)
        b, a = x.candidate_mask.shape
        images = self._images(x, pairs, active, n_samples)  # (L, B, A, d), or (L, N, d) when packed
        if pairs is None:
            return self.head(member, images, active, n_samples)
        logits, features = self.head.packed(member, images, torch.div(pairs, a, rounding_mode="floor"),
                                            active, n_samples)  # fmt: skip
        out = logits.new_full((logits.shape[0], b * a), PAD_LOGIT).index_copy(1, pairs, logits)
        if not with_features:
            return out.view(-1, b, a), None
        h = features.shape[-1]
        full = features.new_zeros(features.shape[0], b * a, h).index_copy(1, pairs, features)
        return out.view(-1, b, a), full.view(-1, b, a, h)

    def _images(self, x: ModelInputs, pairs: Tensor | None, active: bool, n_samples: int) -> Tensor:
        """The candidates' image representations: (L, B, A, d), or (L, N, d) for the real ``pairs`` only;
        gathered from the stored table once ``precompute_image_towers`` ran, else the tower's output."""
        b, a = x.candidate_mask.shape
        idx = x.candidate_image_idx
        if self.image_vectors is not None:
            if idx is None:
                raise ValueError("candidate_image_idx (B, A) is required once the image tower is precomputed")
            flat = idx.reshape(b * a) if pairs is None else idx.reshape(b * a).index_select(0, pairs)
            images = self.image_vectors.index_select(1, flat)  # (L, B * A or N, d)
            return images if pairs is not None else images.view(images.shape[0], b, a, -1)
        if pairs is None:
            return self.image_tower(x.candidate_embeddings, idx, active, n_samples)
        embeddings = x.candidate_embeddings.reshape(b * a, -1).index_select(0, pairs)  # (N, D)
        if idx is not None:
            idx = idx.reshape(1, b * a).index_select(1, pairs)  # (1, N)
        # the image tower reads (B, A, D): the N pairs enter as one request of N candidates
        return self.image_tower(embeddings.unsqueeze(0), idx, active, n_samples)[:, 0]

    def _real_pairs(self, candidate_mask: Tensor) -> Tensor | None:
        """Flat indices (N,) of the real (request, candidate) pairs in (B * A), or None for the padded path:
        packing off, an export or compilation (data-dependent shapes), or little padding to skip."""
        if not self.pack_candidates or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return None
        if torch.onnx.is_in_onnx_export():
            return None
        pairs = candidate_mask.reshape(-1).nonzero().squeeze(1)  # one host sync per call on a GPU
        # gathering and scattering cost about a pass over the padded pairs: not worth it when few are padding
        return pairs if len(pairs) < PACK_BELOW_FILL * candidate_mask.numel() else None

    def member_logits(
        self,
        inputs: ModelInputs | Mapping[str, Tensor],
        *,
        dropout_active: bool | None = None,
        n_samples: int = 1,
    ) -> Tensor:
        """Masked logits (B, L, A): L = n_members, or n_samples dropout draws (padding = PAD_LOGIT)."""
        x = ModelInputs.of(inputs)
        logits, _ = self.scores(x, dropout_active=dropout_active, n_samples=n_samples, with_features=False)
        if logits.shape[0] < n_samples:  # no dropout anywhere: every draw is the same
            logits = logits.expand(n_samples, *logits.shape[1:])
        return logits.transpose(0, 1).masked_fill(~x.candidate_mask.unsqueeze(1), PAD_LOGIT)

    def forward(self, inputs: ModelInputs | Mapping[str, Tensor]) -> Tensor:
        """Point logits (B, A), the mean over members; padded candidates hold PAD_LOGIT."""
        x = ModelInputs.of(inputs)
        logits, _ = self.scores(x, with_features=False)
        return logits.mean(0).masked_fill(~x.candidate_mask, PAD_LOGIT)

    def posterior_samples(
        self,
        inputs: ModelInputs | Mapping[str, Tensor],
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, S, A) copies of the point logits (S = n_samples or 1): the no-uncertainty posterior."""
        return self.forward(inputs).unsqueeze(1).expand(-1, n_samples or 1, -1)


@torch.no_grad()
def precompute_image_towers(model: nn.Module, image_embeddings: Tensor) -> None:
    """Store, in every ``ArtworkScorer`` inside ``model`` (an ensemble's prior included), its image tower's
    output for each row of the catalogue table ``image_embeddings`` (n_images + 2, D), with the hashed id
    embedding of that row's image: the scorer then gathers it by ``candidate_image_idx`` and never runs
    the tower. The image tower depends on the image alone, so this equals the embedding path on catalogue
    images, in eval mode (no dropout): the export's precomputed graph."""
    for part in model.modules():
        if isinstance(part, ArtworkScorer):
            table = image_embeddings.to(next(part.parameters()).device, next(part.parameters()).dtype)
            idx = torch.arange(len(table), device=table.device).unsqueeze(0)  # row r is vocabulary index r
            part.image_vectors = part.image_tower(table.unsqueeze(0), idx)[:, 0]  # (L, n_rows, d)
