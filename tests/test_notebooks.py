"""The notebooks, executed headless as a reader would run them, at CI size.

Each notebook has a cell tagged "parameters" (papermill's convention); the run adds
a cell tagged "injected-parameters" after it that shrinks the notebook (fewer steps,
an embedded data set), executes every cell in a fresh kernel with nbclient, fails on
the first cell that raises, and then checks what the cells printed.
"""

from __future__ import annotations

import json
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
  # The kernel sees one CPU device, as a reader's runtime would, not the 8 simulated
  # devices of the test process (whose in-process all-reduces can stall on a
  # starved 2-core machine).
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  client.execute(env=env)  # raises CellExecutionError on the first failing cell
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


def _check_colab_outputs(nb, text, workdir):
  assert "jackpot 90%" in text and "magnitude-pruned 90%, no search" in text, text[-3000:]
  assert any("image/png" in out.get("data", {}) for c in nb.cells
             for out in c.get("outputs", [])), "no figure was drawn"
  assert os.path.exists(os.path.join(workdir, "jackpot.png"))
  for name in ("variables.safetensors", "masks.safetensors", "torch_state_dict.safetensors"):
    assert name in text, (name, text[-2000:])


@pytest.mark.slow
def test_colab_notebook_at_ci_size_on_digits(tmp_path):
  """The Colab notebook shrunk by its parameters: embedded digits, a small CNN
  pretrained in the notebook, a few steps per stage."""
  workdir = str(tmp_path / "run")
  nb, text = execute("jackpot_colab.ipynb", {
      "DATA": "digits", "MODEL": "digits_cnn", "WEIGHTS": "none", "BATCH_SIZE": 64,
      "NUM_STEPS": 20, "WORKDIR": workdir}, tmp_path)
  _check_colab_outputs(nb, text, workdir)
  summary = json.load(open(os.path.join(workdir, "jackpot", "summary.json")))
  assert summary["steps"] == 20
  assert abs(summary["sparsity"]["of_pruned_layers"] - 0.9) < 1e-3


@pytest.mark.slow
def test_colab_notebook_torchvision_path_on_mock_cifar10(tmp_path):
  """The notebook's full path (a torchvision ResNet-18 through the converter, TFDS
  CIFAR-10), which needs a network here: torchvision's architecture with random
  weights (lottery_jax.convert.torch_twins; torchvision itself is not installed) and
  TFDS's mock data, 2 steps per stage."""
  workdir = str(tmp_path / "run")
  nb, text = execute("jackpot_colab.ipynb", {
      "WEIGHTS": "random", "MOCK_TFDS": True, "BATCH_SIZE": 16, "NUM_STEPS": 2,
      "WORKDIR": workdir}, tmp_path)
  assert "converted resnet18 (random weights): 11,181,642 parameters" in text, text[-3000:]
  _check_colab_outputs(nb, text, workdir)
