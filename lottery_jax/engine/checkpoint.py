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
"""

from __future__ import annotations

import logging
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


class Checkpointer:

  def __init__(self, directory, *, keep: int | None = 2, create: bool = True):
    self.directory = io.absolute(directory)
    self._keep, self._create = keep, create
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
    return restored["state"], restored["data"], restored["meta"]

  def wait(self) -> None:
    with io.disk_full_names(self.directory, "checkpointing to"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text[:300] + (" ..." if len(text) > 300 else "")
