"""Experiments: what `python -m lottery_jax.main` runs, by `config.experiment`.

Each experiment is a short list of stages over the one engine
(`lottery_jax.engine.stages`), in a module of this package that registers it
(`@register("name")`). Importing the package registers every method's mask
program and every experiment.
"""

from __future__ import annotations

import ml_collections

from lottery_jax import search, tickets  # noqa: F401  (register the mask programs)
from lottery_jax.engine import distributed, lock
from lottery_jax.experiments import basic  # noqa: F401  (registers the experiments)
from lottery_jax.experiments.tickets import imp_stages  # noqa: F401  (registers imp)
from lottery_jax.experiments import strong  # noqa: F401  (registers "strong_ticket")
from lottery_jax.experiments import siblings  # noqa: F401  (registers "siblings")
from lottery_jax.experiments.basic import finetune_config, quickstart_table
from lottery_jax.experiments.registry import get, names, register

__all__ = ["finetune_config", "get", "names", "quickstart_table", "register", "run"]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config.experiment` in `workdir` (multi-process start-up once per process)."""
  if config.multihost:
    distributed.initialize_once()
  # One writer per workdir for the whole experiment (its stages hold it again, and
  # so do runs that call loop.run directly); a bad input leaves no trace.
  with lock.hold(workdir):
    return get(config.experiment)(config, workdir)
