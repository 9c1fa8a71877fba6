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

import json
import os
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


def plain(tree):
  """Flax FrozenDicts and the like to plain nested dicts of NumPy arrays."""
  if hasattr(tree, "items"):
    return {k: plain(v) for k, v in tree.items()}
  return np.asarray(jax.device_get(tree))


# ---------------------------------------------------------------- export / load
def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON atomically (a temporary file renamed over `path`), so a
  reader never sees half a file: `summary.json` marks a finished stage."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=False, default=float)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def export(workdir: str, *, model_name: str, model_kwargs: dict, state, masked,
           train_scores: bool) -> None:
  """Writes the finished state's weights, masks and scores (one copy, no sibling axis)."""
  os.makedirs(workdir, exist_ok=True)
  with jax.transfer_guard("allow"):
    params = plain(mask_algebra.apply(state.params, state.masks))
    batch_stats = plain(state.batch_stats)
    masks = plain(state.masks)
    scores = plain(state.scores)
  save_file(flatten_dict({"params": params, "batch_stats": batch_stats}),
            os.path.join(workdir, "variables.safetensors"))
  # The same sub-network in PyTorch layout and names (torchvision's for the
  # torchvision models), masks bit-packed beside it, for use outside JAX.
  from lottery_jax import convert
  convert.export_torch_state_dict(
      {"params": params, "batch_stats": batch_stats}, model_name,
      os.path.join(workdir, "torch_state_dict.safetensors"), masks=masks, **model_kwargs)
  packed = plain(mask_algebra.pack(masks))
  save_file(flatten_dict(packed), os.path.join(workdir, "masks.safetensors"))
  if train_scores:
    searched = flatten_dict(plain(masked))
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
  masks = plain(mask_algebra.unpack(packed, params))
  scores_path = os.path.join(workdir, "scores.safetensors")
  scores = unflatten_dict(load_file(scores_path)) if os.path.exists(scores_path) else {}
  return {"params": params, "batch_stats": variables.get("batch_stats", {}),
          "masks": masks, "scores": scores}


def save_masks(path: str, masks) -> None:
  """Writes bool `masks` (a tree like the params) bit-packed, as a run's
  `masks.safetensors`; such a file can be a stage's `config.mask.source`."""
  save_file(flatten_dict(plain(mask_algebra.pack(plain(masks)))), path)


def load_mask_source(path: str, like) -> dict[str, Any]:
  """What `config.mask.source` names, checked against the params `like`: a finished
  run's workdir (`{"params", "batch_stats", "masks", "scores"}` of `load_run`), or a
  `.safetensors` file of bit-packed masks (`save_masks`; `{"masks"}` only, with
  `params` and `batch_stats` None: programs that rank weights need a run)."""
  if os.path.isdir(path):
    source = load_run(path)
  elif path.endswith(".safetensors") and os.path.isfile(path):
    packed = unflatten_dict(load_file(path))
    try:
      masks = plain(mask_algebra.unpack(packed, plain(like)))
    except (KeyError, ValueError, TypeError) as e:
      raise CheckpointMismatchError(
          f"config.mask.source={path!r}: the packed masks do not fit the model ({e}); "
          "write them with lottery_jax.engine.io.save_masks for this model") from None
    source = {"params": None, "batch_stats": None, "masks": masks, "scores": {}}
  else:
    raise FileNotFoundError(
        f"config.mask.source={path!r} is neither a finished run's workdir nor a "
        ".safetensors file of packed masks")
  check_like({"params": source["masks"]}, {"params": like}, f"{path} (masks)")
  return source


def check_like(loaded: dict, like: dict, source: str) -> None:
  """Raises CheckpointMismatchError listing missing, unexpected and mismatched keys."""
  got, want = flatten_dict(plain(loaded)), flatten_dict(plain(like))
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
                      plain(variables), plain(like))


