"""Re-run notebooks/quickstart.ipynb at its full size and save it with its outputs (commit the result).

    python scripts/execute_notebook.py [notebook ...]

The suite runs the notebook smaller (tests/notebooks/test_quickstart.py) and checks that the committed copy
holds the outputs of a run where the model wins; run this after a change that alters what a cell shows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = [Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"]

if __name__ == "__main__":
    for path in [Path(p) for p in sys.argv[1:]] or NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as cwd:
            nbclient.NotebookClient(
                nb, kernel_name="python3", resources={"metadata": {"path": cwd}}
            ).execute()
        nbformat.write(nb, path)
        print(f"executed and saved {path}")
