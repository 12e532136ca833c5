"""The layers point one way (docs/architecture.md): each package imports only the packages below it, and
serving runs on numpy, pyarrow and onnxruntime alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepbandit"

# package -> the deepbandit packages it may import (errors and formatting are leaves anyone may use)
ALLOWED = {
    "data": set(),
    "sim": {"data"},
    "models": {"data"},
    "losses": {"data", "models"},
    "policies": {"data"},
    # sim: true values on simulated logs; models: only model_policy.py, the bundle-to-arrays adapter
    "evaluation": {"data", "sim", "policies", "models"},
    "training": {"data", "sim", "models", "losses", "policies", "evaluation"},
    "export": {"data", "models", "policies"},
    "serving": {"data", "policies"},
    "loop": {"data", "sim", "models", "losses", "policies", "evaluation", "training", "export", "serving"},
}
LEAVES = {"errors", "formatting", "atomic"}


def _imports(path: Path) -> set[str]:
    """The deepbandit packages a module imports (at any depth: function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.split(".")[1] for n in names if n.startswith("deepbandit.")}
    return out


def test_each_layer_imports_only_the_layers_below_it():
    broken = []
    for package, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            extra = _imports(path) - allowed - LEAVES - {package}
            if extra:
                broken.append(f"{path.relative_to(PACKAGE)} imports {sorted(extra)}")
    assert not broken, broken


def test_evaluation_reaches_models_only_through_its_adapter():
    users = [p.name for p in (PACKAGE / "evaluation").rglob("*.py") if "models" in _imports(p)]
    assert users == ["model_policy.py"], users


def test_leaves_import_nothing_of_ours():
    for leaf in LEAVES:
        assert _imports(PACKAGE / f"{leaf}.py") == set(), leaf


def test_serving_and_validation_load_without_the_training_stack():
    # serving reads the manifest's vocabularies with the data layer's Vocab (one vocabulary type for
    # training and serving), which needs pyarrow: a core dependency, like numpy and onnxruntime
    code = (
        "import sys\nimport deepbandit.serving\n"
        "heavy = {'torch', 'lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'matplotlib', 'rich', 'tqdm'}\n"
        "loaded = lambda: {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy & loaded()))\n"
        "import deepbandit.data.validation\nprint(sorted(heavy & loaded()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "[]"], done.stdout + done.stderr


def test_the_export_modules_form_a_chain_not_a_circle():
    def export_imports(name: str) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse((PACKAGE / "export" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepbandit.export."):
                out.add(node.module.rsplit(".", 1)[1])
        return out

    assert export_imports("graph") == set()
    assert export_imports("manifest") <= {"graph"} and export_imports("parity") <= {"graph"}
    assert export_imports("triton") <= {"graph"}
