"""The quickstart notebook runs top to bottom (smaller than its saved run), shows a table or a plot in every
step, and prints no warning or error. Its committed outputs are those of the full-size run."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def _outputs(cell) -> list[dict]:
    return cell.get("outputs", []) if cell.cell_type == "code" else []


@pytest.mark.slow
def test_quickstart_notebook_executes_and_every_step_shows_something(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBANDIT_NB_ROWS", "20000")
    monkeypatch.setenv("DEEPBANDIT_NB_EPOCHS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in _outputs(c)]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [o["text"] for o in outputs if o.get("name") == "stderr"], "warnings or log lines on stderr"
    silent = [i for i, c in enumerate(code[1:], 1) if not _outputs(c)]
    assert not silent, f"code cells {silent} show nothing"
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(tables) >= 5 and len(images) == 4, (len(tables), len(images))
    text = "".join(o.get("text", "") for o in outputs)
    assert "decisions, propensities exact" in text and "of the gap from random to the oracle" in text


def test_the_committed_notebook_holds_the_outputs_of_a_run_where_the_model_wins():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in _outputs(c))
    assert "greedy closes" in text and "paired standard errors" in text, (
        "commit the notebook with its outputs"
    )
    assert "beats the best single image by -" not in text
