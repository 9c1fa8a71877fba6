"""What a run leaves in its workdir, and how to read it back.

* `summary.json`: final and initial eval, sparsity per layer, mask analysis, wall
  time, the config.
* `variables.safetensors`: the masked weights and BatchNorm statistics, keys like
  `params/conv0/kernel` (Flax layout).
* `masks.safetensors`: masks bit-packed (one bit per weight, `masks.pack`), and
  `scores.safetensors` for searches.
* `torch_state_dict.safetensors` (+ `.masks.safetensors`): the masked weights in
  PyTorch layout and names (`lottery_jax.convert.export_torch_state_dict`).
* TensorBoard event files under `tensorboard/`.

`load_run(workdir)` returns all of it as NumPy arrays in nested dicts.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from lottery_jax import masks as mask_algebra
from lottery_jax.engine.errors import CheckpointMismatchError

SEP = "/"


# ---------------------------------------------------------------- flat <-> nested
def flatten_dict(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_dict(v, key + SEP))
    else:
      out[key] = np.asarray(v)
  return out


def unflatten_dict(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    *parents, leaf = key.split(SEP)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def _plain(tree):
  """Flax FrozenDicts and the like to plain nested dicts of NumPy arrays."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return np.asarray(jax.device_get(tree))


# ---------------------------------------------------------------- export / load
def export(workdir: str, run, state) -> None:
  with jax.transfer_guard("allow"):
    params = _plain(mask_algebra.apply(state.params, state.masks))
    batch_stats = _plain(state.batch_stats)
    masks = _plain(state.masks)
    scores = _plain(state.scores)
  save_file(flatten_dict({"params": params, "batch_stats": batch_stats}),
            os.path.join(workdir, "variables.safetensors"))
  # The same sub-network in PyTorch layout and names (torchvision's for the
  # torchvision models), masks bit-packed beside it, for use outside JAX.
  from lottery_jax import convert
  convert.export_torch_state_dict(
      {"params": params, "batch_stats": batch_stats}, run.config.model.name,
      os.path.join(workdir, "torch_state_dict.safetensors"), masks=masks,
      **run.config.model.kwargs.to_dict())
  packed = _plain(mask_algebra.pack(masks))
  save_file(flatten_dict(packed), os.path.join(workdir, "masks.safetensors"))
  if run.program.train_scores:
    searched = flatten_dict(_plain(run.space.searched))
    save_file({k: v for k, v in flatten_dict(scores).items() if bool(searched[k])},
              os.path.join(workdir, "scores.safetensors"))


def load_run(workdir: str) -> dict[str, Any]:
  """`{"params", "batch_stats", "masks", "scores"}` of a finished run, as NumPy.

  `params` are the masked weights; `masks` are boolean; `scores` holds the searched
  leaves only (empty for dense runs).
  """
  path = os.path.join(workdir, "variables.safetensors")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {workdir} is not a finished lottery_jax run "
        "(run `python -m lottery_jax.main --config=... --workdir=...` to completion first)")
  variables = unflatten_dict(load_file(path))
  params = variables["params"]
  packed = unflatten_dict(load_file(os.path.join(workdir, "masks.safetensors")))
  masks = _plain(mask_algebra.unpack(packed, params))
  scores_path = os.path.join(workdir, "scores.safetensors")
  scores = unflatten_dict(load_file(scores_path)) if os.path.exists(scores_path) else {}
  return {"params": params, "batch_stats": variables.get("batch_stats", {}),
          "masks": masks, "scores": scores}


def check_like(loaded: dict, like: dict, source: str) -> None:
  """Raises CheckpointMismatchError listing missing, unexpected and mismatched keys."""
  got, want = flatten_dict(_plain(loaded)), flatten_dict(_plain(like))
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  mismatched = sorted(f"{k}: checkpoint {got[k].shape}, model {want[k].shape}"
                      for k in set(got) & set(want) if got[k].shape != want[k].shape)
  if missing or unexpected or mismatched:
    def first(xs):
      return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
    raise CheckpointMismatchError(
        f"the weights in {source} do not fit the model: "
        f"{len(missing)} missing [{first(missing)}], "
        f"{len(unexpected)} unexpected [{first(unexpected)}], "
        f"{len(mismatched)} shape-mismatched [{first(mismatched)}]. "
        "Check config.model.name and the number of classes of config.data.")


