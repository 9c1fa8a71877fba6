"""Orbax checkpoints of the train state, the data iterator and the run's config.

Layout under `<workdir>/checkpoints/<step>/`: `state` (the TrainState pytree),
`data` (the input iterator's JSON state) and `meta` (config and step). Saves are
atomic (Orbax writes to a temporary directory and renames), so a run killed
mid-save, even with SIGKILL, resumes from the last complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, *, keep: int | None = 2, create: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, cleanup_tmp_directories=create),
        item_names=("state", "data", "meta"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    # Orbax copies device buffers to the host before `save` returns, so the state
    # may be donated to the next step while the write finishes in the background.
    with jax.transfer_guard("allow"):
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave(data_state),
              meta=ocp.args.JsonSave(meta),
          ),
          force=True,
      )

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def restore(self, step: int, like_state) -> tuple[Any, dict, dict]:
    """Restores onto the shardings and dtypes of `like_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    with jax.transfer_guard("allow"):
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              data=ocp.args.JsonRestore(),
              meta=ocp.args.JsonRestore(),
          ),
      )
    return restored["state"], restored["data"], restored["meta"]

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_host(self, step: int) -> tuple[Any, dict, dict]:
    """Restores step `step` as NumPy arrays in the saved tree structure (no target
    needed: forking a stage from another stage's checkpoint)."""
    metadata = self.manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    with jax.transfer_guard("allow"):
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.PyTreeRestore(restore_args=restore_args),
              data=ocp.args.JsonRestore(),
              meta=ocp.args.JsonRestore(),
          ),
      )
    return restored["state"], restored["data"], restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
