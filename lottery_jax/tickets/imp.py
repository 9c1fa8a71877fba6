"""Iterative magnitude pruning (IMP) and random pruning: the lottery-ticket masks.

Registers two mask programs (the weights train under the mask, pruned weights held
at exactly zero; the mask never changes within a stage):

* **"imp"**: the mask of IMP level `L = config.imp.levels`, made from the finished
  run in `config.mask.source` (level L-1: its mask and its final weights). Level L
  keeps every weight level L-1 pruned pruned (masks only shrink) and prunes more of
  the survivors, the smallest final |w| first, until the exact count of level L:

      prune_count(1 - (1 - p)^L, n)       (p = config.imp.prune_fraction)

  where `prune_count` is the library's one count rule (`masks.prune_count`:
  floor(s * n), taken as the nearest integer when s * n is within float rounding of
  one, capped at n - 1). With `imp.scope="layerwise"`, n is each prunable leaf's size
  and the count is per leaf; with "global", n is the size of all prunable leaves
  together and one ranking over them decides where the count falls (ties: leaf
  order, then flat index; each leaf's largest surviving weight is never pruned, so no
  leaf empties). Leaves matched by `imp.layer_fractions` (pairs `(pattern, q)`;
  patterns as in `masks.prunable_except`: substring, fnmatch or regex of the leaf
  path; the first match wins) are pruned on their own at
  `prune_count(1 - (1 - q)^L, n)`, e.g. Frankle & Carbin's Conv-2/4/6 rates (conv 10%,
  fc 20%, output 10%). With `imp.classifier_half_rate` the classifier is pruned on
  its own at q = p / 2 (the 2019 reference's LeNet rule).

  open_lth (`pruning/sparse_global.py`) prunes `ceil(p * surviving)` at each level,
  so its counts compound the rounding; ours target the closed form of each level
  and so never drift from `1 - (1 - p)^L` by more than one weight per leaf or pool.
* **"random"**: uniformly random masks with exact per-leaf counts. With
  `config.mask.source`, the source's per-leaf prune counts (IMP's random-pruning
  control: the same layer-wise sparsities); otherwise `config.sparsity` allocated
  by `config.allocation` over the starting weights. The draw uses the program's key
  (from `config.seed`) and is, per leaf, the smallest-k of fixed random bits, so
  masks of one seed at rising counts are nested (as open_lth's `randomly_prune`
  with one seed).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import programs
from lottery_jax.engine.errors import CheckpointMismatchError, ConfigError


def level_sparsity(prune_fraction: float, level: int) -> float:
  """Fraction of weights pruned after `level` rounds of pruning `prune_fraction` of
  the survivors: `1 - (1 - p)^L`."""
  return 1.0 - (1.0 - float(prune_fraction)) ** int(level)


def classifier_predicate(classifier_path):
  """`(path, leaf) -> bool`: the leaf lies under the model's classifier."""
  prefix = "/".join(classifier_path)

  def is_classifier(path, leaf):
    del leaf
    name = mask_algebra.path_str(path)
    return name == prefix or name.startswith(prefix + "/")

  return is_classifier


