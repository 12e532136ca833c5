"""The one place where the commands' typed configs are registered in Hydra's ConfigStore.

``conf/<name>.yaml`` starts its defaults list with ``<name>_schema``: the dataclass below, which types the
whole tree (a misspelt key or a wrong type fails when the config is composed). ``register_schema`` is
called by the command's ``entry_point``, by ``--help`` and by the pipeline before they compose;
``register_schemas`` registers every one (for code that composes configs itself, such as the tests).
The dataclasses are imported only when registered, so a command loads only its own config's modules.
"""

from __future__ import annotations

import importlib

from hydra.core.config_store import ConfigStore

# config name -> "module:dataclass" of its root schema
SCHEMAS: dict[str, str] = {
    "train": "deepbandit.training.config:TrainConfig",
    "simulate": "deepbandit.sim.simulator:SimulateConfig",
    "validate": "deepbandit.cli.validate:ValidateConfig",
    "import_obd": "deepbandit.cli.import_obd:ImportObdConfig",
    "evaluate": "deepbandit.cli.evaluate:EvaluateConfig",
    "gate": "deepbandit.cli.gate:GateConfig",
    "export": "deepbandit.cli.export:ExportConfig",
    "loop": "deepbandit.loop.loop:LoopConfig",
    "pipeline": "deepbandit.cli.pipeline:PipelineConfig",
}


def register_schema(config_name: str) -> None:
    """Store ``<config_name>_schema`` (idempotent). The groups get no schema of their own, which would
    show up as an option (``model=model_schema``); the root schema types every group below it."""
    module, _, cls = SCHEMAS[config_name].partition(":")
    node = getattr(importlib.import_module(module), cls)
    ConfigStore.instance().store(name=f"{config_name}_schema", node=node)


def register_schemas() -> None:
    for name in SCHEMAS:
        register_schema(name)
