"""Building blocks of the artwork scorer: member-stacked layers, the member (context) tower, the image tower.

Every trainable layer here carries a leading *member* dimension K: weights are stacked ``(K, ...)`` and
applied with one batched matmul or one gather. The default model is K = 1; the ensemble is the same code
with K = n_members, so the vectorised ensemble is not a second implementation of the network. Activations
carry the same leading dimension, written ``L`` below: L is K, or 1 for a tensor shared by all members,
or the number of Monte Carlo dropout samples S when a K = 1 network is sampled (see ``dropout``).

Index conventions (shared with the data layer): row 0 of every vocabulary is padding, row 1 is "unknown";
real entries start at 2, so a table for ``n`` entries has ``n + 2`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepbandit.data.features import (
    INPUT_NAMES,
    ModelInputs,
    active_inputs,
    check_input_values,
)

# Logit written at padded candidates. Finite on purpose: -inf turns a fully padded row or a masked
# fp16/ONNX softmax into NaN, while exp(-1e4 - x) is exactly 0 in float32 for any sane valid logit x, so
# padding can never win a softmax or an argmax. -1e4 is representable in fp16 (max 65504) and bf16.
PAD_LOGIT = -1e4

POOLINGS = ("mean", "attention")

# Knuth's multiplicative constant (< 2**32): idx * _HASH_MULT stays inside int64 for idx < 2**31, so the
# hashed bucket is the same in torch, ONNX and numpy.
_HASH_MULT = 2654435761


@dataclass
class ModelConfig:
    """Vocabulary sizes (filled from the data) and hyperparameters of the scorer.

    Vocabulary sizes count real entries; tables get two more rows (pad, unknown). ``embedding_dim`` is
    D, the width of the image (vision) embeddings. ``dropout`` acts on the hidden layer of each tower,
    ``last_layer_dropout`` on the last hidden layer of the interaction head (the neural-linear features):
    with only the latter, Monte Carlo dropout is exact in expectation (see ``MCDropoutScorer``).
    """

    n_titles: int
    n_countries: int
    n_languages: int
    n_devices: int
    n_images: int
    n_genres: int
    embedding_dim: int
    member_features_dim: int = 0
    id_dim: int = 32  # learned embeddings: titles, countries, languages, devices, genres
    tower_dim: int = 64  # d: member and image representations
    hidden_dim: int = 128  # hidden layer of each tower
    head_dim: int = 128  # last hidden layer of the interaction head
    dropout: float = 0.0
    last_layer_dropout: float = 0.0
    pooling: str = "mean"  # history pooling: "mean" (embedding bag) or "attention" (target attention)
    image_id_hash_buckets: int = 0  # 0 = no image-id embedding (content only)
    member_id_hash_buckets: int = 0  # 0 = no member-id embedding (members known by their context only)

    def __post_init__(self) -> None:
        for name in ("n_titles", "n_countries", "n_languages", "n_devices", "n_images", "n_genres"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("embedding_dim", "id_dim", "tower_dim", "hidden_dim", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if min(self.member_features_dim, self.image_id_hash_buckets, self.member_id_hash_buckets) < 0:
            raise ValueError(
                "ModelConfig.member_features_dim, image_id_hash_buckets and member_id_hash_buckets must be >= 0"
            )
        for name in ("dropout", "last_layer_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ModelConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")


def dropout(x: Tensor, p: float, active: bool, n_samples: int = 1) -> Tensor:
    """Inverted dropout that can fan a shared activation out into ``n_samples`` independent draws.

    x: (L, ...). When active and L < n_samples (L = 1: the activation is still identical for every
    sample), x is expanded to (n_samples, ...) first so that each sample gets its own mask. Everything
    before the first active dropout therefore runs once, not once per sample.
    """
    if not active or p == 0.0:
        return x
    if x.shape[0] < n_samples:
        x = x.expand(n_samples, *x.shape[1:])
    return F.dropout(x, p, training=True)


class StackedLinear(nn.Module):
    """K independent linear maps. weight (K, in, out), bias (K, out).

    forward: x (L, ..., in) -> (max(L, K), ..., out) with L = 1 (input shared by all members: one GEMM
    against the K weights side by side), L = K (one bmm), or K = 1 (any L, one GEMM).
    """

    def __init__(self, n_members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation, drawn per member
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(n_members, out_features).uniform_(-bound, bound)) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        k, n_in, n_out = self.weight.shape  # read from the tensor so sliced parameters (forward_loop) work
        lead = x.shape[:-1]
        if k == 1:
            y = torch.matmul(x, self.weight[0])
            return y if self.bias is None else y + self.bias[0]
        if x.shape[0] == 1:
            y = torch.einsum("ni,kio->kno", x.reshape(-1, n_in), self.weight)
        elif x.shape[0] == k:
            y = torch.bmm(x.reshape(k, -1, n_in), self.weight)
        else:
            raise ValueError(f"StackedLinear: leading dimension {x.shape[0]} is neither 1 nor n_members={k}")
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(k, *lead[1:], n_out)


class StackedEmbedding(nn.Module):
    """K independent embedding tables, weight (K, V, e), looked up with one gather on a (K*V, e) view."""

    def __init__(self, n_members: int, n_rows: int, dim: int, std: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_members, n_rows, dim) * std)

    def _flat(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        k, v, e = self.weight.shape
        offsets = torch.arange(k, device=idx.device) * v  # member k reads rows k*V .. k*V + V - 1
        return idx.unsqueeze(0) + offsets.view(k, *([1] * idx.dim())), self.weight.reshape(k * v, e)

    def forward(self, idx: Tensor) -> Tensor:
        """idx (...) long -> (K, ..., e)."""
        flat_idx, table = self._flat(idx)
        return F.embedding(flat_idx, table)

    def bag(self, idx: Tensor, weights: Tensor) -> Tensor:
        """Weighted sum per row: idx (B, H) long, weights (B, H) float -> (K, B, e)."""
        k, b, h = self.weight.shape[0], *idx.shape
        flat_idx, table = self._flat(idx)
        return embedding_bag(
            flat_idx.reshape(k * b, h), table, weights.expand(k, b, h).reshape(k * b, h)
        ).view(k, b, -1)


def embedding_bag(idx: Tensor, table: Tensor, weights: Tensor) -> Tensor:
    """sum_h weights[b, h] * table[idx[b, h]]: idx (B, H), table (V, e), weights (B, H) -> (B, e).

    Training uses the fused ``F.embedding_bag`` (never materialises the (B, H, e) gather). ONNX has no
    embedding-bag operator: the exporter would emit a Loop over bags, so under export the same sum is
    written as a gather and a weighted reduction (tested to agree).
    """
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return torch.einsum("bh,bhe->be", weights, F.embedding(idx, table))
    return F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")


class StackedMLP(nn.Module):
    """Linear -> ReLU -> dropout -> Linear, per member: x (L, ..., in) -> (L', ..., out)."""

    def __init__(self, n_members: int, in_features: int, hidden: int, out_features: int, p: float):
        super().__init__()
        self.inner = StackedLinear(n_members, in_features, hidden)
        self.outer = StackedLinear(n_members, hidden, out_features)
        self.p = p

    def forward(self, x: Tensor, dropout_active: bool, n_samples: int = 1) -> Tensor:
        return self.outer(dropout(F.relu(self.inner(x)), self.p, dropout_active, n_samples))


def _signed_log1p(x: Tensor) -> Tensor:
    # Upstream ranker scores come on unknown scales (probabilities, logits, raw scores in the hundreds);
    # a symmetric log keeps large values from dominating the tower without fitting statistics to data.
    return torch.sign(x) * torch.log1p(x.abs())


# sin/cos hour, sin/cos weekday, signed-log recommender score, prior-interaction flag, log1p(#plays)
N_CONTEXT_SCALARS = 7


class MemberTower(nn.Module):
    """Member/context representation, computed once per request (never per candidate).

    Recently played titles are embedded as title embedding + projected genres (``title_genres`` is the
    (n_titles + 2, G) multi-hot buffer, rows normalised to sum 1 so multi-genre titles are not louder)
    and pooled by a masked mean (embedding bag) or by target attention with the current title as query.
    The current title gets the same representation, so title-specific preferences are learnable. Country,
    language and device are embedded; hour and weekday enter as points on the unit circle (23h is next
    to 0h); plus the recommender's score, the prior-interaction flag, log1p of the history length and the
    optional dense ``member_features``.

    forward -> (L, B, tower_dim).
    """

    def __init__(self, cfg: ModelConfig, title_genres: Tensor, n_members: int = 1):
        super().__init__()
        if title_genres.shape != (cfg.n_titles + 2, cfg.n_genres):
            raise ValueError(
                f"title_genres has shape {tuple(title_genres.shape)}, expected (n_titles + 2, n_genres) = "
                f"({cfg.n_titles + 2}, {cfg.n_genres})"
            )
        genres = title_genres.float()
        self.register_buffer("genre_features", genres / genres.sum(1, keepdim=True).clamp(min=1.0))
        e = cfg.id_dim
        self.titles = StackedEmbedding(n_members, cfg.n_titles + 2, e)
        self.genre_proj = StackedLinear(n_members, cfg.n_genres, e, bias=False) if cfg.n_genres else None
        self.countries = StackedEmbedding(n_members, cfg.n_countries + 2, e)
        self.languages = StackedEmbedding(n_members, cfg.n_languages + 2, e)
        self.devices = StackedEmbedding(n_members, cfg.n_devices + 2, e)
        self.attention_key = (
            StackedLinear(n_members, e, e, bias=False) if cfg.pooling == "attention" else None
        )
        self.member_features_dim = cfg.member_features_dim
        # a learned embedding per hashed member id (member_id modulo the bucket count): what a member's
        # own past rewards say beyond the context (idiosyncratic tastes); zero at the start, so training
        # begins from the context alone, and a member first seen in serving shares a bucket's embedding
        self.member_buckets = cfg.member_id_hash_buckets
        self.member_ids = (
            StackedEmbedding(n_members, self.member_buckets, e, std=0.0) if self.member_buckets else None
        )
        n_in = (6 if self.member_buckets else 5) * e + N_CONTEXT_SCALARS + cfg.member_features_dim
        self.mlp = StackedMLP(n_members, n_in, cfg.hidden_dim, cfg.tower_dim, cfg.dropout)

    def _items(self, idx: Tensor) -> Tensor:
        """Title representations, embedding + projected genres: idx (...) -> (K, ..., e)."""
        items = self.titles(idx)
        if self.genre_proj is not None:
            items = items + self.genre_proj(F.embedding(idx, self.genre_features).unsqueeze(0))
        return items

    def _pooled_items(self, idx: Tensor, weights: Tensor) -> Tensor:
        """sum_h weights[b, h] * item(idx[b, h]) without materialising the items: (K, B, e)."""
        pooled = self.titles.bag(idx, weights)
        if self.genre_proj is not None:  # the projection is linear, so pool the genres first
            pooled = pooled + self.genre_proj(embedding_bag(idx, self.genre_features, weights).unsqueeze(0))
        return pooled

    def forward(self, inputs: ModelInputs, dropout_active: bool = False, n_samples: int = 1) -> Tensor:
        x = inputs
        history_mask, history_title_idx, title_idx = x.history_mask, x.history_title_idx, x.title_idx
        hour, weekday, member_features = x.hour, x.weekday, x.member_features
        mask = history_mask.to(self.genre_features.dtype)  # (B, H)
        n_played = mask.sum(1)  # (B,)
        title = self._items(title_idx)  # (K, B, e)
        if self.attention_key is None:
            w = mask / n_played.clamp(min=1.0).unsqueeze(1)  # masked mean; an empty history pools to 0
            history = self._pooled_items(history_title_idx, w)
        else:
            items = self._items(history_title_idx)  # (K, B, H, e)
            scores = torch.einsum("kbhe,kbe->kbh", self.attention_key(items), title) / math.sqrt(
                items.shape[-1]
            )
            # Multiplying by the mask after the softmax zeroes an all-padded history (whose softmax is
            # uniform over padding) without a data-dependent branch.
            attn = torch.softmax(scores.masked_fill(~history_mask, PAD_LOGIT), dim=-1) * mask
            history = torch.einsum("kbh,kbhe->kbe", attn, items)
        hour_angle = hour.to(mask.dtype) * (2 * math.pi / 24)
        day_angle = weekday.to(mask.dtype) * (2 * math.pi / 7)
        scalars = [
            torch.sin(hour_angle),
            torch.cos(hour_angle),
            torch.sin(day_angle),
            torch.cos(day_angle),
            _signed_log1p(x.recommender_score.to(mask.dtype)),
            x.prior_interaction.to(mask.dtype),
            torch.log1p(n_played),
        ]
        dense = torch.stack(scalars, dim=-1)  # (B, N_CONTEXT_SCALARS)
        if self.member_features_dim:
            if member_features is None:
                raise ValueError(f"member_features (B, {self.member_features_dim}) is required by this model")
            dense = torch.cat([dense, member_features.to(dense.dtype)], dim=-1)
        k = title.shape[0]
        parts = [
            history,
            title,
            self.countries(x.country_idx),
            self.languages(x.language_idx),
            self.devices(x.device_idx),
        ]
        if self.member_ids is not None:
            if x.member_id is None:
                raise ValueError(
                    f"member_id (B,) is required by this model (member_id_hash_buckets={self.member_buckets})"
                )
            parts.append(self.member_ids(torch.remainder(x.member_id, self.member_buckets)))
        features = torch.cat([*parts, dense.unsqueeze(0).expand(k, *dense.shape)], dim=-1)  # (K, B, n_in)
        return self.mlp(features, dropout_active, n_samples)


class ImageTower(nn.Module):
    """Image representation from the image (vision) embedding, so unseen images get a score (cold start).

    With ``image_id_hash_buckets`` > 0 a learned id embedding (image index hashed into that many buckets)
    is added for images with history; it starts at zero, so training begins from content alone, and is
    never read for padding (0) or unknown (1) images, which is how a brand-new image is scored.

    forward: candidate_embeddings (B, A, D), candidate_image_idx (B, A) | None -> (L, B, A, tower_dim).
    """

    def __init__(self, cfg: ModelConfig, n_members: int = 1):
        super().__init__()
        self.mlp = StackedMLP(n_members, cfg.embedding_dim, cfg.hidden_dim, cfg.tower_dim, cfg.dropout)
        self.n_buckets = cfg.image_id_hash_buckets
        self.ids = (
            StackedEmbedding(n_members, self.n_buckets, cfg.tower_dim, std=0.0) if self.n_buckets else None
        )

    def forward(
        self,
        candidate_embeddings: Tensor,
        candidate_image_idx: Tensor | None = None,
        dropout_active: bool = False,
        n_samples: int = 1,
    ) -> Tensor:
        v = self.mlp(candidate_embeddings.unsqueeze(0), dropout_active, n_samples)
        if self.ids is not None and candidate_image_idx is not None:
            known = (candidate_image_idx >= 2).to(v.dtype).unsqueeze(-1)  # (B, A, 1)
            v = v + self.ids(candidate_image_idx.long() * _HASH_MULT % self.n_buckets) * known
        return v


class ImageEmbeddingLookup(nn.Module):
    """Training-side lookup of candidate image embeddings from the catalogue table.

    image_embeddings: (n_images + 2, D) float32, a non-trainable buffer (row 0 padding, row 1 unknown).
    forward: candidate_image_idx (B, A) long -> (B, A, D). Serving skips this module and passes the
    embeddings of the candidates (including images launched after training) to the scorer directly.
    """

    def __init__(self, image_embeddings: Tensor):
        super().__init__()
        if image_embeddings.dim() != 2 or not image_embeddings.is_floating_point():
            raise ValueError(
                f"image_embeddings must be a float (n_images + 2, D) table, got {image_embeddings.dtype} "
                f"of shape {tuple(image_embeddings.shape)}"
            )
        self.register_buffer("image_embeddings", image_embeddings.float())

    def forward(self, candidate_image_idx: Tensor) -> Tensor:
        return F.embedding(candidate_image_idx, self.image_embeddings)


def model_inputs(batch, lookup: ImageEmbeddingLookup) -> ModelInputs:
    """The scorer's inputs of an ``ImpressionBatch``: its ``inputs`` with the candidate embeddings gathered
    from the catalogue table by ``lookup``."""
    return batch.inputs.replace(candidate_embeddings=lookup(batch.inputs.candidate_image_idx))


def validate_inputs(cfg: ModelConfig, inputs: Mapping[str, Tensor | None]) -> None:
    """Check the scorer inputs against the config; raise ValueError naming the input, row and value
    (``deepbandit.data.features.check_input_values``, the checker the ONNX graph's clients use too).

    Meant for the first batch of a run, tests and serving-side debugging, not every step: it copies to the
    host. Inputs this config does not use (e.g. candidate_image_idx without image id embeddings) are
    ignored, as the scorer ignores them.
    """
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if unknown:
        raise ValueError(f"unknown scorer inputs: {unknown}")
    used = [
        i.name
        for i in active_inputs(cfg.image_id_hash_buckets, cfg.member_features_dim, cfg.member_id_hash_buckets)
    ]

    def host(x: Tensor | None):
        if x is None:
            return None
        return (x.float() if x.is_floating_point() else x).detach().cpu().numpy()

    rows = {"title": cfg.n_titles, "country": cfg.n_countries, "language": cfg.n_languages,
            "device": cfg.n_devices, "image": cfg.n_images}  # fmt: skip
    check_input_values(
        {n: host(inputs.get(n)) for n in used},
        required=used,
        vocab_rows={k: v + 2 for k, v in rows.items()},
        embedding_dim=cfg.embedding_dim,
        member_features_dim=cfg.member_features_dim,
        exact_dtypes=False,
    )


def random_inputs(
    cfg: ModelConfig,
    batch_size: int,
    n_candidates: int,
    history_len: int,
    generator: torch.Generator | None = None,
    image_embeddings: Tensor | None = None,
) -> ModelInputs:
    """Valid random scorer inputs, for tests, benchmarks and export tracing.

    Rows have 1..n_candidates valid candidates (padding at the end, index 0) and 0..history_len played
    titles. Candidate embeddings are looked up in ``image_embeddings`` when given, else drawn N(0, 1).
    """
    g, b, a, h = generator, batch_size, n_candidates, history_len

    def ints(low: int, high: int, *shape: int) -> Tensor:
        return torch.randint(low, max(high, low + 1), shape, generator=g)

    candidate_mask = torch.arange(a) < ints(1, a + 1, b, 1)
    history_mask = torch.arange(h) < ints(0, h + 1, b, 1)
    candidate_image_idx = ints(2, cfg.n_images + 2, b, a) * candidate_mask
    if image_embeddings is not None:
        embeddings = F.embedding(candidate_image_idx, image_embeddings)
    else:
        embeddings = torch.randn(b, a, cfg.embedding_dim, generator=g) * candidate_mask.unsqueeze(-1)
    inputs = {
        "history_title_idx": ints(2, cfg.n_titles + 2, b, h) * history_mask,
        "history_mask": history_mask,
        "country_idx": ints(2, cfg.n_countries + 2, b),
        "language_idx": ints(2, cfg.n_languages + 2, b),
        "device_idx": ints(2, cfg.n_devices + 2, b),
        "hour": ints(0, 24, b),
        "weekday": ints(0, 7, b),
        "recommender_score": torch.randn(b, generator=g),
        "prior_interaction": torch.rand(b, generator=g) < 0.3,
        "title_idx": ints(2, cfg.n_titles + 2, b),
        "candidate_embeddings": embeddings,
        "candidate_mask": candidate_mask,
        "candidate_image_idx": candidate_image_idx,
    }
    if cfg.member_features_dim:
        inputs["member_features"] = torch.randn(b, cfg.member_features_dim, generator=g)
    if cfg.member_id_hash_buckets:
        inputs["member_id"] = ints(0, 10**12, b)
    return ModelInputs(**inputs)
