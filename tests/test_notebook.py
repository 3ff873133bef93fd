"""notebooks/attention_walkthrough.ipynb runs top to bottom (its own asserts check each step
against the project's modules) and is stored without outputs."""

from __future__ import annotations

import json
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from helpers import ROOT
NOTEBOOK = ROOT / "notebooks" / "attention_walkthrough.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), \
        "clear the outputs before committing (Jupyter: Edit > Clear All Outputs)"


def test_notebook_runs(tmp_path, monkeypatch):
    # A kernel spec that runs this interpreter (the project's .venv), whatever "python3" means here.
    spec_dir = tmp_path / "jupyter" / "kernels" / "pipeline-venv"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pipeline (.venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="pipeline-venv", timeout=600,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError on the first failing cell

    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "translation: hey, good to know you" in text
    assert "equals the module's output" in text
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert images, "the cross-attention figure was not displayed"
