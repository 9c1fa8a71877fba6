"""Optimisers and learning-rate schedules from the config.

The reference couples weight decay as in PyTorch's SGD: `wd * x` is added to the
gradient before momentum, i.e. `optax.add_decayed_weights` before `optax.sgd`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lottery_jax.engine.errors import ConfigError

_SCHEDULES = {}


def _schedule(name):
  def wrap(fn):
    _SCHEDULES[name] = fn
    return fn
  return wrap


@_schedule("constant")
def _constant(cfg, total_steps, steps_per_epoch):
  del total_steps, steps_per_epoch
  return optax.constant_schedule(cfg.learning_rate)


@_schedule("cosine")
def _cosine(cfg, total_steps, steps_per_epoch):
  warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
  if warmup:
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1))
  return optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1))


@_schedule("multistep")
def _multistep(cfg, total_steps, steps_per_epoch):
  del total_steps
  boundaries = {int(e * steps_per_epoch): cfg.get("decay_factor", 0.1)
                for e in cfg.get("milestones", ())}
  return optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int):
  """`cfg.schedule` over `total_steps`; `cfg.per_epoch` holds it constant in an epoch.

  The jackpot reference steps its cosine schedule once per epoch; `per_epoch=True`
  reproduces that, `False` decays every step.
  """
  name = cfg.get("schedule", "cosine")
  if name not in _SCHEDULES:
    raise ConfigError(f"optimizer.schedule={name!r} is unknown; expected one of "
                      f"{sorted(_SCHEDULES)}")
  if cfg.get("per_epoch", False):
    num_epochs = max(1, -(-total_steps // steps_per_epoch))
    epoch_schedule = _SCHEDULES[name](cfg, num_epochs, 1)
    return lambda step: epoch_schedule(jnp.floor_divide(step, steps_per_epoch))
  return _SCHEDULES[name](cfg, total_steps, steps_per_epoch)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (+ coupled weight decay) or AdamW from `cfg` (the config's optimizer block)."""
  if cfg.learning_rate < 0:
    raise ConfigError(f"optimizer.learning_rate must be >= 0, got {cfg.learning_rate}")
  if cfg.get("weight_decay", 0.0) < 0:
    raise ConfigError(f"optimizer.weight_decay must be >= 0, got {cfg.weight_decay}")
  lr = learning_rate_schedule(cfg, total_steps, steps_per_epoch)
  name = cfg.get("name", "sgd")
  if name == "sgd":
    momentum = cfg.get("momentum", 0.9)
    return optax.chain(
        optax.add_decayed_weights(cfg.get("weight_decay", 0.0)),
        optax.sgd(lr, momentum=momentum or None, nesterov=cfg.get("nesterov", False)),
    )
  if name == "adamw":
    return optax.adamw(lr, weight_decay=cfg.get("weight_decay", 0.0))
  raise ConfigError(f"optimizer.name={name!r} is unknown; expected 'sgd' or 'adamw'")


def continue_schedules(opt_state, step):
  """A fresh optimiser state whose learning-rate schedules stand at `step` (the
  schedule's count; every other buffer, momentum and Adam's moments and bias-correction
  count, stays fresh): a stage forked at step k with `start.optimizer=False` goes on
  along its schedule from k, as open_lth fast-forwards its schedule when it rewinds."""
  step = int(step)  # a fresh buffer: never an alias of the caller's (donated) arrays

  def at_step(x):
    if isinstance(x, optax.ScaleByScheduleState):
      return x._replace(count=jnp.asarray(step, jnp.asarray(x.count).dtype))
    return x
  return jax.tree.map(at_step, opt_state,
                      is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
