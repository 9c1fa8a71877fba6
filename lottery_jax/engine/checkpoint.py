"""Orbax checkpoints of the train state, the data iterator and the run's config.

Layout under `<workdir>/checkpoints/<step>/`: `state` (the TrainState pytree),
`data` (the input iterator's JSON state) and `meta` (config, step, and a digest of
the state). Saves are atomic (Orbax writes to a temporary directory and renames), so
a run killed mid-save, even with SIGKILL, resumes from the last complete checkpoint.

A complete checkpoint can still be damaged afterwards (a truncated or deleted file,
flipped bytes on a bad disk or a partial copy). `restore_latest_good` restores the
newest checkpoint that reads back and matches its digest (CRC-32 of every leaf's
bytes, written at save time), moves the damaged newer ones aside to
`<checkpoints>.damaged/` with a warning naming what was wrong, and raises
`DamagedCheckpointError` (touching nothing) when no good checkpoint is left.

Memory: Orbax runs every save in new threads, and glibc gives each thread a malloc
arena that keeps its high-water mark; free memory in the arenas and at the middle of
the heap is not handed back to the OS on its own. With `release_memory` (the
default; `config.checkpoint_release_memory`) each save first calls glibc's
`malloc_trim(0)`, once the previous save has finished, which returns that free
memory (a no-op where the C library is not glibc). docs/reliability.md ("Soak") has
the measurements.

Packed state: the `state` item holds one 1-D array per dtype (`float32`, `bool`,
...), every leaf's bytes end to end in `jax.tree.leaves` order, and `meta` records
how to cut them apart (`state_packed`: each leaf's dtype and shape, and the tree's
paths, empty nodes included). Orbax and TensorStore's Python binding leave memory
behind per array written (about 0.8 KiB per array per save in orbax-checkpoint
0.12.8 / tensorstore 0.1.86, e.g. a `KvStore.Spec.to_json()` per array): over 300
back-to-back saves the soak's state of 65 leaves grew the process by 55 KiB per save,
packed into 5 arrays by 6 (docs/reliability.md, "Soak"). Packing is only a layout: the bytes of every leaf are unchanged, and restore cuts
them back out bit for bit. A state that cannot be packed (leaves of another process,
extended dtypes such as typed PRNG keys, a tree key kind not handled below) is saved
as before, one array per leaf; checkpoints without `state_packed` in their meta (all
those written before) restore as before.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import re
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lottery_jax.engine import faults, io
from lottery_jax.engine.errors import DamagedCheckpointError

log = logging.getLogger("lottery_jax")

DIGEST_KEY = "state_crc32"
PACKED_KEY = "state_packed"  # in meta: the packed layout (absent: one array per leaf)
PACKED_VERSION = 1


def _host_leaves(state) -> tuple[list, list | None]:
  """(paths, host copies of the leaves); the copies are None when the state spans
  several processes (each sees only its shards)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  paths = [p for p, _ in leaves]
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return paths, None
  with jax.transfer_guard("allow"):
    return paths, jax.device_get([x for _, x in leaves])


def _digest(paths, host) -> dict[str, int]:
  return {jax.tree_util.keystr(p): zlib.crc32(np.ascontiguousarray(x).tobytes())
          for p, x in zip(paths, host)}


def state_digest(state) -> dict[str, int] | None:
  """CRC-32 of each leaf's bytes (host copies), keyed by path; None when the state
  spans several processes (each sees only its shards; Orbax checks those)."""
  paths, host = _host_leaves(state)
  return None if host is None else _digest(paths, host)


def _key_json(key) -> list | None:
  """A tree key as JSON, spelt the way Orbax saves the tree (attributes and named
  tuple fields become dict keys, tuples lists); None for a kind not handled."""
  if isinstance(key, jax.tree_util.DictKey):
    return ["d", str(key.key)]
  if isinstance(key, jax.tree_util.GetAttrKey):
    return ["d", key.name]
  if isinstance(key, jax.tree_util.SequenceKey):
    return ["s", int(key.idx)]
  return None


def _one_level(x) -> list:
  return jax.tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)[0]


def _is_empty_or_leaf(x) -> bool:
  return jax.tree_util.all_leaves([x]) or not _one_level(x)


