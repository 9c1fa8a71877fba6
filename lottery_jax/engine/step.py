"""Step builders: one jitted train step for every mask program, one eval step.

The train step never leaves the device: metrics come back as device arrays and
the loop fetches them explicitly at log intervals. With a sibling axis the same
per-copy step is `jax.vmap`-ed over the leading axis of the state and the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax import masks as mask_algebra
from lottery_jax.engine.losses import cross_entropy
from lottery_jax.engine.programs import Layout, MaskProgram
from lottery_jax.engine.state import TrainState, effective_params
from lottery_jax.models import conv as conv_lib

DATA_AXIS = "data"
SIBLING_AXIS = "sibling"


def make_train_step(model, tx: optax.GradientTransformation, program: MaskProgram,
                    layout: Layout, *, mesh: Mesh | None = None, conv_impl: str = "xla",
                    siblings: int = 0):
  """Returns `step(state, batch) -> (state, metrics)`, jitted.

  Args:
    model: a flax.linen module following the registry's conventions.
    tx: the optimiser for whatever trains.
    program: what trains and how masks change.
    layout: which leaves are masked, their exact prune counts, the partition.
    mesh: if given, the state is replicated (or split over a "sibling" axis) and
      the batch sharded on "data".
    conv_impl: the convolution lowering the step is traced with (`config.model.conv`).
    siblings: S > 0 vmaps the step over a leading axis of S copies of the state
      and of the batch (`[S, batch, ...]`); 0 for a single copy.
  """
  train_scores = program.train_scores
  rule = program.update
  treedef = jax.tree.structure(layout.prune_counts)
  flags = treedef.flatten_up_to(layout.masked)
  counts = treedef.flatten_up_to(layout.prune_counts)
  idx = [i for i, f in enumerate(flags) if f]
  partitioned = layout.partition is not None

  def loss_fn(trainable, state: TrainState, batch):
    params = trainable.get("params", state.params)
    scores = trainable.get("scores", state.scores)
    if train_scores and rule.ranked is not None:
      # The estimator runs through what the rule ranks (|S| for "topk").
      scores = jax.tree.map(lambda s, f: rule.ranked(s) if f else s, scores, layout.masked)
    eff = effective_params(params, scores, state.masks, layout.masked,
                           straight_through=train_scores)
    logits, new_vars = model.apply(
        {"params": eff, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["label"]).mean()
    return loss, (logits, new_vars["batch_stats"])

  def update_masks(scores, masks, partition, step):
    """The program's rule on the masked leaves (others pass through, 0 changes)."""
    s_leaves, m_leaves = treedef.flatten_up_to(scores), treedef.flatten_up_to(masks)
    p_leaves = treedef.flatten_up_to(partition)
    new_masks, changes = rule.apply(
        [s_leaves[i] for i in idx], [m_leaves[i] for i in idx], [counts[i] for i in idx],
        [p_leaves[i] if partitioned else None for i in idx], step)
    out = [jnp.zeros((), jnp.int32)] * len(flags)
    for j, i in enumerate(idx):
      m_leaves[i], out[i] = new_masks[j], changes[j].astype(jnp.int32)
    return treedef.unflatten(m_leaves), treedef.unflatten(out)

  def step(state: TrainState, batch) -> tuple[TrainState, dict[str, Any]]:
    trainable = state.trainable(train_scores)
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    if not train_scores:
      # Pruned weights must stay exactly zero: mask the updates, not only the forward.
      updates = {"params": mask_algebra.apply(updates["params"], state.masks)}
    trainable = optax.apply_updates(trainable, updates)

    masks = state.masks
    changes = jax.tree.map(lambda _: jnp.zeros((), jnp.int32), layout.prune_counts)
    if rule.changes_masks and idx:
      masks, changes = update_masks(trainable["scores"], state.masks, state.partition,
                                    state.step)

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
        "swaps": changes,
    }
    return new_state, metrics

  fn = jax.vmap(step) if siblings else step
  return _jit(_traced_with(fn, conv_impl), mesh, donate=True, siblings=siblings)


def make_eval_step(model, *, layout: Layout, mesh: Mesh | None = None,
                   conv_impl: str = "xla", siblings: int = 0):
  """Returns `eval_step(state, batch) -> {"correct", "loss", "count"}` (sums over
  the batch's valid entries; padding is masked out). With siblings, each sum has a
  leading axis of S (every copy sees the same batch)."""

  def eval_step(state: TrainState, batch):
    eff = effective_params(state.params, state.scores, state.masks, layout.masked,
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

  fn = jax.vmap(eval_step, in_axes=(0, None)) if siblings else eval_step
  return _jit(_traced_with(fn, conv_impl), mesh, donate=False, siblings=siblings)


def state_sharding(mesh: Mesh, siblings: int) -> NamedSharding:
  """Replicated, or split over the mesh's "sibling" axis when it has one."""
  if siblings and SIBLING_AXIS in mesh.shape:
    return NamedSharding(mesh, P(SIBLING_AXIS))
  return NamedSharding(mesh, P())


def _traced_with(fn, conv_impl: str):
  """`fn` traced with the convolution lowering `conv_impl` (jit traces lazily, so the
  lowering is chosen inside the traced function, not around the jit call)."""
  def wrapped(*args):
    with conv_lib.use_impl(conv_impl):
      return fn(*args)
  return wrapped


def _jit(fn, mesh: Mesh | None, donate: bool, siblings: int):
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0,) if donate else ())
  state = state_sharding(mesh, siblings)
  # State in and out replicated (or split by sibling); the batch keeps its sharding.
  out = (state, state) if donate else state
  return jax.jit(fn, donate_argnums=(0,) if donate else (), out_shardings=out)
