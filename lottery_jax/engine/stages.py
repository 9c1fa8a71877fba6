"""Experiments as sequences of named stages, each a resumable run in its own folder.

A stage is a config and a name; it runs in `<workdir>/<name>/` (the name "" runs
in the workdir itself). Stages run in order; a finished stage (its
`summary.json` written for the same config) is skipped when the command runs
again, so re-running an interrupted experiment resumes the stage it stopped in.
A later stage refers to an earlier one through its config: `pretrained` (weights),
`mask.source` (masks), `start.workdir` + `start.step` (a full checkpoint or a
rewind point to fork from).

Every stage's config is validated, and its mask program built, before the first
stage starts, so a bad value fails at once and writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from lottery_jax import models
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import faults, loop, programs
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str                              # folder under the experiment's workdir
  config: ml_collections.ConfigDict


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name) if name else workdir


def validate(stages: Sequence[Stage]) -> None:
  """Raises ConfigError naming the stage and field of the first bad config."""
  names = [s.name for s in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names must be unique, got {names}")
  for s in stages:
    try:
      config_lib.validate(s.config)
      try:
        models.spec(s.config.model.name)
      except ValueError as e:
        raise ConfigError(f"config.model.name: {e}") from None
      loop.make_model(s.config, num_classes=2)  # its kwargs (the module is not built)
      # Names and ranges the optimiser and the mask program check when built.
      make_optimizer(s.config.optimizer, total_steps=1, steps_per_epoch=1)
      programs.get_program(s.config, total_steps=1)
    except ValueError as e:
      where = f"stage {s.name!r}: " if len(stages) > 1 else ""
      raise type(e)(f"{where}{e}") from None


def run_stages(stages: Sequence[Stage], workdir: str, mesh=None) -> dict[str, Any]:
  """Runs every stage in order (skipping finished ones); returns their summaries."""
  validate(stages)
  out = {}
  for s in stages:
    out[s.name] = loop.run(s.config, stage_dir(workdir, s.name), mesh=mesh)
    _wait_for_process_0(s.name)
    faults.point("stage")
  return out


def _wait_for_process_0(stage: str) -> None:
  """With several processes, each waits here until process 0 has written the stage's
  files (exports, `summary.json`): the next stage reads them on every process (its
  `pretrained` weights, its `mask.source`)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"lottery_jax: stage {stage!r} written")


def derive(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted `fields` set (`derive(c, **{"mask.program": "x"})`)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    for key, value in fields.items():
      node = out
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return out
