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
"""

from __future__ import annotations

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


def state_digest(state) -> dict[str, int] | None:
  """CRC-32 of each leaf's bytes (host copies), keyed by path; None when the state
  spans several processes (each sees only its shards; Orbax checks those)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  with jax.transfer_guard("allow"):
    host = jax.device_get([x for _, x in leaves])
  return {jax.tree_util.keystr(p): zlib.crc32(np.ascontiguousarray(x).tobytes())
          for (p, _), x in zip(leaves, host)}


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
    meta = {**meta, DIGEST_KEY: state_digest(state)}
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
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    try:
      with jax.transfer_guard("allow"):
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as e:  # Orbax/TensorStore fail in many ways on damaged files
      raise DamagedCheckpointError(
          f"{self.directory / str(step)} does not read back: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    state, data, meta = restored["state"], restored["data"], restored["meta"]
    if not isinstance(meta, dict) or not isinstance(data, dict):
      raise DamagedCheckpointError(
          f"{self.directory / str(step)}: its data or meta item is not a JSON object")
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
    try:
      metadata = self.manager.item_metadata(step)["state"]
      tree = getattr(metadata, "tree", metadata)
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  tree)
      with jax.transfer_guard("allow"):
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=restore_args),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as e:
      raise DamagedCheckpointError(
          f"{self.directory / str(step)} does not read back: "
          f"{type(e).__name__}: {_one_line(e)}") from e
    state, data, meta = restored["state"], restored["data"], restored["meta"]
    saved = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
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


def _dict_path(keystr: str) -> str:
  """A `jax.tree_util.keystr` path with attribute steps (`.params`, of dataclasses
  and named tuples) spelt as the dict keys Orbax saves them under (`['params']`)."""
  return re.sub(r"\.([A-Za-z_]\w*)", r"['\1']", keystr)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text[:300] + (" ..." if len(text) > 300 else "")
