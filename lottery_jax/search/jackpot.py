"""Lottery jackpots (ALGORITHMS.md section 1): initial masks and scores, and the
mask analysis the paper reports.

The search itself is the engine's train step with `train="scores"` and
`mask.update_rule="swap"`; this module decides where it starts from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery_jax import masks as mask_algebra

# The reference's magnitude initialisation: kept weights score 1.0, pruned 0.99.
KEPT_SCORE = 1.0
PRUNED_SCORE = 0.99


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Static facts of a search: which leaves, how sparse each, exact prune counts."""

  searched: Any        # pytree of Python bools
  sparsities: Any      # pytree of Python floats
  prune_counts: Any    # pytree of Python ints


def search_space(params, sparsity: float, allocation: str, where) -> SearchSpace:
  sparsities = mask_algebra.allocate(params, sparsity, method=allocation, where=where)
  counts = mask_algebra.prune_counts(params, sparsities)
  searched = jax.tree_util.tree_map_with_path(
      lambda path, leaf: bool(where(path, leaf)), params)
  # Leaves selected but allocated zero sparsity keep their score anyway: the swap
  # rule leaves them dense, which is what the reference does.
  return SearchSpace(searched, sparsities, counts)


def initial_masks_and_scores(key, params, space: SearchSpace, score_init: str):
  """Masks (bool) and float32 scores for the start of a search.

  * "magnitude": the magnitude mask; scores 1.0 where kept, 0.99 where pruned.
  * "abs": scores |W|; the mask is their top-k (the magnitude mask).
  * "random": Kaiming-normal scores (edge-popup); the mask is their top-k.
  """
  where = _where_from(space)
  if score_init == "magnitude":
    masks = mask_algebra.magnitude(params, space.sparsities, where=where)
    scores = jax.tree.map(
        lambda m, s: jnp.where(m, KEPT_SCORE, PRUNED_SCORE).astype(jnp.float32)
        if s else jnp.zeros((), jnp.float32), masks, space.searched)
    return masks, scores
  if score_init == "abs":
    scores = jax.tree.map(
        lambda w, s: jnp.abs(w).astype(jnp.float32) if s else jnp.zeros((), jnp.float32),
        params, space.searched)
  elif score_init == "random":
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    flags = treedef.flatten_up_to(space.searched)
    scores = treedef.unflatten([
        _kaiming_normal(k, w) if s else jnp.zeros((), jnp.float32)
        for k, w, s in zip(keys, leaves, flags)])
  else:
    raise ValueError(f"mask.score_init={score_init!r} is unknown; expected "
                     "'magnitude', 'abs' or 'random'")
  full_scores = jax.tree.map(lambda w, s, sc: sc if s else jnp.zeros(w.shape, jnp.float32),
                             params, space.searched, scores)
  masks = mask_algebra.topk(full_scores, space.sparsities, where=where)
  return masks, scores


def _kaiming_normal(key, w):
  fan_in = int(np.prod(w.shape[:-1]))
  return (jax.random.normal(key, w.shape, jnp.float32) * np.sqrt(2.0 / fan_in))


def _where_from(space: SearchSpace):
  flags = {tuple(p): s for p, s in jax.tree_util.tree_flatten_with_path(space.searched)[0]}
  return lambda path, leaf: flags.get(tuple(path), False)


def mask_analysis(final_masks, params, space: SearchSpace, *, initial_masks, key,
                  saliency=None) -> dict[str, Any]:
  """IoU of the found mask with the masks of pruning criteria at the same per-layer
  sparsity (magnitude, random, gradient saliency |g*w|), and how far it moved from
  its initialisation."""
  where = _where_from(space)
  only = lambda tree: _select(tree, space.searched)  # noqa: E731
  found = only(final_masks)
  report: dict[str, Any] = {}
  references = {
      "magnitude": mask_algebra.magnitude(params, space.sparsities, where=where),
      "random": mask_algebra.random(key, params, space.sparsities, where=where),
      "initial": initial_masks,
  }
  if saliency is not None:
    references["saliency"] = mask_algebra.topk(saliency, space.sparsities, where=where)
  everything = lambda path, leaf: True  # noqa: E731  (found holds searched leaves only)
  for name, ref in references.items():
    ov = mask_algebra.overlap(found, only(ref), where=everything)
    report[f"iou_{name}"] = float(ov.total)
    report[f"iou_{name}_per_layer"] = {
        mask_algebra.path_str(p): float(v)
        for p, v in jax.tree_util.tree_flatten_with_path(ov.per_leaf)[0]}
  report["iou_chance"] = float(mask_algebra.chance_overlap(found, where=everything).total)
  moved = [np.sum(np.asarray(a) != np.asarray(b))
           for a, b in zip(jax.tree.leaves(found), jax.tree.leaves(only(initial_masks)))]
  total = sum(np.asarray(m).size for m in jax.tree.leaves(found))
  report["fraction_changed_from_init"] = float(sum(moved)) / max(total, 1)
  return report


def _select(tree, flags):
  """The sub-dict of `tree` whose leaves are flagged (structure kept where flagged)."""
  if isinstance(tree, dict):
    out = {}
    for k in tree:
      sub = _select(tree[k], flags[k])
      if sub is not None:
        out[k] = sub
    return out or None
  return tree if flags else None


def saliency_scores(model, variables, batches, searched):
  """|g * w| summed over `batches` (gradient saliency, as in SNIP), in eval mode.

  The engine passes training batches; a `valid` entry (eval batches) masks padding.
  """
  from lottery_jax.engine.step import cross_entropy

  @jax.jit
  def grad_fn(params, batch):
    def loss(p):
      logits = model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                           batch["image"], train=False)
      valid = batch.get("valid", jnp.ones(batch["label"].shape, bool))
      per_example = cross_entropy(logits, batch["label"]) * valid
      return per_example.sum() / jnp.maximum(valid.sum(), 1)
    return jax.grad(loss)(params)

  total = None
  for batch in batches:
    g = grad_fn(variables["params"], batch)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  if total is None:
    return None
  return jax.tree.map(lambda gi, w, s: jnp.abs(gi * w) if s else jnp.zeros(w.shape),
                      total, variables["params"], searched)
