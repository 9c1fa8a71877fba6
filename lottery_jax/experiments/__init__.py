"""Experiments: what `python -m lottery_jax.main` runs, by `config.experiment`.

Each experiment is a short list of stages over the one engine
(`lottery_jax.engine.stages`), in a module of this package that registers it
(`@register("name")`). Importing the package registers every method's mask
program and every experiment.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from lottery_jax import search, tickets  # noqa: F401  (register the mask programs)
from lottery_jax.engine import distributed, lock
from lottery_jax.experiments import basic  # noqa: F401  (registers the experiments)
from lottery_jax.experiments.tickets import imp_stages  # noqa: F401  (registers imp)
from lottery_jax.experiments import strong  # noqa: F401  (registers "strong_ticket")
from lottery_jax.experiments import siblings  # noqa: F401  (registers "siblings")
from lottery_jax.experiments.basic import finetune_config, quickstart_table
from lottery_jax.experiments.registry import get, names, register

__all__ = ["finetune_config", "get", "gpu_determinism_warning", "names", "quickstart_table",
           "register", "run"]


GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def gpu_determinism_warning(backend: str, xla_flags: str) -> str | None:
  """The warning a GPU run gets when XLA may pick non-deterministic kernels.

  The bitwise promises of docs/reliability.md (a resumed run ends where the
  uninterrupted one ends; the same command twice gives the same arrays) are tested on
  the CPU. On an NVIDIA GPU XLA may choose kernels whose reductions are ordered by the
  scheduler; measured on an H200 (docs/reliability.md, "On a GPU"), two runs of
  configs/siblings_quick.py already differed after their first 22-step stage, and with
  the flag below every exported array of two runs was bitwise equal."""
  if backend != "gpu" or GPU_DETERMINISM_FLAG in xla_flags.split():
    return None
  return ("on a GPU, runs (and resumed runs) are bitwise reproducible only with "
          f"XLA_FLAGS={GPU_DETERMINISM_FLAG} in the environment (possibly slower); "
          "without it, results differ from run to run at float32 rounding, which "
          "training amplifies. See docs/reliability.md.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.experiment` in `workdir` (multi-process start-up once per process)."""
  if config.multihost:
    distributed.initialize_once()
  # Here rather than in main: notebooks and other code call run() directly.
  warning = gpu_determinism_warning(jax.default_backend(), os.environ.get("XLA_FLAGS", ""))
  if warning:
    logging.getLogger("lottery_jax").warning(warning)
  # One writer per workdir for the whole experiment (its stages hold it again, and
  # so do runs that call loop.run directly); a bad input leaves no trace.
  with lock.hold(workdir):
    return get(config.experiment)(config, workdir)
