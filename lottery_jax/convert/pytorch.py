"""PyTorch state dicts in and out of the model zoo's Flax variables.

Naming. Every zoo model names its Flax modules after the PyTorch state-dict keys
with `.` written as `_`; the leaf names map as

  ==========  ================  =========================================
  Flax leaf   PyTorch suffix    layout change
  ==========  ================  =========================================
  kernel      weight            conv OIHW -> HWIO (1-D: OIW -> WIO),
                                linear (out, in) -> (in, out)
  scale       weight            none (BatchNorm)
  bias        bias              none
  mean        running_mean      none (batch_stats)
  var         running_var       none (batch_stats)
  ==========  ================  =========================================

so `params["layer1_0"]["conv1"]["kernel"]` is `layer1.0.conv1.weight`. A 1x1-conv
classifier (the lottery-jackpots models) and a dense one are interchangeable:
a (C, D, 1, 1) checkpoint weight loads into a (D, C) dense kernel and a (C, D)
one into a (1, 1, D, C) conv kernel. `num_batches_tracked` is ignored on the
way in and written as 0 on the way out.

The lottery-jackpots checkpoints carry, beside each masked conv's `X.weight`, the
float scores `X.mask` and the binary mask `X.b_mask`; they come back as
`"scores"` and `"masks"` trees shaped like `params` (boolean masks, True = kept;
leaves without an entry get ones / all-True, the "not pruned" convention of
`lottery_jax.masks`).
"""

from __future__ import annotations

import io as io_lib
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lottery_jax import models

PyTree = Any
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_MASK_SUFFIXES = {"mask": "scores", "b_mask": "masks"}
_SHOW = 5  # keys listed per category in mismatch errors
TORCH_HINT = ("reading .pt/.pth checkpoints needs PyTorch: pip install 'lottery-jax[torch]' "
              "(or convert the file to .safetensors or .npz where torch is installed)")


# --------------------------------------------------------------------------- #
# Names and layouts
# --------------------------------------------------------------------------- #


def torch_key(path: tuple[str, ...]) -> str:
  """PyTorch state-dict key of a Flax leaf path (without the collection name)."""
  *modules, leaf = path
  if leaf not in _LEAF_TO_TORCH:
    raise ValueError(f"no PyTorch name for Flax leaf {'/'.join(path)!r}; "
                     f"known leaf names: {sorted(_LEAF_TO_TORCH)}")
  return ".".join([m.replace("_", ".") for m in modules] + [_LEAF_TO_TORCH[leaf]])


