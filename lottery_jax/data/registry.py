"""Registry of dataset sources: `@register("name", defaults=...)` on a loader.

A loader is `load(config, split) -> Split`; it returns random-access records
`{"image": HWC ndarray, "label": int}` (uint8 pixels or already scaled floats)
plus what the pipeline needs to know about them. Any name not registered is
tried as a TFDS dataset (see `sources.load_tfds`), so every TFDS image
classification data set works without registering it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence


class Records(Protocol):
  """Random-access records: what `grain.MapDataset.source` accepts."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> dict:
    ...


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a data set, as the loader returns it.

  Attributes:
    records: random access `{"image": ndarray (H, W, C) or (L, C), "label": int}`.
    num_classes: number of classes.
    native_shape: per-example shape before preprocessing (None for a varying size).
    mean: default normalisation mean (used when config.data.mean is empty).
    std: default normalisation std.
    class_names: optional names of the classes, index = label.
  """

  records: Records
  num_classes: int
  native_shape: tuple[int | None, ...]
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  class_names: Sequence[str] | None = None


Loader = Callable[[Any, str], Split]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  name: str
  load: Loader
  defaults: dict[str, Any]


_REGISTRY: dict[str, SourceSpec] = {}
_FALLBACK: list[SourceSpec] = []


def register(*names: str, defaults: dict[str, Any] | None = None
             ) -> Callable[[Loader], Loader]:
  """Decorator registering `load(config, split) -> Split` under each of `names`.

  Args:
    *names: data set names (`config.data.name`).
    defaults: config fields that differ from the common defaults for these
      names (preprocess recipe, splits, batch size, ...); `default_config`
      merges them.
  """

  def wrap(load: Loader) -> Loader:
    for name in names:
      if name in _REGISTRY:
        raise ValueError(f"data set {name!r} is registered twice")
      _REGISTRY[name] = SourceSpec(name, load, dict(defaults or {}))
    return load

  return wrap


def register_fallback(load: Loader, defaults: dict[str, Any]) -> Loader:
  """Sets the loader used for names that are not registered (TFDS)."""
  _FALLBACK[:] = [SourceSpec("*", load, dict(defaults))]
  return load


def names() -> list[str]:
  """Registered data set names (any other TFDS name also works)."""
  return sorted(_REGISTRY)


def spec(name: str) -> SourceSpec:
  if name in _REGISTRY:
    return _REGISTRY[name]
  if _FALLBACK:
    return dataclasses.replace(_FALLBACK[0], name=name)
  raise ValueError(f"unknown data set {name!r}; registered: {', '.join(names())}")
