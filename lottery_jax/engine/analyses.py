"""Analyses of a finished stage, behind a registry.

A method registers `fn(run, state) -> dict` under a name (`@register("name")`);
a mask program lists the names it wants (`MaskProgram.analyses`) and the engine
runs them when the stage ends, if `config.analysis.enabled`, putting each result
in `summary.json` under its `key`. `state` is one copy (no sibling axis), on the
host. Registered by the methods: the jackpot's mask overlap ("jackpot_overlap").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

_ANALYSES: dict[str, "Analysis"] = {}


@dataclasses.dataclass(frozen=True)
class Analysis:
  name: str
  key: str                     # where the result goes in summary.json
  fn: Callable[[Any, Any], dict]


def register(name: str, *, key: str | None = None):
  def wrap(fn):
    if name in _ANALYSES:
      raise ValueError(f"analysis {name!r} is registered twice")
    _ANALYSES[name] = Analysis(name, key or name, fn)
    return fn
  return wrap


def get(name: str) -> Analysis:
  if name not in _ANALYSES:
    raise ValueError(f"analysis {name!r} is unknown; registered: {sorted(_ANALYSES)}")
  return _ANALYSES[name]


def run_all(names, run, state) -> dict[str, Any]:
  out = {}
  for name in names:
    analysis = get(name)
    out[analysis.key] = analysis.fn(run, state)
  return out