def _empty_json(x):
  """An empty node as Orbax restores it without a target: {} [] () stay, None and
  empty custom nodes (optax's EmptyState) come back as None."""
  if type(x) is dict:
    return "{}"
  if type(x) is list:
    return "[]"
  if type(x) is tuple:
    return "()"
  return None


_EMPTY = {"{}": dict, "[]": list, "()": tuple}


def pack(state, host: list) -> tuple[dict[str, np.ndarray], dict] | None:
  """(one 1-D array per dtype, the layout for meta) of a state whose leaves' host
  copies are `host`; None when the state cannot be packed (then it is saved one
  array per leaf)."""
  if jax.process_count() != 1 or not host:
    return None
  tree = []
  index = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_empty_or_leaf)[0]:
    keys = [_key_json(k) for k in path]
    if any(k is None for k in keys):
      return None
    if jax.tree_util.all_leaves([x]):
      tree.append([keys, index])
      index += 1
    else:
      tree.append([keys, _empty_json(x)])
  if index != len(host) or (len(tree) == 1 and not tree[0][0]):
    return None  # a leaf (or empty node) at the root: nothing to gain
  arrays = [np.asarray(x) for x in host]
  if not all(a.dtype.kind in "biufc" or a.dtype.name in _ML_DTYPES for a in arrays):
    return None  # strings, objects, typed PRNG keys: one array per leaf as before
  groups: dict[str, list[np.ndarray]] = {}
  for a in arrays:
    groups.setdefault(a.dtype.name, []).append(np.ascontiguousarray(a).reshape(-1))
  packed = {name: np.concatenate(parts) for name, parts in groups.items()}
  layout = {"version": PACKED_VERSION, "tree": tree,
            "leaves": [[a.dtype.name, list(a.shape)] for a in arrays]}
  return packed, layout


# ml_dtypes' types that TensorStore stores (int4 and others are saved per leaf).
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz",
              "float8_e4m3fnuz", "float8_e5m2fnuz")


def _packed_target(layout: dict) -> dict[str, np.ndarray]:
  sizes: dict[str, int] = {}
  for name, shape in layout["leaves"]:
    sizes[name] = sizes.get(name, 0) + int(np.prod(shape, dtype=np.int64))
  return {name: np.zeros((n,), jax.numpy.dtype(name)) for name, n in sizes.items()}


def unpack(packed: dict[str, np.ndarray], layout: dict) -> list[np.ndarray]:
  """The leaves (host arrays, `jax.tree.leaves` order) of a packed state."""
  if layout.get("version") != PACKED_VERSION:
    raise ValueError(f"packed layout version {layout.get('version')!r} is not "
                     f"{PACKED_VERSION} (written by a newer lottery_jax?)")
  offsets = {name: 0 for name in packed}
  leaves = []
  for name, shape in layout["leaves"]:
    flat = packed[name]
    n = int(np.prod(shape, dtype=np.int64))
    start = offsets[name]
    if start + n > flat.size or flat.dtype.name != name:
      raise ValueError(f"the packed {name} array is shorter than its layout or of "
                       "another dtype")
    leaves.append(flat[start:start + n].reshape(shape))
    offsets[name] = start + n
  if any(offsets[name] != packed[name].size for name in packed):
    raise ValueError("a packed array is longer than its layout")
  return leaves


def _rebuild(layout: dict, leaves: list):
  """The packed state as Orbax restores a tree without a target: nested dicts (for
  dicts, dataclasses, named tuples) and lists (for tuples)."""
  root = None
  for keys, value in layout["tree"]:
    value = leaves[value] if isinstance(value, int) else (
        _EMPTY[value]() if value in _EMPTY else None)
    if root is None:
      root = {} if keys[0][0] == "d" else []
    node = root
    for i, (kind, key) in enumerate(keys):
      last = i == len(keys) - 1
      child = value if last else ({} if keys[i + 1][0] == "d" else [])
      if kind == "d":
        if last or key not in node:
          node[key] = child
      elif key == len(node):
        node.append(child)
      node = node[key]
  return root


_TRIM = None  # glibc's malloc_trim, resolved on first use; False where unavailable


