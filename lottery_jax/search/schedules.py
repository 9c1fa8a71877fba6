"""Swap-rate schedules for the short restriction: ``rate(step)`` functions usable inside jit.

``rate`` is the fraction of a layer's revive candidates swapped per update (see
:mod:`lottery_jax.search.swap`); it must lie in (0, 1]. Since the swap count is
``ceil(rate * |R|)``, every rate in (0, 1] swaps at least one pair whenever a layer has a
revive candidate, so a schedule never freezes the mask by itself.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["DEFAULT_RATE_FLOOR", "RateSchedule", "constant_rate", "decaying_rate"]

RateSchedule = Callable[[jax.Array | int], jax.Array]

# Smallest rate a decaying schedule returns: keeps the rate strictly positive at and after
# the last step (where (1 - t/T)^p reaches 0).
DEFAULT_RATE_FLOOR = 1e-3


def _check_unit_interval(name: str, value: float) -> float:
  value = float(value)
  if not 0.0 < value <= 1.0:
    raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
  return value


def constant_rate(rate: float = 1.0) -> RateSchedule:
  """Returns ``step -> rate``. ``constant_rate(1.0)`` is the reference behaviour.

  Raises:
    ValueError: if ``rate`` is outside (0, 1].
  """
  rate = _check_unit_interval("rate", rate)

  def schedule(step: jax.Array | int) -> jax.Array:
    del step
    return jnp.asarray(rate, jnp.float32)

  return schedule


def decaying_rate(total_steps: int, power: float = 4.0, floor: float = DEFAULT_RATE_FLOOR) -> RateSchedule:
  """Returns ``step -> clip((1 - step / total_steps) ** power, floor, 1)``.

  The paper's short restriction with a decaying fraction (the reference code's
  ``ceil((1 - epoch / E) ** 4)`` is always 1, so it never restricts anything; this is the
  fraction itself). Steps before 0 give 1, steps past ``total_steps`` give ``floor``.

  Args:
    total_steps: Length T of the decay, > 0.
    power: Exponent p, >= 0 (0 gives a constant 1).
    floor: Smallest rate returned, in (0, 1], so that the rate stays in (0, 1].

  Raises:
    ValueError: on a non-positive ``total_steps``, a negative ``power`` or a ``floor``
      outside (0, 1].
  """
  if int(total_steps) != total_steps or total_steps <= 0:
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}.")
  if not float(power) >= 0.0:
    raise ValueError(f"power must be >= 0, got {power!r}.")
  floor = _check_unit_interval("floor", floor)
  total_steps = int(total_steps)
  power = float(power)

  def schedule(step: jax.Array | int) -> jax.Array:
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return jnp.clip((1.0 - progress) ** power, floor, 1.0)

  return schedule
