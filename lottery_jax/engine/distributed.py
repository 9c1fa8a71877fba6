"""Multi-process start-up, once per process.

`jax.distributed.initialize()` may be called only once in a process; an experiment
runs several stages (and a notebook several experiments), so the entry points call
`initialize_once()` and the runs never do.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger("lottery_jax")
_initialized = False


def initialize_once(**kwargs) -> bool:
  """Calls `jax.distributed.initialize(**kwargs)` the first time; returns whether
  this call did it. With no arguments JAX detects the cluster (TPU pods, Slurm,
  Open MPI) from the environment."""
  global _initialized
  if _initialized:
    return False
  jax.distributed.initialize(**kwargs)
  _initialized = True
  log.info("jax.distributed initialised: process %d of %d, %d devices",
           jax.process_index(), jax.process_count(), jax.device_count())
  return True