def _to_torch_layout(leaf: str, arr: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return arr
  if arr.ndim == 2:
    return arr.T
  # HWIO -> OIHW (and WIO -> OIW): output, input, then the spatial axes in order.
  return arr.transpose((arr.ndim - 1, arr.ndim - 2) + tuple(range(arr.ndim - 2)))


def _to_flax_layout(leaf: str, arr: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return arr
  if arr.ndim == 2:
    return arr.T
  return arr.transpose(tuple(range(2, arr.ndim)) + (1, 0))


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(_to_torch_layout(leaf, np.empty(shape, np.bool_)).shape)


def _squeeze_1x1(shape: tuple[int, ...]) -> tuple[int, ...]:
  """(C, D, 1, 1) -> (C, D): a 1x1 conv and a linear layer hold the same weight."""
  if len(shape) == 4 and shape[2:] == (1, 1):
    return shape[:2]
  return shape


def _shapes_compatible(leaf: str, src: tuple[int, ...], want: tuple[int, ...]) -> bool:
  if src == want:
    return True
  return leaf == "kernel" and _squeeze_1x1(src) == _squeeze_1x1(want)


def _flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[tuple(str(getattr(k, "key", k)) for k in path)] = leaf
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = leaf
  return out


def _model_shapes(model_name: str, num_classes: int, **model_kw) -> dict:
  model = models.get(model_name, num_classes=num_classes, **model_kw)
  x = jnp.zeros((1,) + models.spec(model_name).input_shape, jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return {c: _flat(shapes.get(c, {})) for c in ("params", "batch_stats")}


def _expected_keys(shapes: dict) -> dict[str, tuple[str, tuple[str, ...], Any]]:
  """torch key -> (collection, flax path, flax ShapeDtypeStruct)."""
  out = {}
  for collection, flat in shapes.items():
    for path, s in flat.items():
      out[torch_key(path)] = (collection, path, s)
  return out


# --------------------------------------------------------------------------- #
# Reading checkpoints
# --------------------------------------------------------------------------- #


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _load_torch_file(path: str, data: bytes) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path}: {TORCH_HINT}") from e
  obj = torch.load(io_lib.BytesIO(data), map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping):
    for key in ("state_dict", "model_state_dict", "model"):
      if key in obj and isinstance(obj[key], Mapping):
        return obj[key]
    return obj
  if hasattr(obj, "state_dict"):
    return obj.state_dict()
  raise ValueError(f"{path}: expected a state dict (or a dict with a 'state_dict' entry), "
                   f"got {type(obj).__name__}")


def read_state_dict(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Reads a flat `{key: array}` state dict from a file or a mapping.

  Args:
    path_or_dict: a `.pt`/`.pth` file (needs torch; a dict with a `state_dict`
      entry, as the lottery-jackpots checkpoints, is unwrapped), a `.safetensors`
      or `.npz` file (no torch needed), or a mapping of arrays or tensors.

  Returns:
    Keys with any DataParallel `module.` prefix removed, values as NumPy arrays.
  """
  if isinstance(path_or_dict, Mapping):
    raw = path_or_dict.get("state_dict", path_or_dict)
  else:
    path = os.fspath(path_or_dict)
    ext = os.path.splitext(path)[1].lower()
    if not epath.Path(path).exists():
      raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if ext not in (".pt", ".pth", ".bin", ".tar", ".safetensors", ".npz"):
      raise ValueError(f"{path}: unknown checkpoint format {ext!r}; expected .pt, .pth, "
                       ".safetensors or .npz")
    data = epath.Path(path).read_bytes()
    try:
      if ext == ".safetensors":
        import safetensors.numpy  # pylint: disable=import-outside-toplevel
        raw = safetensors.numpy.load(data)
      elif ext == ".npz":
        with np.load(io_lib.BytesIO(data), allow_pickle=False) as npz:
          raw = {k: npz[k] for k in npz.files}
      else:
        raw = _load_torch_file(path, data)
    except ImportError:
      raise
    except Exception as e:  # each format fails its own way on a damaged file
      raise ValueError(f"{path} is not a readable {ext} checkpoint ({type(e).__name__}: "
                       f"{e}): it is truncated or damaged; download or export it "
                       "again") from None
  out = {}
  for key, value in raw.items():
    key = str(key)
    while key.startswith("module."):
      key = key[len("module."):]
    out[key] = _to_numpy(value)
  return out


def _listing(what: str, items: list[str]) -> str:
  if not items:
    return f"0 {what}"
  shown = ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")
  return f"{len(items)} {what}: {shown}"


def load_torch_state_dict(path_or_dict: str | os.PathLike | Mapping[str, Any], model_name: str,
                          num_classes: int, **model_kw: Any) -> dict[str, PyTree]:
  """Converts a PyTorch state dict into Flax variables for a registered model.

  Supports torchvision ResNet-18/34/50 and MobileNetV2 state dicts (into
  `resnet18/34/50`, `mobilenet_v2`), the lottery-jackpots checkpoints (wide
  ResNet-32 -> `jackpot_resnet32`, VGG-19 -> `jackpot_vgg19`, ResNet-50 ->
  `resnet50`), files written by `export_torch_state_dict`, and any zoo model whose
  PyTorch counterpart uses the same names. Everything is checked before any
  array is converted.

  Args:
    path_or_dict: see `read_state_dict`.
    model_name: registry name of the target model.
    num_classes: the model's number of classes.
    **model_kw: extra builder arguments (e.g. `bn_affine=False`).

  Returns:
    `{"params", "batch_stats"}` (float32 jax arrays, the model's `init` layout),
    plus `"scores"` when the checkpoint has jackpot `X.mask` entries and `"masks"`
    (boolean) when it has `X.b_mask` entries or a `<name>.masks.safetensors` file
    written by `export_torch_state_dict` lies beside it.

  Raises:
    ValueError: the checkpoint does not fit the model: lists the missing,
      unexpected and shape-mismatched keys (the first few of each, with counts).
    ImportError: a `.pt`/`.pth` file without torch installed.
  """
  source = (f"checkpoint {os.fspath(path_or_dict)!r}"
            if not isinstance(path_or_dict, Mapping) else "state dict")
  state = read_state_dict(path_or_dict)
  shapes = _model_shapes(model_name, num_classes, **model_kw)
  expected = _expected_keys(shapes)

  extras: dict[str, dict[str, np.ndarray]] = {"scores": {}, "masks": {}}
  weights: dict[str, np.ndarray] = {}
  for key, value in state.items():
    base, _, suffix = key.rpartition(".")
    if suffix in _IGNORED_SUFFIXES:
      continue
    if suffix in _MASK_SUFFIXES and base + ".weight" in expected:
      extras[_MASK_SUFFIXES[suffix]][base + ".weight"] = value
      continue
    weights[key] = value
  mask_file = _masks_path(path_or_dict) if not isinstance(path_or_dict, Mapping) else None
  if mask_file and epath.Path(mask_file).exists():
    # Masks written by export_torch_state_dict; checked below like the weights.
    extras["masks"].update(read_packed_masks(mask_file))

  missing = [k for k in expected if k not in weights]
  unexpected = [k for k in weights if k not in expected]
  mismatched = []
  for key, value in weights.items():
    if key not in expected:
      continue
    _, path, s = expected[key]
    want = _torch_shape(path[-1], s.shape)
    if not _shapes_compatible(path[-1], value.shape, want):
      mismatched.append(f"{key} (checkpoint {tuple(value.shape)}, model {want})")
  for kind, entries in extras.items():
    for key, value in entries.items():
      if key not in weights:
        unexpected.append(f"{key} ({kind})")
      elif value.shape != weights[key].shape:
        mismatched.append(f"{key} {kind} (checkpoint {tuple(value.shape)}, "
                          f"weight {weights[key].shape})")
  if missing or unexpected or mismatched:
    parts = [_listing("missing keys", missing), _listing("unexpected keys", unexpected),
             _listing("shape mismatches", mismatched)]
    raise ValueError(
        f"{source} does not fit model {model_name!r} with num_classes={num_classes}"
        f"{' and ' + repr(model_kw) if model_kw else ''} (a checkpoint for another "
        f"architecture or class count?): " + "; ".join(parts))

  def convert(key: str, value: np.ndarray, dtype) -> jax.Array:
    _, path, s = expected[key]
    arr = _to_flax_layout(path[-1], value).reshape(s.shape)
    return jnp.asarray(arr, dtype=dtype)

  flat: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for key, (collection, path, s) in expected.items():
    flat[collection][path] = convert(key, weights[key], s.dtype)
  variables = {c: _unflat(f) for c, f in flat.items()}

  for kind, entries in extras.items():
    if not entries:
      continue
    out = {}
    for key, (collection, path, s) in expected.items():
      if collection != "params":
        continue
      if key in entries:
        value = convert(key, entries[key], s.dtype)
        out[path] = value > 0.5 if kind == "masks" else value
      else:
        out[path] = (jnp.ones(s.shape, jnp.bool_) if kind == "masks"
                     else jnp.ones(s.shape, s.dtype))
    variables[kind] = _unflat(out)
  return variables


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _masks_path(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  stem = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
  return stem + ".masks.safetensors"


def read_packed_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `<name>.masks.safetensors` file: `{torch key: bool array (torch layout)}`.

  Each entry is `np.packbits` of the flattened (row-major, PyTorch layout) boolean
  mask; the shapes are in the file's metadata under `shapes` (JSON).
  """
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  with safe_open(os.fspath(path), framework="np") as f:
    meta = f.metadata() or {}
    if "shapes" not in meta:
      raise ValueError(f"{path}: not a packed-mask file (no 'shapes' metadata)")
    shapes = json.loads(meta["shapes"])
    out = {}
    for key in f.keys():
      shape = tuple(shapes[key])
      bits = np.unpackbits(f.get_tensor(key), count=int(np.prod(shape)))
      out[key] = bits.astype(bool).reshape(shape)
  return out


def export_torch_state_dict(variables: Mapping[str, PyTree], model_name: str,
                            path: str | os.PathLike, masks: PyTree | None = None,
                            **model_kw: Any) -> dict[str, str]:
  """Writes variables as a PyTorch-compatible safetensors state dict.

  The weights are written masked (`kernel * mask`) in PyTorch layout and names
  (torchvision's for the torchvision models, the lottery-jackpots reference's for
  `jackpot_*`), with `num_batches_tracked = 0` for every BatchNorm so that
  `torch_model.load_state_dict(safetensors.torch.load_file(path))` works strictly.
  With `masks`, the masks go bit-packed to `<name>.masks.safetensors` beside it:
  one uint8 tensor per masked weight key, `np.packbits` of the flattened boolean
  mask in PyTorch layout, the shapes as JSON in the metadata (`shapes`).
  `load_torch_state_dict(path, ...)` reads both back: the round trip is the
  identity on masked weights, batch stats and masks.

  Args:
    variables: `{"params", "batch_stats"}` of the model.
    model_name: registry name (the variables are checked against it).
    path: output `.safetensors` file.
    masks: optional boolean pytree shaped like `variables["params"]`.
    **model_kw: builder arguments the variables were made with (e.g. `bn_affine`).

  Returns:
    `{"state_dict": path, "masks": masks path}` (the latter only with masks).
  """
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if not path.endswith(".safetensors"):
    raise ValueError(f"export path must end in .safetensors, got {path!r}")
  params = _flat(variables["params"])
  stats = _flat(variables.get("batch_stats", {}))
  classifier = models.spec(model_name).classifier
  kernel = params.get(tuple(classifier) + ("kernel",))
  if kernel is None:
    raise ValueError(f"variables have no classifier kernel at {'/'.join(classifier)!r} "
                     f"(model {model_name!r}); are they for another model?")
  shapes = _model_shapes(model_name, int(kernel.shape[-1]), **model_kw)
  for collection, got in (("params", params), ("batch_stats", stats)):
    want = {p: tuple(s.shape) for p, s in shapes[collection].items()}
    have = {p: tuple(np.shape(v)) for p, v in got.items()}
    if want != have:
      diff = sorted("/".join(p) for p in set(want.items()) ^ set(have.items()))
      raise ValueError(f"variables[{collection!r}] do not fit model {model_name!r}: "
                       + _listing("differing leaves", diff))
  flat_masks = _flat(masks) if masks is not None else {}
  if masks is not None and set(flat_masks) != set(params):
    raise ValueError("masks must have the structure of variables['params']")

  tensors: dict[str, np.ndarray] = {}
  packed: dict[str, np.ndarray] = {}
  mask_shapes: dict[str, list[int]] = {}
  bn_modules = set()
  for path_, value in params.items():
    arr = np.asarray(value, np.float32)
    key = torch_key(path_)
    if path_ in flat_masks:
      mask = np.asarray(flat_masks[path_]).astype(bool)
      arr = np.where(mask, arr, np.zeros_like(arr))
      if arr.ndim >= 2 or not mask.all():
        m = _to_torch_layout(path_[-1], mask)
        packed[key] = np.packbits(m.reshape(-1))
        mask_shapes[key] = list(m.shape)
    tensors[key] = np.ascontiguousarray(_to_torch_layout(path_[-1], arr))
  for path_, value in stats.items():
    tensors[torch_key(path_)] = np.ascontiguousarray(np.asarray(value, np.float32))
    bn_modules.add(torch_key(path_).rpartition(".")[0])
  for module in sorted(bn_modules):
    tensors[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
  # Through epath (the workdir may be gs://), as plain files that honour the umask.
  epath.Path(path).write_bytes(
      safetensors.numpy.save(tensors, metadata={"format": "pt", "model": model_name}))
  out = {"state_dict": path}
  if masks is not None:
    mpath = _masks_path(path)
    epath.Path(mpath).write_bytes(safetensors.numpy.save(
        packed, metadata={"shapes": json.dumps(mask_shapes), "model": model_name}))
    out["masks"] = mpath
  return out
