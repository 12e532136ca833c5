"""Batched inference from an export folder with numpy and onnxruntime only (no torch, no Lightning).

See ``service.ArtworkService`` and docs/export-and-serving.md.
"""

from deepbandit.serving.features import RequestBatch
from deepbandit.serving.service import ArtworkService, ServingDecisions

__all__ = ["ArtworkService", "RequestBatch", "ServingDecisions"]
