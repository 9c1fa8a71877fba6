"""Lottery jackpots (ALGORITHMS.md section 1) as a mask program of the engine.

Registers, on import:
* the update rule "swap": the reference swap rule with its short restriction
  (`lottery_jax.search.swap`, rate schedule from `config.mask.rate*`, cap
  `config.mask.max_swaps`);
* the mask program "jackpot": scores train over frozen (pretrained) weights; the
  layout allocates `config.sparsity` over the prunable leaves
  (`config.allocation`); masks and scores start from `config.mask.score_init`;
  update rule "swap" by default ("fixed": the BatchNorm re-estimation control,
  "topk": edge-popup's rule);
* the analysis "jackpot_overlap": IoU of the found mask with the magnitude,
  random, gradient-saliency and initial masks (`summary.json` "mask_analysis").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery_jax import masks as mask_algebra
from lottery_jax.engine import analyses, io, programs
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.losses import cross_entropy
from lottery_jax.search import schedules
from lottery_jax.search.swap import update_masks

# The reference's magnitude initialisation: kept weights score 1.0, pruned 0.99.
KEPT_SCORE = 1.0
PRUNED_SCORE = 0.99


def search_layout(params, sparsity: float, allocation: str, where) -> programs.Layout:
  """`sparsity` allocated over `where`'s leaves by `allocation`, exact floor counts.

  Leaves selected but allocated zero sparsity keep their score anyway: the swap
  rule leaves them dense, which is what the reference does."""
  sparsities = mask_algebra.allocate(params, sparsity, method=allocation, where=where)
  return programs.layout_from_sparsities(params, sparsities, where)


def initial_masks_and_scores(key, params, layout: programs.Layout, score_init: str):
  """Masks (bool) and float32 scores for the start of a search.

  * "magnitude": the magnitude mask; scores 1.0 where kept, 0.99 where pruned.
  * "abs": scores |W|; the mask is their top-k (the magnitude mask).
  * "random": Kaiming-normal scores (edge-popup); the mask is their top-k.
  """
  where = _where_from(layout)
  if score_init == "magnitude":
    masks = mask_algebra.magnitude(params, layout.sparsities, where=where)
    scores = jax.tree.map(
        lambda m, s: jnp.where(m, KEPT_SCORE, PRUNED_SCORE).astype(jnp.float32)
        if s else jnp.zeros((), jnp.float32), masks, layout.masked)
    return masks, scores
  if score_init == "abs":
    scores = jax.tree.map(
        lambda w, s: jnp.abs(w).astype(jnp.float32) if s else jnp.zeros((), jnp.float32),
        params, layout.masked)
  elif score_init == "random":
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    flags = treedef.flatten_up_to(layout.masked)
    scores = treedef.unflatten([
        _kaiming_normal(k, w) if s else jnp.zeros((), jnp.float32)
        for k, w, s in zip(keys, leaves, flags)])
  else:
    raise ValueError(f"mask.score_init={score_init!r} is unknown; expected "
                     "'magnitude', 'abs' or 'random'")
  full_scores = jax.tree.map(lambda w, s, sc: sc if s else jnp.zeros(w.shape, jnp.float32),
                             params, layout.masked, scores)
  masks = mask_algebra.topk(full_scores, layout.sparsities, where=where)
  return masks, scores


def _kaiming_normal(key, w):
  fan_in = int(np.prod(w.shape[:-1]))
  return (jax.random.normal(key, w.shape, jnp.float32) * np.sqrt(2.0 / fan_in))


def _where_from(layout: programs.Layout):
  flags = {tuple(p): s for p, s in jax.tree_util.tree_flatten_with_path(layout.masked)[0]}
  return lambda path, leaf: flags.get(tuple(path), False)


def mask_analysis(final_masks, params, layout: programs.Layout, *, initial_masks, key,
                  saliency=None) -> dict[str, Any]:
  """IoU of the found mask with the masks of pruning criteria at the same per-layer
  sparsity (magnitude, random, gradient saliency |g*w|), and how far it moved from
  its initialisation."""
  where = _where_from(layout)
  only = lambda tree: _select(tree, layout.masked)  # noqa: E731
  found = only(final_masks)
  report: dict[str, Any] = {}
  references = {
      "magnitude": mask_algebra.magnitude(params, layout.sparsities, where=where),
      "random": mask_algebra.random(key, params, layout.sparsities, where=where),
      "initial": initial_masks,
  }
  if saliency is not None:
    references["saliency"] = mask_algebra.topk(saliency, layout.sparsities, where=where)
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


# ---------------------------------------------------------------- registrations
def rate_schedule(config, total_steps: int):
  """`rate(step)` of the short restriction from `config.mask`."""
  if config.mask.rate_schedule == "constant":
    return schedules.constant_rate(config.mask.rate)
  decay = schedules.decaying_rate(total_steps, config.mask.rate_power)
  return lambda step: config.mask.rate * decay(step)


@programs.register_update_rule("swap")
def swap_rule(config, total_steps: int) -> programs.UpdateRule:
  rate_fn = rate_schedule(config, total_steps)
  max_swaps = config.mask.max_swaps or None

  def apply(scores, masks, counts, partitions, step):
    if any(p is not None for p in partitions):
      raise ConfigError("mask.update_rule='swap' does not support a frozen partition; "
                        "use 'topk'")
    return update_masks(scores, masks, counts, rate_fn(step), max_swaps=max_swaps)

  return programs.UpdateRule("swap", apply=apply, needs_scores=True)


@programs.register_program("jackpot")
def jackpot_program(config, total_steps: int) -> programs.MaskProgram:
  """Scores on frozen weights, magnitude-initialised, swap rule (the reference)."""
  if not config.sparsity > 0:
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid: expected > 0 for "
                      "mask program 'jackpot' (a search)")
  if not (config.pretrained or config.start.workdir or config.search_random_weights):
    raise ConfigError(
        "config.pretrained='' is invalid: expected the path of pretrained weights for a "
        "jackpot search (a run's workdir or a .pt/.pth/.safetensors/.npz checkpoint); set "
        "--config.pretrained=PATH, or --config.search_random_weights=True to search a "
        "randomly initialised network")

  def layout(ctx: programs.Context) -> programs.Layout:
    return search_layout(ctx.params, config.sparsity, config.allocation, ctx.where)

  def init(ctx: programs.Context, layout: programs.Layout):
    return initial_masks_and_scores(ctx.key, ctx.params, layout, config.mask.score_init)

  return programs.MaskProgram(
      "jackpot", trains="scores", layout=layout, init=init,
      update=programs.update_rule(config, total_steps, "swap", ("swap", "fixed", "topk")),
      analyses=("jackpot_overlap",))


@analyses.register("jackpot_overlap", key="mask_analysis")
def jackpot_overlap(run, state) -> dict[str, Any]:
  """The paper's mask analysis on the finished search (saliency from training
  batches, shuffled as SNIP does, never the test split)."""
  train_batches = run.data.train_iter()
  batches = [next(train_batches) for _ in range(int(run.config.analysis.saliency_batches))]
  train_batches.close()
  saliency = saliency_scores(run.model, run.starting_variables, batches, run.layout.masked)
  return mask_analysis(io.plain(state.masks), run.starting_variables["params"], run.layout,
                       initial_masks=run.initial_masks, key=run.analysis_key,
                       saliency=saliency)