def imp_masks(ranked, previous, where, *, level: int, prune_fraction: float,
              scope: str = "global", own_fractions=()):
  """The IMP masks of `level` (bool NumPy, like `ranked`), from the previous level's
  masks and the final weights `ranked` whose |w| decides.

  Args:
    ranked: the previous level's final weights (pytree of arrays).
    previous: its masks (bool pytree like `ranked`; True = kept).
    where: the prunable-leaf predicate; other leaves come back all-True.
    level: the level L >= 1 to prune to.
    prune_fraction: p in (0, 1).
    scope: "global" or "layerwise".
    own_fractions: `(predicate, q)` pairs: a prunable leaf matched by a predicate
      (the first that matches) is pruned on its own at fraction q instead.

  Raises:
    CheckpointMismatchError: `previous` prunes more of a leaf (or pool) than level
      L allows (it is not level L-1 of this IMP).
    ValueError: a global target that cannot keep one weight in every leaf.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(ranked)
  prev = jax.tree.leaves(previous)
  if len(prev) != len(leaves):
    raise CheckpointMismatchError(
        f"imp: the source masks have {len(prev)} leaves, its weights {len(leaves)}")
  values, kept, groups_pool, groups_own = [], [], [], []
  for i, ((path, w), m) in enumerate(zip(leaves, prev)):
    m = np.asarray(m, bool).reshape(-1).copy()
    values.append(np.abs(np.asarray(w, np.float32)).reshape(-1))
    if not where(path, w):
      kept.append(np.ones_like(m))
      continue
    kept.append(m)
    own = next((q for match, q in own_fractions if match(path, w)), None)
    if own is not None:
      groups_own.append(([i], own))
    else:
      groups_pool.append(i)
  names = [mask_algebra.path_str(p) for p, _ in leaves]
  groups = ([[i] for i in groups_pool] if scope == "layerwise"
            else ([groups_pool] if groups_pool else []))
  for group in groups:
    _prune_group(values, kept, group, level_sparsity(prune_fraction, level), names, level)
  for group, q in groups_own:
    _prune_group(values, kept, group, level_sparsity(q, level), names, level)
  shaped = [k.reshape(np.shape(w)) for k, (_, w) in zip(kept, leaves)]
  return jax.tree.unflatten(treedef, shaped)


def _prune_group(values, kept, group, sparsity, names, level) -> None:
  """Prunes, in place, the survivors of `group`'s leaves with the smallest values
  (ties: leaf order, then flat index) until the group holds exactly
  `prune_count(sparsity, size)` pruned entries; each leaf's largest survivor stays."""
  size = sum(kept[i].size for i in group)
  target = mask_algebra.prune_count(sparsity, size)
  already = sum(int(kept[i].size - np.count_nonzero(kept[i])) for i in group)
  where = names[group[0]] if len(group) == 1 else f"the {len(group)} pooled leaves"
  if already > target:
    raise CheckpointMismatchError(
        f"imp level {level}: the source prunes {already} of {size} weights of {where}, "
        f"more than level {level}'s {target} (1-(1-p)^L = {sparsity:.6f}); mask.source "
        f"must be level {level - 1} of this IMP (same imp.prune_fraction and imp.scope)")
  if target > size - len(group):
    raise ValueError(
        f"imp level {level}: pruning {target} of {size} weights of {where} would empty a "
        f"leaf (one weight is kept in each); lower imp.levels or imp.prune_fraction")
  new = target - already
  if new == 0:
    return
  cand_value, cand_leaf, cand_index = [], [], []
  for rank, i in enumerate(group):
    idx = np.flatnonzero(kept[i])
    v = values[i][idx]
    top = np.lexsort((idx, v))[-1]          # the largest survivor (ties: last index)
    idx, v = np.delete(idx, top), np.delete(v, top)
    cand_value.append(v)
    cand_index.append(idx)
    cand_leaf.append(np.full(idx.size, rank, np.int32))
  value = np.concatenate(cand_value)
  leaf = np.concatenate(cand_leaf)
  index = np.concatenate(cand_index)
  chosen = np.lexsort((index, leaf, value))[:new]
  for rank, i in enumerate(group):
    pick = chosen[leaf[chosen] == rank]
    kept[i][index[pick]] = False


def own_fractions(config) -> list:
  """The `(predicate, fraction)` pairs of `config.imp.layer_fractions` and, with
  `config.imp.classifier_half_rate`, the model's classifier at half the rate."""
  out = []
  for pattern, q in config.imp.layer_fractions:
    out.append((_matches(pattern), float(q)))
  if config.imp.classifier_half_rate:
    out.append((classifier_predicate(models.spec(config.model.name).classifier),
                config.imp.prune_fraction / 2))
  return out