def load_pretrained(path: str, model_name: str, num_classes: int, like: dict) -> dict:
  """Starting weights from a run's workdir, a Flax-layout file, or a PyTorch
  checkpoint (converted by `lottery_jax.convert`). Checked against `like`."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"config.pretrained={path!r} does not exist; give a run's workdir or a "
        ".pt/.pth/.safetensors/.npz checkpoint")
  if os.path.isdir(path):
    loaded = load_run(path)
    variables = {"params": loaded["params"], "batch_stats": loaded["batch_stats"]}
  else:
    variables = None
    if path.endswith(".safetensors"):
      flat = load_file(path)
      if flat and all(k.startswith(("params/", "batch_stats/")) for k in flat):
        variables = unflatten_dict(flat)
    if variables is None:
      from lottery_jax import convert
      variables = convert.load_torch_state_dict(path, model_name, num_classes)
      variables = {"params": variables["params"],
                   "batch_stats": variables.get("batch_stats", {})}
  variables.setdefault("batch_stats", {})
  check_like(variables, like, path)
  return jax.tree.map(lambda a, b: np.asarray(a, dtype=np.asarray(b).dtype),
                      _plain(variables), _plain(like))


# ---------------------------------------------------------------- logging
class MetricWriter:
  """TensorBoard scalars (tensorboardX: no TensorFlow needed)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled and jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, row: dict[str, Any]) -> None:
    if self._writer is None:
      return
    for k, v in row.items():
      if isinstance(v, (int, float, np.floating, np.integer)) and k != "step":
        self._writer.add_scalar(k, float(v), step)
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


class _Progress:

  def __init__(self, total, initial, enabled):
    self._bar = None
    if enabled and sys.stdout.isatty() and jax.process_index() == 0:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True)
    self._last = initial

  @property
  def active(self) -> bool:
    return self._bar is not None

  def update(self, step, row):
    if self._bar is None:
      return
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{row['train/loss']:.4f}",
                          acc=f"{row['train/accuracy']:.3f}")

  def close(self):
    if self._bar is not None:
      self._bar.close()


def progress_bar(total: int, initial: int, enabled: bool) -> _Progress:
  return _Progress(total, initial, enabled)


def log_row(step: int, fetched: dict, n: int, searched) -> dict[str, Any]:
  row: dict[str, Any] = {"step": step, "train/loss": float(fetched["loss"]) / n,
                         "train/accuracy": float(fetched["accuracy"]) / n}
  swaps = flatten_dict(_plain(fetched["swaps"]))
  flags = flatten_dict(_plain(searched))
  total = 0.0
  for k, v in swaps.items():
    if bool(flags[k]):
      row[f"swaps/{k}"] = float(v) / n   # mean swaps per step in this interval
      total += float(v) / n
  row["swaps/total"] = total
  return row


# ---------------------------------------------------------------- summary
def summarize(run, state, *, initial_eval, final_eval, history, wall_time_s,
              config_json) -> dict[str, Any]:
  from lottery_jax.search import jackpot

  with jax.transfer_guard("allow"):
    masks = _plain(state.masks)
    summ = mask_algebra.summary(masks)
    flags = flatten_dict(_plain(run.space.searched))
    per_layer = {k: float(1.0 - np.mean(v)) for k, v in flatten_dict(masks).items()
                 if bool(flags[k])}
    pruned = sum(int(np.size(v) - np.sum(v)) for k, v in flatten_dict(masks).items()
                 if bool(flags[k]))
    n_searched = sum(int(np.size(v)) for k, v in flatten_dict(masks).items()
                     if bool(flags[k]))
    out: dict[str, Any] = {
        "final_eval": final_eval,
        "initial_eval": initial_eval,
        "steps": int(state.step),
        "epochs": int(state.step) / run.data.steps_per_epoch,
        "wall_time_s": wall_time_s,
        "sparsity": {
            "target": run.config.sparsity,
            "of_pruned_layers": pruned / max(n_searched, 1),
            "of_all_weights": summ.total_all.sparsity,
            "per_layer": per_layer,
        },
        "history": history,
        "config": config_json,
    }
    if run.program.train_scores and run.config.analysis.enabled:
      # Saliency from training batches (shuffled, as SNIP does), never the test split.
      train_batches = run.data.train_iter()
      batches = [next(train_batches) for _ in range(int(run.config.analysis.saliency_batches))]
      saliency = jackpot.saliency_scores(run.model, run.pretrained, batches,
                                         run.space.searched)
      out["mask_analysis"] = jackpot.mask_analysis(
          masks, run.pretrained["params"], run.space, initial_masks=run.initial_masks,
          key=run.mask_key, saliency=saliency)
  return out
