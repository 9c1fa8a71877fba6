"""Sibling masks (ALGORITHMS.md section 2; Movva, Frankle, Carbin 2021): one-shot
magnitude masks of networks that share an initialisation (and optionally some
training) and differ only in data order, their overlap against chance, and their
union and intersection at an exact target sparsity.

Pure functions over host weight trees; the experiment that trains the siblings
(one vmapped program or one stage each) is `lottery_jax.experiments.siblings`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from lottery_jax import masks as mask_algebra


def one_shot_masks(params: Sequence[Any], sparsity: float, where: Callable) -> list:
  """Each tree's global magnitude mask at `sparsity` (exact floor count over the
  `where` leaves, ties: the lower flat index pruned first)."""
  return [mask_algebra.magnitude(p, mask_algebra.allocate(p, sparsity, "global_magnitude",
                                                          where=where), where=where)
          for p in params]


def _per_layer(tree) -> dict[str, float]:
  import jax
  return {mask_algebra.path_str(p): float(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def overlap_report(masks: Sequence[Any], where: Callable) -> dict[str, Any]:
  """IoU of every pair of masks, per layer and pooled over the `where` leaves, with
  the chance IoU of independent random masks at the same per-layer densities
  (`masks.chance_overlap`: d_a d_b / (d_a + d_b - d_a d_b) per layer, pooled by
  weight counts). `mean_iou` / `chance_iou` average over the pairs."""
  pairs, per_layer = [], {}
  for i, j in itertools.combinations(range(len(masks)), 2):
    ov = mask_algebra.overlap(masks[i], masks[j], where=where)
    ch = mask_algebra.chance_overlap(masks[i], masks[j], where=where)
    pairs.append({"pair": [i, j], "iou": float(ov.total), "chance_iou": float(ch.total)})
    layers_iou, layers_chance = _per_layer(ov.per_leaf), _per_layer(ch.per_leaf)
    selected = _selected_names(masks[i], where)
    for name in selected:
      entry = per_layer.setdefault(name, {"iou": [], "chance_iou": []})
      entry["iou"].append(layers_iou[name])
      entry["chance_iou"].append(layers_chance[name])
  if not pairs:
    raise ValueError("overlap_report: needs at least two masks")
  return {
      "mean_iou": float(np.mean([p["iou"] for p in pairs])),
      "chance_iou": float(np.mean([p["chance_iou"] for p in pairs])),
      "per_layer": {k: {"mean_iou": float(np.mean(v["iou"])),
                        "chance_iou": float(np.mean(v["chance_iou"]))}
                    for k, v in per_layer.items()},
      "pairs": pairs,
  }


def _selected_names(tree, where) -> list[str]:
  import jax
  return [mask_algebra.path_str(p) for p, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0] if where(p, leaf)]


def kept_fraction(masks, where) -> float:
  """Fraction of the `where` entries kept (1 - sparsity over the masked leaves)."""
  import jax
  kept = total = 0
  for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]:
    if where(p, m):
      kept += int(np.sum(np.asarray(m)))
      total += int(np.size(m))
  return kept / max(total, 1)


def combine(params: Sequence[Any], sparsity: float, where: Callable) -> dict[str, Any]:
  """Union and intersection of the siblings' magnitude masks at exactly `sparsity`
  (`masks.combine_by_rank`)."""
  return {mode: mask_algebra.combine_by_rank(params, sparsity, mode, where=where)
          for mode in ("union", "intersection")}
