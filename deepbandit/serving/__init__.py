"""Batched inference from an export folder with numpy and onnxruntime only (no torch, no Lightning).

See ``service.ArtworkService`` and docs/export-and-serving.md.
"""

from deepbandit.serving.features import RequestBatch, check_graph_inputs
from deepbandit.serving.service import ArtworkService, ServingDecisions

__all__ = ["ArtworkService", "RequestBatch", "ServingDecisions", "check_graph_inputs"]
