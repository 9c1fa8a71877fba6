"""The lottery-jackpot swap rule (mask update with short restriction), jit-compatible.

Semantics (ALGORITHMS.md section 1; the reference is ``PretrainConv.ls_pop_up`` in
``utils/conv_type.py`` of github.com/zyxxmu/lottery-jackpots, which reads, in short:
``t = sort(m)[prune_num - 1]``; ``pop_idx0 = nonzero(m[pruned] > t)``;
``pop_idx1 = nonzero(m[kept] <= t)``; act only if both are non-empty and of equal size;
``sort(m[pruned][pop_idx0], descending=True)``, ``sort(m[kept][pop_idx1], descending=False)``;
swap the first ``ceil(len * rate)`` of each), for one layer of ``n`` scores with prune count
``k``:

- ``t`` is the k-th smallest score.
- Revive candidates ``R`` = pruned entries with score > t; drop candidates ``D`` = kept
  entries with score <= t.
- Only if ``R`` and ``D`` are both non-empty and ``|R| == |D|`` (equivalently: no tie
  straddles the threshold, ``#{score <= t} == k``): order ``R`` by score descending and ``D``
  by score ascending and swap the first ``m = ceil(rate * |R|)`` pairs (revive those ``R``,
  prune those ``D``), capped at ``max_swaps`` when given (the short restriction). Otherwise
  the mask is unchanged. Sparsity is therefore exact after every update.

Decisions where the reference is silent or cannot be copied:

- **Ties inside R or D** are broken by flat (row-major) index, lower index first, in both
  orders. This is what a *stable* ``torch.sort`` would give on the reference's index lists;
  the reference uses an unstable sort, so its choice among equal scores is unspecified.
- **The swap count** ``m = ceil(rate * |R|)`` is computed in float32 (``rate`` rounded to
  float32) with a relative tolerance of 2**-20 below the product, so that products that are
  integers in exact arithmetic give that integer (``0.1 * 10 -> 1``). The reference computes
  in float64, where for example ``0.7 * 10 = 7.000000000000001`` rounds up to 8. Any
  ``rate > 0`` gives ``m >= 1`` when ``|R| > 0``. ``m`` never exceeds ``|R|``.
- ``-0.0`` and ``0.0`` compare equal (as in the reference), and subnormal scores count as
  zero on every backend (XLA:CPU and TPU flush them anyway; GPUs need not, so the rule flushes
  them itself: a score of -1e-45 ties with 0.0 instead of ranking below it differently per
  backend). Scores must be finite; NaN or
  infinite scores give unspecified (but still exactly-sparse) masks.

Algorithm and complexity (per layer of ``n`` weights, capacity ``C`` (default 1024), block
``B = 32``):

Let ``p_1 >= p_2 >= ...`` be the pruned scores and ``q_1 <= q_2 <= ...`` the kept scores, and
``j`` the number of inversions ``#{i : p_i > q_i}`` (a prefix, since ``p`` falls and ``q``
rises). Then ``{p_(j+1), ...} + {q_1, ..., q_j}`` is a set of the k smallest scores, so
``t = max(p_(j+1), q_j)``, and ``R`` and ``D`` lie within the first ``j + 1`` entries of each
list. So the first ``C`` entries of both lists decide the rule exactly whenever ``j < C``.
They are built with one pass over the layer: a single variadic reduction gives, per block
of ``B`` entries, the largest pruned score and the smallest kept score (O(n), no n-sized
temporary); ``lax.top_k`` picks the ``C`` best blocks of each list (O((n/B) log C)); those
blocks are gathered in ascending order (which keeps ties ordered by flat index) and a
second ``top_k`` over their ``C * B`` entries gives the lists (O(C B log C)). Then O(C)
work for ``j``, ``t``, ``|R|``, ``|D|`` and ``m``, and a scatter of at most ``2C`` entries.
A converged layer (no inversion) costs the same pass and leaves the mask unchanged.

So the common case is one memory pass plus O((n/B + C B) log C) per layer. When a layer
has ``C`` or more inversions (far from convergence, e.g. random scores) the layer is redone
by one full sort, O(n log n), with the same result. :func:`update_masks` wraps all leaves'
fallbacks in one ``lax.cond`` on "every leaf's lists were exact" (with a per-leaf cond
inside), so the common case runs no sort at all. The ``top_k`` results pass through an
optimization barrier: without it XLA CPU leaves the second top_k as a full comparator sort.

Alternatives measured and not taken: the band ``[min kept, max pruned]`` holds about 2% of
a realistic layer (40-140K entries for the 2.4M-weight layers, against a few hundred
inversions), too many to sort; XLA CPU's ``nonzero``/``cumsum`` (50-60 ms per 2.4M
entries), multi-probe counting passes and scatter-add histograms (15-200 ms) are all far
slower than the block pass (2-5 ms).

Under ``jax.vmap`` the ``lax.cond`` turns into a select and the fallback sort always runs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "DEFAULT_CAPACITY",
  "swap_update",
  "swap_update_sort",
  "swap_update_reference",
  "update_masks",
]

# Static length of the candidate lists; layers with this many inversions or more take the
# full-sort fallback (benchmarks/mask_update.py: 1024 is about 1.7x faster than 4096 on the
# realistic ResNet-50 case, whose layers have at most ~320 inversions).
DEFAULT_CAPACITY = 1024

# Block length of the blocked top_k (see _blocked_top_k).
_BLOCK = 32

# ceil(rate * |R|) is taken on rate * |R| * (1 - _CEIL_TOLERANCE), see the module docstring.
_CEIL_TOLERANCE = 2.0**-20


def _check_prune_count(prune_count: Any, size: int) -> int:
  if isinstance(prune_count, bool) or not isinstance(prune_count, (int, np.integer)):
    raise TypeError(
      f"prune_count must be a static Python int, got {prune_count!r} "
      f"({type(prune_count).__name__})."
    )
  prune_count = int(prune_count)
  if not 0 <= prune_count <= size:
    raise ValueError(f"prune_count must be in [0, {size}] for a leaf of {size} entries, got {prune_count}.")
  return prune_count


def _check_rate(rate: Any) -> None:
  """Validates a concrete rate; traced rates cannot be checked and are used as given."""
  if isinstance(rate, jax.core.Tracer):
    return
  try:
    value = float(rate)
  except TypeError:  # a non-scalar array
    raise ValueError(f"rate must be a scalar in (0, 1], got {rate!r}.") from None
  if not 0.0 < value <= 1.0:
    raise ValueError(f"rate must be in (0, 1], got {value!r}.")


def _check_max_swaps(max_swaps: Any) -> int | None:
  if max_swaps is None:
    return None
  if isinstance(max_swaps, bool) or not isinstance(max_swaps, (int, np.integer)) or max_swaps < 1:
    raise ValueError(f"max_swaps must be None or a static int >= 1, got {max_swaps!r}.")
  return int(max_swaps)


def _num_swaps(rate: Any, n_revive: jax.Array, max_swaps: int | None) -> jax.Array:
  """m = min(ceil(rate * |R|), |R|, max_swaps) as int32, in float32 (see module docstring)."""
  product = jnp.asarray(rate, jnp.float32) * n_revive.astype(jnp.float32)
  m = jnp.ceil(product * jnp.float32(1.0 - _CEIL_TOLERANCE)).astype(jnp.int32)
  m = jnp.minimum(m, n_revive)
  if max_swaps is not None:
    m = jnp.minimum(m, max_swaps)
  return m


def _canonical_scores(score: jax.Array) -> jax.Array:
  flat = score.reshape(-1)
  if not jnp.issubdtype(flat.dtype, jnp.floating):
    flat = flat.astype(jnp.float32)
  # XLA's sort and TopK order floats by bit pattern (-0.0 < 0.0); the reference does not.
  # Subnormals are zero too, explicitly, so the order does not depend on whether the
  # backend flushes them (XLA:CPU does; `flat == 0` alone already holds for them there).
  tiny = jnp.finfo(flat.dtype).tiny
  return jnp.where(jnp.abs(flat) < tiny, jnp.zeros_like(flat), flat)


def _apply_swaps(flat_mask, revive_order, drop_order, m):
  """Revives revive_order[:m] and prunes drop_order[:m] (orders are index arrays)."""
  n = flat_mask.shape[0]
  revive_idx = jnp.where(jnp.arange(revive_order.shape[0]) < m, revive_order, n)
  drop_idx = jnp.where(jnp.arange(drop_order.shape[0]) < m, drop_order, n)
  flat_mask = flat_mask.at[revive_idx].set(True, mode="drop")
  return flat_mask.at[drop_idx].set(False, mode="drop")


# Jitted with static counts so that eager calls compile the whole update once per shape;
# inside an outer jit they are inlined.
@functools.partial(jax.jit, static_argnames=("prune_count", "max_swaps"))
def _sort_swap(flat_score, flat_mask, prune_count, rate, max_swaps):
  """Full-sort implementation of the swap rule on flat arrays: O(n log n)."""
  n = flat_score.shape[0]
  iota = jnp.arange(n, dtype=jnp.int32)
  # One stable sort gives t and the drop order (score ascending, index ascending).
  sorted_score, perm = jax.lax.sort((flat_score, iota), num_keys=1, is_stable=True)
  threshold = sorted_score[prune_count - 1]
  revive = ~flat_mask & (flat_score > threshold)
  drop = flat_mask & (flat_score <= threshold)
  n_revive = jnp.sum(revive, dtype=jnp.int32)
  n_drop = jnp.sum(drop, dtype=jnp.int32)
  act = (n_revive > 0) & (n_revive == n_drop)
  m = jnp.where(act, _num_swaps(rate, n_revive, max_swaps), 0)

  # Drop: D entries in sorted order are already (score asc, index asc); take the first m.
  drop_sorted = drop[perm]
  drop_rank = jnp.cumsum(drop_sorted, dtype=jnp.int32)
  chosen_drop = jnp.zeros_like(flat_mask).at[perm].set(drop_sorted & (drop_rank <= m))

  # Revive: (score desc, index asc). Find the score v of the m-th best R entry from the top
  # of the sorted order, revive every R above v and the lowest-index R entries equal to v.
  revive_sorted_desc = revive[perm][::-1]
  rank_desc = jnp.cumsum(revive_sorted_desc, dtype=jnp.int32)
  pos = jnp.argmax(rank_desc >= jnp.maximum(m, 1))
  v = sorted_score[::-1][pos]
  above = revive & (flat_score > v)
  need = m - jnp.sum(above, dtype=jnp.int32)
  at_v = revive & (flat_score == v)
  chosen_revive = above | (at_v & (jnp.cumsum(at_v, dtype=jnp.int32) <= need))
  chosen_revive = chosen_revive & (m > 0)

  new_mask = (flat_mask | chosen_revive) & ~chosen_drop
  return new_mask, m


def _top_k(values, count):
  """``lax.top_k`` behind an optimization barrier.

  XLA CPU lowers top_k to sort + slice and turns that back into its fast TopK kernel only
  when the slice is the sort's sole user; slicing the result further (as the callers do)
  otherwise lets the simplifier merge the slices and leaves a full comparator sort (8 ms
  instead of 0.4 ms on a [2, 32768] operand).
  """
  # The extra scalar keeps the barrier's operand a fresh tuple: a barrier fed the TopK tuple
  # itself crashes XLA's TopkDecomposer (used for sharded operands).
  vals, idx, _ = jax.lax.optimization_barrier((*jax.lax.top_k(values, count), jnp.zeros((), jnp.int32)))
  return vals, idx


def _candidate_lists(flat_score, flat_mask, lengths, capacity, block=_BLOCK):
  """The largest pruned and smallest kept scores, each in the swap order, in one pass.

  Returns ``(vals, idx)`` of shape ``[2, L]`` with ``L = min(capacity, ...)``: row 0 holds
  pruned scores descending, row 1 the *negated* kept scores descending (kept scores
  ascending), each with their flat indices; equal scores are ordered by flat index. Exactly
  ``lax.top_k`` of the two masked key rows, computed as: one fused pass for the maxima of
  blocks of ``block`` entries of both rows (the only pass over the layer), ``top_k`` over
  the ``n / block`` block maxima, then ``top_k`` over the ``L`` best blocks gathered in
  ascending block order. Every one of the ``L`` best entries lies in one of the ``L`` best
  blocks (ranked by their best entry, value descending then block index ascending), and the
  ascending gather keeps ties ordered by flat index.
  """
  n = flat_score.shape[0]
  length = min(capacity, max(lengths))
  neg_inf = jnp.array(-jnp.inf, flat_score.dtype)

  def keys(score, mask):  # [..., m] -> [2, ..., m]; padding (score +inf, kept) is -inf in both
    return jnp.where(jnp.stack([mask, ~mask]), neg_inf, jnp.stack([score, -score]))

  if n <= 2 * length * block:  # small layer: top_k over the entries themselves
    return _top_k(keys(flat_score, flat_mask), length)
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  if pad:
    flat_score = jnp.pad(flat_score, (0, pad), constant_values=jnp.inf)
    flat_mask = jnp.pad(flat_mask, (0, pad), constant_values=True)
  score_blocks = flat_score.reshape(n_blocks, block)
  mask_blocks = flat_mask.reshape(n_blocks, block)
  # One variadic reduction, so that XLA fuses the masking into it and writes no n-sized
  # temporary (a stacked [2, n] key array would be materialised, and fresh temporaries of
  # tens of MB cost page faults on every call).
  block_max = jax.lax.reduce(
    (jnp.where(mask_blocks, neg_inf, score_blocks), jnp.where(mask_blocks, -score_blocks, neg_inf)),
    (neg_inf, neg_inf),
    lambda x, y: (jnp.maximum(x[0], y[0]), jnp.maximum(x[1], y[1])),
    (1,),
  )
  block_max = jnp.stack(block_max)  # [2, n_blocks]
  _, best = _top_k(block_max, length)
  best = jnp.sort(best, axis=1)  # [2, length], ascending block index
  gathered = keys(score_blocks[best], mask_blocks[best])  # [2, 2, length, block]
  gathered = jnp.stack([gathered[0, 0], gathered[1, 1]]).reshape(2, length * block)
  vals, pos = _top_k(gathered, length)
  idx = jnp.take_along_axis(best, pos // block, axis=1) * block + pos % block
  return vals, idx


def _fast_swap(flat_score, flat_mask, prune_count, rate, max_swaps, capacity):
  """Swap rule from the two candidate lists: ``(new_mask, m, exact)``.

  ``exact`` is False when the lists are too short to decide the rule (the layer has
  ``capacity`` or more inversions); the caller then uses :func:`_sort_swap`.
  """
  n = flat_score.shape[0]
  k = prune_count
  len_p = min(capacity, k)
  len_q = min(capacity, n - k)
  common = min(len_p, len_q)
  vals, idx = _candidate_lists(flat_score, flat_mask, (len_p, len_q), capacity)
  p_vals, p_idx = vals[0, :len_p], idx[0, :len_p]
  q_vals, q_idx = -vals[1, :len_q], idx[1, :len_q]
  inversions = jnp.sum(p_vals[:common] > q_vals[:common], dtype=jnp.int32)
  # The lists decide everything when j < common: j itself, p_(j+1) for t = max(p_(j+1), q_j),
  # all of R (within the first j) and |D| whenever it can equal |R| <= j. When j reaches
  # common, they still do if j == min(k, n - k) (no more inversions possible) and each list
  # is either longer than j or complete.
  at_most = inversions == min(k, n - k)
  if len_p < k:
    at_most = at_most & (inversions < len_p)
  if len_q < n - k:
    at_most = at_most & (inversions < len_q)
  exact = (inversions < common) | at_most
  neg_inf = jnp.array(-jnp.inf, p_vals.dtype)
  p_ext = jnp.concatenate([p_vals, neg_inf[None]])
  q_ext = jnp.concatenate([neg_inf[None], q_vals])
  j = jnp.minimum(inversions, common)
  threshold = jnp.maximum(p_ext[j], q_ext[j])
  n_revive = jnp.sum(p_vals > threshold, dtype=jnp.int32)  # all of R is in the list
  n_drop = jnp.sum(q_vals <= threshold, dtype=jnp.int32)  # exact whenever it can equal n_revive
  act = exact & (inversions > 0) & (n_revive > 0) & (n_revive == n_drop)
  m = jnp.where(act, _num_swaps(rate, n_revive, max_swaps), 0)
  return _apply_swaps(flat_mask, p_idx, q_idx, m), m, exact


@functools.partial(jax.jit, static_argnames=("prune_counts", "max_swaps", "capacity"))
def _swap_flat(flat_scores, flat_masks, rate, prune_counts, max_swaps, capacity):
  """The swap rule on several flat leaves (0 < k < n each): candidate lists, sort fallback.

  One ``lax.cond`` for all the leaves: when every leaf's lists are exact (the common case)
  the fast results are returned as they are; otherwise each leaf that needs it is redone
  by the full sort (a per-leaf ``lax.cond`` inside the fallback branch).
  """
  fast = [
    _fast_swap(s, m, k, rate, max_swaps, capacity) for s, m, k in zip(flat_scores, flat_masks, prune_counts)
  ]
  new_masks = tuple(f[0] for f in fast)
  n_swaps = tuple(f[1] for f in fast)
  exact = jnp.stack([f[2] for f in fast])

  def fallback(operands):
    new_masks, n_swaps = operands
    out_masks, out_swaps = [], []
    for i, (s, m, k) in enumerate(zip(flat_scores, flat_masks, prune_counts)):
      new, n = jax.lax.cond(
        exact[i],
        lambda s, m, i=i: (new_masks[i], n_swaps[i]),
        lambda s, m, k=k: _sort_swap(s, m, prune_count=k, rate=rate, max_swaps=max_swaps),
        s, m,
      )
      out_masks.append(new)
      out_swaps.append(n)
    return tuple(out_masks), tuple(out_swaps)

  return jax.lax.cond(jnp.all(exact), lambda operands: operands, fallback, (new_masks, n_swaps))


@functools.partial(jax.jit, static_argnames=("prune_counts", "max_swaps"))
def _sort_flat(flat_scores, flat_masks, rate, prune_counts, max_swaps):
  results = [
    _sort_swap(s, m, prune_count=k, rate=rate, max_swaps=max_swaps)
    for s, m, k in zip(flat_scores, flat_masks, prune_counts)
  ]
  return tuple(r[0] for r in results), tuple(r[1] for r in results)


def _unshard_explicit(x: jax.Array) -> jax.Array:
  """Replicates a leaf sharded over Explicit mesh axes (top_k and sort need whole rows).

  With Auto axes (the default mesh) XLA's partitioner does this by itself; with Explicit
  axes the sharding is part of the type and top_k refuses a sharded axis.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))


