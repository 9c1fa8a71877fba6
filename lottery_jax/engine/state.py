"""The training state: one pytree holding everything a run needs to continue.

A *mask program* decides what the state means:

* `train_weights`: the model's params get gradients (dense training, fine-tuning,
  IMP); pruned weights are held at exactly zero by masking the updates.
* `train_scores`: one score per weight of every *searched* leaf gets gradients
  through the straight-through estimator (jackpots, strong tickets); params,
  BatchNorm scale/shift and the classifier stay frozen.
* `mask_update`: how masks change after each optimiser step: "fixed" or "swap"
  (the jackpot swap rule with its short restriction).

Leaves that are not searched keep an all-True mask and a scalar zero score
placeholder, so every tree has the params' structure and nothing is `None`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp

from lottery_jax.engine.errors import ConfigError

MASK_UPDATES = ("fixed", "swap")


@dataclasses.dataclass(frozen=True)
class Program:
  """What trains and how masks change (static: it shapes the compiled step)."""

  train_weights: bool = True
  train_scores: bool = False
  mask_update: str = "fixed"

  def __post_init__(self):
    if self.train_weights == self.train_scores:
      raise ConfigError(
          "exactly one of weights or scores must train: got "
          f"train_weights={self.train_weights}, train_scores={self.train_scores}")
    if self.mask_update not in MASK_UPDATES:
      raise ConfigError(f"mask.update_rule={self.mask_update!r} is unknown; expected one of "
                        f"{MASK_UPDATES}")
    if self.mask_update == "swap" and not self.train_scores:
      raise ConfigError("mask.update_rule='swap' needs scores to train (train='scores')")


@flax.struct.dataclass
class TrainState:
  """Everything that changes during a run (checkpointed as one pytree)."""

  step: jax.Array          # int32 scalar: optimiser steps taken
  params: Any              # model params (frozen when scores train)
  batch_stats: Any         # BatchNorm running statistics (always updated in training)
  scores: Any              # per-weight scores on searched leaves, scalar 0 elsewhere
  masks: Any               # bool, True = kept; all-True on leaves that are not pruned
  opt_state: Any           # optax state of whatever trains
  rng: jax.Array           # uint32[2] key; each step folds in its step number
  bad_step: jax.Array      # int32: -1, or the first step whose loss was not finite

  def trainable(self, program: Program) -> dict:
    return {"params": self.params} if program.train_weights else {"scores": self.scores}


def effective_params(params, scores, masks, searched, *, straight_through: bool):
  """`W * M` on searched leaves; with `straight_through` the mask carries the
  scores' gradient (dL/dS = dL/dW_eff * W). Other leaves are used as they are."""
  from lottery_jax import masks as mask_algebra

  def leaf(w, s, m, is_searched):
    if not is_searched:
      return w
    if straight_through:
      return w * mask_algebra.straight_through(s, m).astype(w.dtype)
    return w * m.astype(w.dtype)

  return jax.tree.map(leaf, params, scores, masks, searched)


def score_placeholders(params):
  return jax.tree.map(lambda w: jnp.zeros((), jnp.float32), params)
