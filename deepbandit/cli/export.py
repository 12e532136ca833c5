"""`deepbandit export`: a trained model bundle -> ONNX, manifest, image table, fp16 variant, Triton repository.

    deepbandit export bundle=runs/x/model.pt out_dir=export/
    deepbandit export bundle=runs/x/model.pt out_dir=export/ fp16=true triton=true \
        policy=thompson policy.min_propensity=0.01

Runs the onnxruntime-vs-torch parity check before writing the manifest (a failing check writes none) and
prints it. docs/export-and-serving.md describes the files and how serving reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf
from rich.table import Table

from deepbandit.cli._hydra import (
    BUNDLE_FILE,
    entry_point,
    require_file,
)
from deepbandit.cli._hydra import (
    console as cli_console,
)
from deepbandit.data.layout import checked_name
from deepbandit.policies.config import PolicyConfig


@dataclass
class ExportConfig:
    bundle: str = MISSING  # path to model.pt written by training
    out_dir: str | None = None  # export folder; None: <the bundle's folder>/export
    # the serving policy (policy=<name>, conf/policy/); None: the training run's (bundle meta), else greedy
    policy: PolicyConfig | None = None
    fp16: bool = False  # also write model_fp16.onnx (fp16 inside, fp32 at the boundary)
    triton: bool = True  # also write <out_dir>/triton/<model_name>/
    precomputed: bool = True  # also write model_precomputed.onnx (the image tower stored for the catalogue)
    model_name: str = "artwork_scorer"  # name of the Triton model (triton/<model_name>/) and in manifest.json
    max_batch_size: int = 16384  # Triton max_batch_size
    max_history: int | None = None  # None: bundle meta's max_history, else the contract's MAX_HISTORY
    parity_batch_sizes: list[int] = field(default_factory=lambda: [1, 7, 512])
    # candidate counts of the parity check, each tried with every parity_batch_sizes entry
    parity_candidates: list[int] = field(default_factory=lambda: [1, 25, 64])


def run(cfg: DictConfig | ExportConfig) -> dict:
    """Export ``cfg.bundle`` into ``cfg.out_dir``; returns {out_dir, files {name: path}, parity [...]}."""
    from deepbandit.export.onnx_export import export_bundle
    from deepbandit.models.bundle import ModelBundle

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExportConfig), cfg))
    policy = cfg.policy
    out_dir = cfg.out_dir if cfg.out_dir is not None else Path(cfg.bundle).parent / "export"
    result = export_bundle(
        ModelBundle.load(cfg.bundle),
        out_dir,
        policy=policy,
        fp16=cfg.fp16,
        triton=cfg.triton,
        precomputed=cfg.precomputed,
        model_name=cfg.model_name,
        max_batch_size=cfg.max_batch_size,
        parity_batch_sizes=tuple(cfg.parity_batch_sizes),
        parity_candidates=tuple(cfg.parity_candidates),
        max_history=cfg.max_history,
    )
    return {
        "out_dir": str(result.out_dir),
        "files": {k: str(p) for k, p in result.files.items()},
        "parity": result.parity,
    }


@entry_point("export")
def main(cfg: DictConfig) -> None:
    require_file(cfg.bundle, "bundle", BUNDLE_FILE)
    checked_name(cfg.model_name, "model_name")  # before the bundle loads: it names triton/<model_name>/
    summary = run(cfg)
    table = Table(title=f"exported to {summary['out_dir']}: onnxruntime vs torch")
    for col in ("variant", "batch", "candidates", "max |diff|", "allowed", "same choice"):
        table.add_column(col, justify="right")
    for p in summary["parity"]:
        table.add_row(
            p["label"],
            str(p["batch"]),
            str(p["candidates"]),
            f"{p['max_abs_diff']:.2e}",
            f"{p['atol']:g}",
            str(p["same_choice"]),
        )
    console = cli_console()
    console.print(table)
    for name, path in summary["files"].items():
        console.print(f"{name}: {path}")


if __name__ == "__main__":
    main()
