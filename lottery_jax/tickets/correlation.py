"""Weight correlation (Liu et al. 2021, seed 002): how far training moved the weights.

`weight_correlation(theta_0, theta_T, masks)` gives Pearson's r between the
weights at the start (or rewind point) and at the end of dense training, over
every prunable kernel pooled (`all`), over the entries a mask keeps (`kept`), and
per layer; and the overlap of the mask with the magnitude mask of `theta_0` at the
same per-layer counts (the mask the ticket would have had without training).
Pure NumPy on host trees; no I/O.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lottery_jax import masks as mask_algebra


def pearson(a, b) -> float | None:
  """Pearson's r of two equally long vectors, in float64; None if either is constant
  or there are fewer than two entries (r is undefined)."""
  a = np.asarray(a, np.float64).reshape(-1)
  b = np.asarray(b, np.float64).reshape(-1)
  if a.size != b.size:
    raise ValueError(f"pearson: {a.size} entries against {b.size}")
  if a.size < 2:
    return None
  a = a - a.mean()
  b = b - b.mean()
  denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
  if denom == 0:
    return None
  return float(np.dot(a, b) / denom)


def weight_correlation(theta_0, theta_T, masks, where=mask_algebra.prunable
                       ) -> dict[str, Any]:
  """Pearson r(theta_0, theta_T): pooled over `where`'s leaves (`all`), over the
  entries `masks` keeps (`kept`), per layer (`per_layer[name]` with `all`, `kept`,
  `size`, `kept_count`, `top_overlap_iou`), and `top_overlap`: the IoU of `masks`
  with the magnitude masks of theta_0 at the same per-leaf counts (`iou`, pooled over
  the leaves `masks` prunes), beside the IoU random masks at those densities would
  have (`iou_chance`).

  Args:
    theta_0, theta_T: params pytrees of one structure (host or device arrays).
    masks: bool pytree like them (True = kept), e.g. the magnitude mask of theta_T.
    where: the leaves compared (default: every conv / dense kernel).
  """
  leaves0, treedef = jax.tree_util.tree_flatten_with_path(theta_0)
  leavesT = jax.tree.leaves(theta_T)
  leavesM = jax.tree.leaves(masks)
  if not len(leaves0) == len(leavesT) == len(leavesM):
    raise ValueError(f"weight_correlation: {len(leaves0)}, {len(leavesT)} and "
                     f"{len(leavesM)} leaves (theta_0, theta_T, masks)")
  per_layer, a_all, b_all, a_kept, b_kept = {}, [], [], [], []
  for (path, w0), wT, m in zip(leaves0, leavesT, leavesM):
    if not where(path, w0):
      continue
    w0 = np.asarray(w0, np.float64).reshape(-1)
    wT = np.asarray(wT, np.float64).reshape(-1)
    m = np.asarray(m, bool).reshape(-1)
    per_layer[mask_algebra.path_str(path)] = {
        "all": pearson(w0, wT), "kept": pearson(w0[m], wT[m]),
        "size": int(w0.size), "kept_count": int(np.count_nonzero(m))}
    a_all.append(w0)
    b_all.append(wT)
    a_kept.append(w0[m])
    b_kept.append(wT[m])
  if not per_layer:
    raise ValueError("weight_correlation: `where` selects no leaf")
  out: dict[str, Any] = {
      "all": pearson(np.concatenate(a_all), np.concatenate(b_all)),
      "kept": pearson(np.concatenate(a_kept), np.concatenate(b_kept)),
      "per_layer": per_layer,
  }
  sparsities = jax.tree.map(lambda m: 1.0 - float(np.mean(np.asarray(m, bool))), masks)
  masks_0 = jax.tree.map(np.asarray, mask_algebra.magnitude(theta_0, sparsities, where))
  masks = jax.tree.map(lambda m: np.asarray(m, bool), masks)
  # Pooled over the leaves the mask prunes: a leaf kept whole agrees trivially.
  pruned = lambda path, m: where(path, m) and not np.all(m)  # noqa: E731
  overlap = mask_algebra.overlap(masks, masks_0, pruned)
  for (path, w0), iou in zip(leaves0, jax.tree.leaves(overlap.per_leaf)):
    name = mask_algebra.path_str(path)
    if name in per_layer:
      per_layer[name]["top_overlap_iou"] = float(iou)
  out["top_overlap"] = {"iou": float(overlap.total),
                        "iou_chance": float(_chance(masks, pruned))}
  return out


def _chance(masks, where) -> float:
  """Pooled IoU two random masks with these per-leaf densities would have."""
  inter = union = 0.0
  for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]:
    if not where(path, m):
      continue
    n, d = np.size(m), float(np.mean(m))
    inter += n * d * d
    union += n * (2 * d - d * d)
  return inter / union if union else 1.0