def _prepare(score, mask, prune_count, rate, max_swaps):
  score = _unshard_explicit(jnp.asarray(score))
  mask = _unshard_explicit(jnp.asarray(mask))
  if score.shape != mask.shape:
    raise ValueError(f"score shape {score.shape} and mask shape {mask.shape} differ.")
  if mask.dtype != jnp.bool_:
    raise TypeError(f"mask must be bool (True = kept), got dtype {mask.dtype}.")
  k = _check_prune_count(prune_count, score.size)
  _check_rate(rate)
  return score, mask, k, _check_max_swaps(max_swaps)


def swap_update(
  score: jax.Array,
  mask: jax.Array,
  prune_count: int,
  rate: float | jax.Array,
  max_swaps: int | None = None,
  *,
  capacity: int = DEFAULT_CAPACITY,
) -> tuple[jax.Array, jax.Array]:
  """Applies the jackpot swap rule to one leaf.

  Args:
    score: Float scores of any shape.
    mask: Bool mask of the same shape, True = kept, with exactly ``prune_count`` False.
    prune_count: Static number of pruned entries k (kept exact by the update).
    rate: Fraction of the revive candidates to swap, in (0, 1]; may be a traced scalar.
    max_swaps: Optional static cap on the swaps of this leaf in this call.
    capacity: Static length of the candidate lists (a speed knob; results do not depend on
      it): layers with ``capacity`` or more inversions take the full-sort fallback.

  Returns:
    ``(new_mask, n_swaps)``: the updated bool mask (same shape) and the number of swapped
    pairs as an int32 scalar.
  """
  score, mask, k, max_swaps = _prepare(score, mask, prune_count, rate, max_swaps)
  n = score.size
  if k == 0 or k == n:  # R (or D) is empty by construction
    return mask, jnp.zeros((), jnp.int32)
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}.")
  (new_flat,), (m,) = _swap_flat(
    (_canonical_scores(score),), (mask.reshape(-1),), rate, prune_counts=(k,), max_swaps=max_swaps, capacity=capacity
  )
  return new_flat.reshape(mask.shape), m


