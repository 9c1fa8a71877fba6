"""The notebooks, executed headless as a reader would run them, at CI size.

Each notebook has a cell tagged "parameters" (papermill's convention); the run adds
a cell tagged "injected-parameters" after it that shrinks the notebook (fewer steps,
an embedded data set), executes every cell in a fresh kernel with nbclient, fails on
the first cell that raises, and then checks what the cells printed.
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")


def execute(name: str, parameters: dict, workdir, timeout: int = 600):
  """Runs notebooks/<name> with `parameters` injected; returns (notebook, text) where
  text is everything its code cells printed."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters', found {len(tagged)}"
  source = "# Parameters injected by tests/test_notebooks.py\n" + "\n".join(
      f"{k} = {v!r}" for k, v in parameters.items())
  injected = nbformat.v4.new_code_cell(source)
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(tagged[0] + 1, injected)
  client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                          resources={"metadata": {"path": str(workdir)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  nbformat.write(nb, os.path.join(str(workdir), name))  # kept for inspection
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream":
        text.append(out["text"])
      elif "data" in out and "text/plain" in out["data"]:
        text.append(out["data"]["text/plain"])
  return nb, "\n".join(text)


def _number(text: str, label: str) -> float:
  m = re.search(re.escape(label) + r"\s+([0-9.]+)", text)
  assert m, f"{label!r} not in the notebook's output:\n{text[-3000:]}"
  return float(m.group(1))


@pytest.mark.slow
def test_your_own_model_notebook(tmp_path):
  _, text = execute("your_own_model.ipynb", {"PRETRAIN_STEPS": 150, "SEARCH_STEPS": 40,
                                             "FINETUNE_STEPS": 10}, tmp_path)
  dense = _number(text, "dense")
  magnitude = _number(text, "magnitude 90%, no search")
  jackpot = _number(text, "jackpot 90%")
  assert "sparsity of the searched layers: 0.9" in text
  assert "pruned weights still zero: True" in text
  assert dense > 0.85, text
  # The search must improve on magnitude pruning without training a weight.
  assert jackpot > magnitude, text
