"""Model registry: `@register(...)` on a builder, `get(name, num_classes=...)` to build."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the rest of the library needs to know about a registered model.

  Attributes:
    name: registry name.
    builder: `builder(num_classes=..., **kw) -> flax.linen.Module`.
    input_shape: shape of one example, NHWC without the batch (e.g. (224, 224, 3)).
    classifier: path (tuple of dict keys inside `params`) of the final classifier's
      sub-tree, so it can be excluded from pruning by name.
    family: free-form grouping (imagenet, cifar, small).
  """

  name: str
  builder: Callable[..., nn.Module]
  input_shape: tuple[int, ...]
  classifier: tuple[str, ...]
  family: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, input_shape: tuple[int, ...], classifier: tuple[str, ...],
             family: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
  """Decorator registering `builder(num_classes=..., **kw) -> nn.Module` under `name`."""

  def wrap(builder):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelSpec(name, builder, tuple(input_shape), tuple(classifier), family)
    return builder

  return wrap


def names() -> list[str]:
  return sorted(_REGISTRY)


def spec(name: str) -> ModelSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown model {name!r}; registered models: {', '.join(names())}") from None


def get(name: str, num_classes: int, **kw: Any) -> nn.Module:
  """Builds the registered model `name` with `num_classes` outputs."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  return spec(name).builder(num_classes=num_classes, **kw)
