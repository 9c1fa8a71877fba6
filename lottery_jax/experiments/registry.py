"""The experiment registry: `config.experiment` names a function `fn(config, workdir)`."""

from __future__ import annotations

from typing import Callable

import ml_collections

from lottery_jax.engine.errors import ConfigError

_EXPERIMENTS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {}


def register(name: str):
  """Decorator: registers `fn(config, workdir) -> summary` as experiment `name`."""
  def wrap(fn):
    if name in _EXPERIMENTS:
      raise ValueError(f"experiment {name!r} is registered twice")
    _EXPERIMENTS[name] = fn
    return fn
  return wrap


def names() -> list[str]:
  return sorted(_EXPERIMENTS)


def get(name: str):
  if name not in _EXPERIMENTS:
    raise ConfigError(f"config.experiment={name!r} is unknown; expected one of {names()}")
  return _EXPERIMENTS[name]
