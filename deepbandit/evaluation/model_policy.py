"""Adapter from a trained ModelBundle (``model.pt``) to the arrays evaluation takes (:class:`ModelScores`).

This is the one evaluation module that runs a network; it imports torch-side code (bundle, tensors) only
here, so the estimators stay arrays-in. ``BundleScorer(eval_table) -> ModelScores`` is the ``scorer``
argument of :func:`deepbandit.evaluation.evaluate.evaluate_rows`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from deepbandit.data.tensors import table_to_batch
from deepbandit.evaluation.evaluate import ModelScores
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import PAD_LOGIT
from deepbandit.models.uncertainty import capabilities


@dataclass
class BundleScorer:
    """Scores logged rows with a bundle's network, ``batch_rows`` at a time, on CPU.

    Candidate embeddings come from ``images`` (the dataset's images table: images launched after training
    are scored from their features) when given, else from the bundle's own table (unseen images: zeros).
    ``posterior`` also draws (n, S, A) posterior samples for a Thompson policy (S = all ensemble members,
    or the bundle's default dropout / neural-linear draws, seeded by ``seed``).
    """

    bundle: ModelBundle
    images: pa.Table | None = None
    posterior: bool = False
    batch_rows: int = 8192
    seed: int = 0

    @classmethod
    def from_path(cls, path: str | os.PathLike, images: pa.Table | None = None, **kw) -> BundleScorer:
        return cls(ModelBundle.load(path), images, **kw)

    def __post_init__(self) -> None:
        self.model = self.bundle.build_model()
        self.image_ids = self.image_table = None
        if self.images is not None:
            ids = self.images.column("image_id").to_numpy()
            order = np.argsort(ids)
            emb = np.stack(self.images.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
            if emb.shape[1] != self.bundle.image_embedding.shape[1]:
                raise ValueError(
                    f"images table: embedding width {emb.shape[1]}, the model was trained on "
                    f"{self.bundle.image_embedding.shape[1]}"
                )
            self.image_ids, self.image_table = ids[order], torch.from_numpy(emb[order])

    def _embeddings(self, table: pa.Table, batch) -> torch.Tensor:
        if self.image_ids is None:
            return self.bundle.image_embedding[batch.inputs.candidate_image_idx]
        from deepbandit.data.logs import candidates_from_impressions

        cand, mask = candidates_from_impressions(table)
        pos = np.clip(np.searchsorted(self.image_ids, cand), 0, len(self.image_ids) - 1)
        missing = mask & (self.image_ids[pos] != cand)
        if missing.any():
            row, col = np.argwhere(missing)[0]
            raise ValueError(
                f"impressions row {row}: candidate image {cand[row, col]} is not in the images table"
            )
        out = self.image_table[torch.from_numpy(pos)] * torch.from_numpy(mask)[..., None]
        return out[:, : batch.candidate_mask.shape[1]]

    @torch.no_grad()
    def __call__(self, table: pa.Table) -> ModelScores:
        """(n, A) predicted reward probabilities (and samples) for every row, A = widest row of ``table``."""
        width = int(pc.max(pc.list_value_length(table.column("candidate_image_ids"))).as_py())
        probs, samples = [], []
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, len(table), self.batch_rows):
            part = table.slice(start, self.batch_rows)
            batch = table_to_batch(part, self.bundle.vocabs)
            x = batch.inputs.replace(candidate_embeddings=self._embeddings(part, batch))
            pad = width - batch.candidate_mask.shape[1]
            logits = self.model(x)
            probs.append(torch.nn.functional.pad(torch.sigmoid(logits) * batch.candidate_mask, (0, pad)))
            if self.posterior:
                s = self.model.posterior_samples(x, None, generator=gen)  # ensemble: every member once
                samples.append(torch.nn.functional.pad(s, (0, pad), value=PAD_LOGIT))
        return ModelScores(
            expected_reward=torch.cat(probs).double().numpy(),
            posterior_samples=torch.cat(samples).double().numpy() if self.posterior else None,
            thompson_kind=capabilities(self.bundle.uncertainty_cfg).thompson_kind,
        )
