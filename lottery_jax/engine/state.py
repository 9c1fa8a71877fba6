"""The training state: one pytree holding everything a run needs to continue.

Its meaning comes from the run's mask program (`lottery_jax.engine.programs`):
when weights train, `params` get gradients and pruned weights are held at exactly
zero by masking the updates; when scores train, one score per weight of every
masked leaf gets gradients through the straight-through estimator while params,
BatchNorm scale/shift and the classifier stay frozen.

Leaves that are not masked keep an all-True mask and a scalar zero score
placeholder, so every tree has the params' structure and nothing is `None`.
With a sibling axis (`config.siblings.count = S > 0`) every leaf has a leading
axis of S independent copies.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from lottery_jax import masks as mask_algebra


@flax.struct.dataclass
class TrainState:
  """Everything that changes during a run (checkpointed as one pytree)."""

  step: jax.Array          # int32 scalar: optimiser steps taken
  params: Any              # model params (frozen when scores train)
  batch_stats: Any         # BatchNorm running statistics (always updated in training)
  scores: Any              # per-weight scores on masked leaves, scalar 0 elsewhere
  masks: Any               # bool, True = kept; all-True on leaves that are not pruned
  partition: Any           # int8 `masks.freeze` codes on partitioned leaves, scalar 0 elsewhere
  opt_state: Any           # optax state of whatever trains
  rng: jax.Array           # uint32[2] key; each step folds in its step number
  bad_step: jax.Array      # int32: -1, or the first step whose loss was not finite

  def trainable(self, train_scores: bool) -> dict:
    return {"scores": self.scores} if train_scores else {"params": self.params}


def effective_params(params, scores, masks, masked, *, straight_through: bool):
  """`W * M` on masked leaves; with `straight_through` the mask carries the scores'
  gradient (dL/dS = dL/dW_eff * W). Other leaves are used as they are."""

  def leaf(w, s, m, is_masked):
    if not is_masked:
      return w
    if straight_through:
      return w * mask_algebra.straight_through(s, m).astype(w.dtype)
    return w * m.astype(w.dtype)

  return jax.tree.map(leaf, params, scores, masks, masked)


def partition_placeholders(params):
  return jax.tree.map(lambda w: jnp.zeros((), jnp.int8), params)
