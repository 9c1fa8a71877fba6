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

Every path here is an `etils.epath.Path` (or a string turned into one), so a workdir
may be anywhere Orbax can write: a local or shared filesystem, or `gs://bucket/run`.
Writes are atomic (a temporary file renamed over the target) and create files with
the default mode, so they honour the umask. Only process 0 writes: callers check
`is_lead()`. Running out of space raises `DiskFullError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from etils import epath
from safetensors import SafetensorError

from lottery_jax import masks as mask_algebra
from lottery_jax.engine import faults
from lottery_jax.engine.errors import CheckpointMismatchError, DiskFullError

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


# ---------------------------------------------------------------- files
PathLike = str | os.PathLike


def is_lead() -> bool:
  """Whether this process writes the workdir's files (JSON, exports, TensorBoard, the
  lock): process 0 only. Orbax coordinates the checkpoint writes of every process."""
  return jax.process_index() == 0


def is_remote(path: PathLike) -> bool:
  """A path of an object store (`gs://`, `s3://`...) rather than a filesystem."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
  p = epath.Path(path)
  return p if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"


@contextlib.contextmanager
def disk_full_names(path: PathLike, what: str = "writing"):
  """Turns an out-of-space OSError into `DiskFullError` naming `path`."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  (TensorStore reports ENOSPC as ValueError)
    if (isinstance(e, OSError) and e.errno in _NO_SPACE) or (
        not isinstance(e, DiskFullError) and _NO_SPACE_TEXT in str(e)):
      raise DiskFullError(
          f"no space left on the device while {what} {os.fspath(path)}; nothing already "
          "written was changed: free space and run the same command again") from None
    raise


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` atomically: a reader sees the old file or the new one, never half
  of one (on object stores an upload is atomic by itself)."""
  path = epath.Path(path)
  tmp = path.parent / f".{path.name}.tmp"
  with disk_full_names(path):
    try:
      tmp.write_bytes(data)
      tmp.replace(path)
    except BaseException:
      if tmp.exists():
        tmp.unlink()
      raise


def write_json(path: PathLike, obj: Any) -> None:
  """Writes `obj` as JSON atomically: `summary.json` marks a finished stage."""
  write_bytes(path, json.dumps(obj, indent=1, sort_keys=False, default=float).encode())


def read_json(path: PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def save_safetensors(tensors: dict[str, np.ndarray], path: PathLike,
                     metadata: dict[str, str] | None = None) -> None:
  write_bytes(path, safetensors.numpy.save(tensors, metadata=metadata))


def load_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """The arrays of a `.safetensors` file; a damaged file raises ValueError naming it."""
  path = epath.Path(path)
  try:
    return safetensors.numpy.load(path.read_bytes())
  except (SafetensorError, ValueError) as e:
    raise ValueError(f"{path} is not a readable .safetensors file ({e}): it is truncated "
                     "or damaged; write or download it again") from None


# ---------------------------------------------------------------- export / load


def export(workdir: str, *, model_name: str, model_kwargs: dict, state, masked,
           train_scores: bool) -> None:
  """Writes the finished state's weights, masks and scores (one copy, no sibling axis)."""
  workdir = epath.Path(workdir)
  with disk_full_names(workdir, "creating"):
    workdir.mkdir(parents=True, exist_ok=True)
  with jax.transfer_guard("allow"):
    params = plain(mask_algebra.apply(state.params, state.masks))
    batch_stats = plain(state.batch_stats)
    masks = plain(state.masks)
    scores = plain(state.scores)
  save_safetensors(flatten_dict({"params": params, "batch_stats": batch_stats}),
                   workdir / "variables.safetensors")
  faults.point("export")  # the export half written
  # The same sub-network in PyTorch layout and names (torchvision's for the
  # torchvision models), masks bit-packed beside it, for use outside JAX.
  from lottery_jax import convert
  convert.export_torch_state_dict(
      {"params": params, "batch_stats": batch_stats}, model_name,
      workdir / "torch_state_dict.safetensors", masks=masks, **model_kwargs)
  packed = plain(mask_algebra.pack(masks))
  save_safetensors(flatten_dict(packed), workdir / "masks.safetensors")
  if train_scores:
    searched = flatten_dict(plain(masked))
    save_safetensors({k: v for k, v in flatten_dict(scores).items() if bool(searched[k])},
                     workdir / "scores.safetensors")


def load_run(workdir: PathLike) -> dict[str, Any]:
  """`{"params", "batch_stats", "masks", "scores"}` of a finished run, as NumPy.

  `params` are the masked weights; `masks` are boolean; `scores` holds the searched
  leaves only (empty for dense runs).
  """
  workdir = epath.Path(workdir)
  path = workdir / "variables.safetensors"
  if not path.exists():
    raise FileNotFoundError(
        f"{path} does not exist: {workdir} is not a finished lottery_jax run "
        "(run `python -m lottery_jax.main --config=... --workdir=...` to completion first)")
  variables = unflatten_dict(load_safetensors(path))
  params = variables["params"]
  packed = unflatten_dict(load_safetensors(workdir / "masks.safetensors"))
  masks = plain(mask_algebra.unpack(packed, params))
  scores_path = workdir / "scores.safetensors"
  scores = unflatten_dict(load_safetensors(scores_path)) if scores_path.exists() else {}
  return {"params": params, "batch_stats": variables.get("batch_stats", {}),
          "masks": masks, "scores": scores}


def save_masks(path: PathLike, masks) -> None:
  """Writes bool `masks` (a tree like the params) bit-packed, as a run's
  `masks.safetensors`; such a file can be a stage's `config.mask.source`."""
  save_safetensors(flatten_dict(plain(mask_algebra.pack(plain(masks)))), path)


def load_mask_source(path: PathLike, like) -> dict[str, Any]:
  """What `config.mask.source` names, checked against the params `like`: a finished
  run's workdir (`{"params", "batch_stats", "masks", "scores"}` of `load_run`), or a
  `.safetensors` file of bit-packed masks (`save_masks`; `{"masks"}` only, with
  `params` and `batch_stats` None: programs that rank weights need a run)."""
  p = epath.Path(path)
  if p.is_dir():
    source = load_run(path)
  elif p.name.endswith(".safetensors") and p.exists():
    packed = unflatten_dict(load_safetensors(path))
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


def load_pretrained(path: PathLike, model_name: str, num_classes: int, like: dict) -> dict:
  """Starting weights from a run's workdir, a Flax-layout file, or a PyTorch
  checkpoint (converted by `lottery_jax.convert`). Checked against `like`."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(
        f"config.pretrained={os.fspath(path)!r} does not exist; give a run's workdir or a "
        ".pt/.pth/.safetensors/.npz checkpoint")
  if p.is_dir():
    loaded = load_run(path)
    variables = {"params": loaded["params"], "batch_stats": loaded["batch_stats"]}
  else:
    variables = None
    if p.name.endswith(".safetensors"):
      flat = load_safetensors(path)
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