def release_free_memory() -> bool:
  """Hands the C allocator's free memory back to the OS: glibc's `malloc_trim(0)`
  (every arena, and free pages in the middle of the heap, since glibc 2.8). Only
  free memory is released, so it cannot change results; the cost is the walk over
  the arenas (milliseconds here) and page faults when the memory is used again.
  Returns False, doing nothing, where the C library is not glibc (musl, macOS,
  Windows) or the call is unavailable."""
  global _TRIM
  if _TRIM is None:
    _TRIM = False
    try:
      if os.confstr("CS_GNU_LIBC_VERSION"):  # "glibc 2.36"; ValueError/None elsewhere
        fn = ctypes.CDLL(None).malloc_trim
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _TRIM = fn
    except (AttributeError, OSError, ValueError, TypeError):
      pass
  if not _TRIM:
    return False
  _TRIM(0)
  return True


class Checkpointer:

  def __init__(self, directory, *, keep: int | None = 2, create: bool = True,
               release_memory: bool = True):
    self.directory = io.absolute(directory)
    self._keep, self._create = keep, create
    self._release_memory = release_memory
    self.manager = self._manager()

  def _manager(self):
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=self._create,
            cleanup_tmp_directories=self._create),
        item_names=("state", "data", "meta"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    # Orbax serialises the JSON items in the background write, after `save` returns;
    # the caller may go on mutating what it passed (the loop once appended to a
    # history list in meta), so the checkpoint takes its own copies now.
    meta, data_state = copy.deepcopy(meta), copy.deepcopy(data_state)
    paths, host = _host_leaves(state)
    meta = {**meta, DIGEST_KEY: None if host is None else _digest(paths, host)}
    packed = None if host is None else pack(state, host)
    if packed is not None:
      state, meta[PACKED_KEY] = packed
    # Orbax copies device buffers to the host before `save` returns, so the state
    # may be donated to the next step while the write finishes in the background.
    with jax.transfer_guard("allow"), io.disk_full_names(self.directory / str(step),
                                                         "checkpointing to"):
      if self._release_memory:
        # Orbax would wait for the previous save inside `save` anyway; waiting here
        # first lets the trim return what that save's threads left behind.
        self.manager.wait_until_finished()
        release_free_memory()
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave(data_state),
              meta=ocp.args.JsonSave(meta),
          ),
          force=True,
      )
    faults.point("checkpoint")  # Orbax's background write under way

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def restore(self, step: int, like_state) -> tuple[Any, dict, dict]:
    """Restores onto the shardings and dtypes of `like_state`; raises
    DamagedCheckpointError if it does not read back or its digest differs."""
    meta = self._checked_meta(step)
    layout = meta.get(PACKED_KEY)
    if layout is None:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    else:
      target = _packed_target(layout)
    try:
      with jax.transfer_guard("allow"):
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=ocp.args.JsonRestore(),
            ),
        )
        state = restored["state"]
        if layout is not None:
          state = _onto(like_state, unpack(state, layout))
    except Exception as e:  # Orbax/TensorStore fail in many ways on damaged files
      raise DamagedCheckpointError(
          f"{self.directory / str(step)} does not read back: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    data = restored["data"]
    if not isinstance(data, dict):
      raise DamagedCheckpointError(
          f"{self.directory / str(step)}: its data item is not a JSON object")
    saved = meta.get(DIGEST_KEY)
    if saved is not None:
      got = state_digest(state)
      if got is not None and got != saved:
        bad = sorted(k for k in saved if got.get(k) != saved[k])
        raise DamagedCheckpointError(
            f"{self.directory / str(step)}: the restored state differs from what was "
            f"saved (CRC-32 mismatch in {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''})")
    return state, data, meta

  def _checked_meta(self, step: int) -> dict:
    """Step `step`'s meta item, read once per restore; its `PACKED_KEY` is the packed
    layout (absent for a checkpoint saved one array per leaf, as every checkpoint
    written before packing). Raises DamagedCheckpointError when it does not read back
    as a JSON object."""
    try:
      meta = self.read_meta(step)
    except Exception as e:
      raise DamagedCheckpointError(
          f"{self.directory / str(step)} does not read back: its meta item: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    if not isinstance(meta, dict):
      raise DamagedCheckpointError(
          f"{self.directory / str(step)}: its meta item is not a JSON object")
    return meta

  def restore_latest_good(self, like_state) -> tuple[int, Any, dict, dict] | None:
    """The newest checkpoint that restores intact, as (step, state, data, meta); None
    when there is none. Damaged newer ones are moved aside with a warning."""
    steps = self.all_steps()
    damaged = []
    for step in reversed(steps):
      try:
        state, data, meta = self.restore(step, like_state)
      except DamagedCheckpointError as e:
        log.warning("damaged checkpoint, skipped: %s", e)
        damaged.append((step, str(e)))
        continue
      if damaged:
        self._move_aside([s for s, _ in damaged])
        log.warning("resuming from the previous good checkpoint, step %d of %s", step,
                    self.directory)
      return step, state, data, meta
    if damaged:
      listed = "; ".join(msg for _, msg in damaged)
      raise DamagedCheckpointError(
          f"no good checkpoint is left in {self.directory} ({listed}). Nothing was "
          "changed; move the directory aside to start the stage over, or restore it "
          "from a copy")
    return None

  def _move_aside(self, steps: list[int]) -> None:
    """Moves damaged step directories out of Orbax's view (kept for inspection), so
    the run can write those steps again."""
    if not io.is_lead():
      return
    aside = self.directory.parent / f"{self.directory.name}.damaged"
    aside.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for step in steps:
      src = self.directory / str(step)
      dst = aside / f"{step}-{stamp}"
      src.rename(dst)
      log.warning("moved the damaged checkpoint %s to %s", src, dst)
    self.manager.close()
    self.manager = self._manager()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_host(self, step: int) -> tuple[Any, dict, dict]:
    """Restores step `step` as NumPy arrays in the saved tree structure (no target
    needed: forking a stage from another stage's checkpoint)."""
    meta = self._checked_meta(step)
    layout = meta.get(PACKED_KEY)
    try:
      if layout is None:
        metadata = self.manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
      else:
        tree = _packed_target(layout)
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  tree)
      with jax.transfer_guard("allow"):
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=restore_args),
                data=ocp.args.JsonRestore(),
            ),
        )
      state = restored["state"]
      if layout is not None:
        state = _rebuild(layout, unpack(state, layout))
    except Exception as e:
      raise DamagedCheckpointError(
          f"{self.directory / str(step)} does not read back: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    data = restored["data"]
    saved = meta.get(DIGEST_KEY)
    if saved is not None:
      # Saved from a TrainState (paths `.params['conv']`), restored as the dicts
      # Orbax wrote (`['params']['conv']`): compared on the dict spelling. (Damage
      # cannot rename a leaf; one that is missing fails to read back above.)
      got = {_dict_path(k): v for k, v in state_digest(state).items()}
      want = {_dict_path(k): v for k, v in saved.items()}
      bad = sorted(k for k in want if k in got and got[k] != want[k])
      if bad:
        raise DamagedCheckpointError(
            f"{self.directory / str(step)}: the restored state differs from what was "
            f"saved (CRC-32 mismatch in {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''})")
    return state, data, meta

  def wait(self) -> None:
    with io.disk_full_names(self.directory, "checkpointing to"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _onto(like_state, leaves: list[np.ndarray]):
  """`leaves` (host arrays) as a tree like `like_state`: its structure, and each leaf
  on its sharding and in its dtype (as Orbax restores onto a target)."""
  like_leaves, treedef = jax.tree.flatten(like_state)
  if len(leaves) != len(like_leaves):
    raise ValueError(f"the checkpoint holds {len(leaves)} leaves, the state "
                     f"{len(like_leaves)}")
  out = []
  for x, like in zip(leaves, like_leaves):
    if tuple(x.shape) != tuple(np.shape(like)):
      raise ValueError(f"a leaf of shape {tuple(x.shape)} where the state has "
                       f"{tuple(np.shape(like))}")
    dtype = getattr(like, "dtype", x.dtype)
    x = x.astype(dtype) if x.dtype != dtype else np.array(x)  # a copy, not a view
    sharding = getattr(like, "sharding", None)
    out.append(jax.device_put(x, sharding) if sharding is not None else jax.device_put(x))
  return jax.tree.unflatten(treedef, out)


def _dict_path(keystr: str) -> str:
  """A `jax.tree_util.keystr` path with attribute steps (`.params`, of dataclasses
  and named tuples) spelt as the dict keys Orbax saves them under (`['params']`)."""
  return re.sub(r"\.([A-Za-z_]\w*)", r"['\1']", keystr)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text[:300] + (" ..." if len(text) > 300 else "")