def swap_update_sort(
  score: jax.Array,
  mask: jax.Array,
  prune_count: int,
  rate: float | jax.Array,
  max_swaps: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Same contract as :func:`swap_update`, always with one full sort of the leaf."""
  score, mask, k, max_swaps = _prepare(score, mask, prune_count, rate, max_swaps)
  if k == 0 or k == score.size:
    return mask, jnp.zeros((), jnp.int32)
  new_flat, m = _sort_swap(
    _canonical_scores(score), mask.reshape(-1), prune_count=k, rate=rate, max_swaps=max_swaps
  )
  return new_flat.reshape(mask.shape), m


def update_masks(
  scores: Any,
  masks: Any,
  prune_counts: Any,
  rate: float | jax.Array,
  max_swaps: int | None = None,
  *,
  capacity: int = DEFAULT_CAPACITY,
  impl: str = "topk",
) -> tuple[Any, Any]:
  """Applies :func:`swap_update` to every leaf of matching pytrees.

  Args:
    scores: Pytree of float score arrays.
    masks: Pytree of bool masks with the structure of ``scores``.
    prune_counts: Pytree of static ints with the structure of ``scores``; leaves with 0
      pass through unchanged with 0 swaps.
    rate: Fraction in (0, 1], shared by all leaves; may be traced.
    max_swaps: Optional static cap on swaps per leaf per call.
    capacity: See :func:`swap_update`.
    impl: ``"topk"`` (default, fast) or ``"sort"`` (full sort per leaf, for comparison).

  Returns:
    ``(new_masks, n_swaps)``: the new masks, and a pytree of int32 scalars (swaps per leaf).
  """
  _check_rate(rate)
  if impl not in ("topk", "sort"):
    raise ValueError(f"impl must be 'topk' or 'sort', got {impl!r}.")
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}.")
  treedef = jax.tree.structure(scores)
  score_leaves = treedef.flatten_up_to(scores)
  mask_leaves = treedef.flatten_up_to(masks)
  count_leaves = treedef.flatten_up_to(prune_counts)
  new_leaves = [None] * len(score_leaves)
  swap_leaves = [None] * len(score_leaves)
  active = []  # leaves with 0 < k < n; the others pass through with 0 swaps
  for i, (s, m, k) in enumerate(zip(score_leaves, mask_leaves, count_leaves)):
    s, m, k, max_swaps = _prepare(s, m, k, rate, max_swaps)
    if k == 0 or k == s.size:
      new_leaves[i], swap_leaves[i] = m, jnp.zeros((), jnp.int32)
    else:
      active.append((i, _canonical_scores(s), m, k))
  if active:
    fn = _swap_flat if impl == "topk" else _sort_flat
    kwargs = dict(capacity=capacity) if impl == "topk" else {}
    new_flat, n_swaps = fn(
      tuple(a[1] for a in active), tuple(a[2].reshape(-1) for a in active), rate,
      prune_counts=tuple(a[3] for a in active), max_swaps=max_swaps, **kwargs,
    )
    for (i, _, m, _), new, n in zip(active, new_flat, n_swaps):
      new_leaves[i], swap_leaves[i] = new.reshape(m.shape), n
  return treedef.unflatten(new_leaves), treedef.unflatten(swap_leaves)


def swap_update_reference(
  score: np.ndarray,
  mask: np.ndarray,
  prune_count: int,
  rate: float,
  max_swaps: int | None = None,
) -> tuple[np.ndarray, int]:
  """Direct NumPy port of the reference ``ls_pop_up`` (for tests), with the tie rule above.

  Returns:
    ``(new_mask, n_swaps)`` as a NumPy bool array and a Python int.
  """
  score = np.asarray(score)
  mask = np.asarray(mask, dtype=bool)
  m_flat = score.reshape(-1).astype(np.float32) + np.float32(0.0)  # -0.0 -> 0.0
  m_flat[np.abs(m_flat) < np.finfo(np.float32).tiny] = 0.0       # subnormals count as zero
  flat_bm = mask.reshape(-1).copy()
  k = int(prune_count)
  if k == 0:
    return mask.copy(), 0
  threshold = np.sort(m_flat)[k - 1]
  idx0 = np.nonzero(~flat_bm)[0]  # pruned, ascending flat index
  idx1 = np.nonzero(flat_bm)[0]  # kept
  pop_idx0 = np.nonzero(m_flat[idx0] > threshold)[0]
  pop_idx1 = np.nonzero(m_flat[idx1] <= threshold)[0]
  if pop_idx0.size == 0 or pop_idx1.size == 0 or pop_idx0.size != pop_idx1.size:
    return mask.copy(), 0
  # Stable sorts: equal scores keep ascending flat-index order.
  sorted_pop_idx0 = np.argsort(-m_flat[idx0][pop_idx0], kind="stable")
  sorted_pop_idx1 = np.argsort(m_flat[idx1][pop_idx1], kind="stable")
  n_revive = pop_idx0.size
  product = np.float32(np.float32(rate) * np.float32(n_revive))
  pop_num = int(math.ceil(np.float32(product * np.float32(1.0 - _CEIL_TOLERANCE))))
  pop_num = min(pop_num, n_revive)
  if max_swaps is not None:
    pop_num = min(pop_num, int(max_swaps))
  flat_bm[idx0[pop_idx0][sorted_pop_idx0[:pop_num]]] = True
  flat_bm[idx1[pop_idx1][sorted_pop_idx1[:pop_num]]] = False
  return flat_bm.reshape(mask.shape), pop_num
