"""The Colab quickstart notebook executes end to end at the smoke size (nbclient)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs_at_smoke_size(tmp_path, monkeypatch):
  monkeypatch.setenv("RAG_R1_VARIANT", "smoke")
  monkeypatch.setenv("RAG_R1_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("RAG_R1_SKIP_INSTALL", "1")  # CI installed the requirements already
  monkeypatch.setenv("XLA_FLAGS", "")
  path = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert os.path.isfile(tmp_path / "run" / "eval" / "report.md")
  shown = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
  assert "EM" in shown  # the results table was displayed