def _matches(pattern: str):
  excluded = mask_algebra.prunable_except(pattern, base=lambda path, leaf: True)
  return lambda path, leaf: not excluded(path, leaf)


def _source_or_raise(ctx: programs.Context, program: str):
  if ctx.source is None:
    raise ConfigError(f"config.mask.source='' is invalid for mask program {program!r}: "
                      "expected the workdir of a finished run")
  return ctx.source


@programs.register_program("imp")
def imp_program(config, total_steps: int) -> programs.MaskProgram:
  """IMP level `config.imp.levels` from the finished level in `config.mask.source`."""
  level = config.imp.levels
  if not config.mask.source:
    raise ConfigError("config.mask.source='' is invalid for mask program 'imp': expected "
                      f"the workdir of the finished IMP level {level - 1}")
  if not (isinstance(level, int) and level >= 1):
    raise ConfigError(f"config.imp.levels={level!r} is invalid for mask program 'imp': "
                      "expected the level >= 1 this stage prunes to")
  nominal = level_sparsity(config.imp.prune_fraction, level)
  if config.sparsity and not math.isclose(config.sparsity, nominal, rel_tol=1e-9):
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid for mask program "
                      f"'imp' at level {level}: expected 0 or 1-(1-p)^L = {nominal!r} "
                      "(imp.prune_fraction and imp.levels decide the masks)")
  memo: dict = {}

  def masks_of(ctx: programs.Context):
    if memo.get("ctx") is not ctx:
      source = _source_or_raise(ctx, "imp")
      if source.get("params") is None:
        raise ConfigError(f"config.mask.source={config.mask.source!r} is invalid for mask "
                          "program 'imp': expected a finished run's workdir (its final "
                          "weights rank the survivors), not a file of masks")
      memo["ctx"] = ctx
      memo["masks"] = imp_masks(source["params"], source["masks"], ctx.where, level=level,
                                prune_fraction=config.imp.prune_fraction,
                                scope=config.imp.scope,
                                own_fractions=own_fractions(config))
    return memo["masks"]

  def init(ctx, layout):
    del layout
    return (jax.tree.map(jnp.asarray, masks_of(ctx)),
            programs.score_placeholders(ctx.params))

  return programs.MaskProgram(
      "imp", trains="weights",
      layout=lambda ctx: programs.layout_from_masks(masks_of(ctx), ctx.where), init=init,
      update=programs.update_rule(config, total_steps, "fixed", ("fixed",)))


@programs.register_program("random")
def random_program(config, total_steps: int) -> programs.MaskProgram:
  """Random masks: the per-leaf counts of `config.mask.source`, or `config.sparsity`."""
  if not config.mask.source and not config.sparsity > 0:
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid for mask program "
                      "'random': expected > 0, or config.mask.source naming a run whose "
                      "per-layer sparsities to copy")

  def layout(ctx: programs.Context) -> programs.Layout:
    if ctx.source is not None:
      return programs.layout_from_masks(ctx.source["masks"], ctx.where)
    sparsities = mask_algebra.allocate(ctx.params, config.sparsity,
                                       method=config.allocation, where=ctx.where)
    return programs.layout_from_sparsities(ctx.params, sparsities, ctx.where)

  def init(ctx: programs.Context, layout: programs.Layout):
    # count / n gives back exactly count under masks.prune_count.
    masks = mask_algebra.random(ctx.key, ctx.params, layout.sparsities,
                                where=lambda p, w: True)
    masks = jax.tree.map(lambda m, on: m if on else jnp.ones_like(m), masks, layout.masked)
    return masks, programs.score_placeholders(ctx.params)

  return programs.MaskProgram(
      "random", trains="weights", layout=layout, init=init,
      update=programs.update_rule(config, total_steps, "fixed", ("fixed",)))
