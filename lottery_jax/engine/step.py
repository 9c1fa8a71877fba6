"""Step builders: one jitted train step for every mask program, one eval step.

The train step never leaves the device: metrics come back as device arrays and
the loop fetches them explicitly at log intervals.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax import masks as mask_algebra
from lottery_jax.models import conv as conv_lib
from lottery_jax.search.swap import update_masks
from lottery_jax.engine.state import Program, TrainState, effective_params


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def make_train_step(model, tx: optax.GradientTransformation, program: Program, *,
                    searched, prune_counts, rate_fn: Callable | None = None,
                    max_swaps: int | None = None, mesh: Mesh | None = None,
                    conv_impl: str = "xla"):
  """Returns `step(state, batch) -> (state, metrics)`, jitted.

  Args:
    model: a flax.linen module following the registry's conventions.
    tx: the optimiser for whatever trains.
    program: what trains and how masks change.
    searched: pytree of Python bools, True on leaves that carry masks/scores.
    prune_counts: pytree of Python ints (exact prune count per leaf).
    rate_fn: `rate(step) -> float in (0, 1]` for the swap rule (short restriction).
    max_swaps: optional cap on swaps per leaf per step.
    mesh: if given, the state is replicated and the batch sharded on "data".
    conv_impl: the convolution lowering the step is traced with (`config.model.conv`).
  """
  def loss_fn(trainable, state: TrainState, batch):
    params = trainable.get("params", state.params)
    scores = trainable.get("scores", state.scores)
    eff = effective_params(params, scores, state.masks, searched,
                           straight_through=program.train_scores)
    logits, new_vars = model.apply(
        {"params": eff, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["label"]).mean()
    return loss, (logits, new_vars["batch_stats"])

  treedef = jax.tree.structure(prune_counts)
  flags = treedef.flatten_up_to(searched)
  counts = treedef.flatten_up_to(prune_counts)
  idx = [i for i, f in enumerate(flags) if f]

  def _swap_searched(scores, masks, rate):
    """The swap rule on the searched leaves only (others hold score placeholders)."""
    s_leaves, m_leaves = treedef.flatten_up_to(scores), treedef.flatten_up_to(masks)
    new_masks, new_swaps = update_masks([s_leaves[i] for i in idx],
                                        [m_leaves[i] for i in idx],
                                        [counts[i] for i in idx], rate, max_swaps=max_swaps)
    swaps = [jnp.zeros((), jnp.int32)] * len(flags)
    for j, i in enumerate(idx):
      m_leaves[i], swaps[i] = new_masks[j], new_swaps[j].astype(jnp.int32)
    return treedef.unflatten(m_leaves), treedef.unflatten(swaps)

  def step(state: TrainState, batch) -> tuple[TrainState, dict[str, Any]]:
    trainable = state.trainable(program)
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    if program.train_weights:
      # Pruned weights must stay exactly zero: mask the updates, not only the forward.
      updates = {"params": mask_algebra.apply(updates["params"], state.masks)}
    trainable = optax.apply_updates(trainable, updates)

    masks = state.masks
    swaps = jax.tree.map(lambda _: jnp.zeros((), jnp.int32), prune_counts)
    if program.mask_update == "swap":
      masks, swaps = _swap_searched(trainable["scores"], state.masks, rate_fn(state.step))

    finite = jnp.isfinite(loss)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    new_state = state.replace(
        step=state.step + 1,
        params=trainable.get("params", state.params),
        scores=trainable.get("scores", state.scores),
        masks=masks,
        batch_stats=batch_stats,
        opt_state=opt_state,
        bad_step=bad_step,
    )
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "swaps": swaps,
    }
    return new_state, metrics

  return _jit(_traced_with(step, conv_impl), mesh, donate=True)


def make_eval_step(model, *, searched, mesh: Mesh | None = None, conv_impl: str = "xla"):
  """Returns `eval_step(state, batch) -> {"correct", "loss", "count"}` (sums over
  the batch's valid entries; padding is masked out)."""

  def eval_step(state: TrainState, batch):
    eff = effective_params(state.params, state.scores, state.masks, searched,
                           straight_through=False)
    logits = model.apply({"params": eff, "batch_stats": state.batch_stats},
                         batch["image"], train=False)
    valid = batch["valid"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "correct": jnp.sum(correct * valid),
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * valid),
        "count": jnp.sum(valid),
    }

  return _jit(_traced_with(eval_step, conv_impl), mesh, donate=False)


def _traced_with(fn, conv_impl: str):
  """`fn` traced with the convolution lowering `conv_impl` (jit traces lazily, so the
  lowering is chosen inside the traced function, not around the jit call)."""
  def wrapped(*args):
    with conv_lib.use_impl(conv_impl):
      return fn(*args)
  return wrapped


def _jit(fn, mesh: Mesh | None, donate: bool):
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0,) if donate else ())
  replicated = NamedSharding(mesh, P())
  # State in and out replicated; the batch keeps the sharding it arrives with.
  out = (replicated, replicated) if donate else replicated
  return jax.jit(fn, donate_argnums=(0,) if donate else (), out_shardings=out)
