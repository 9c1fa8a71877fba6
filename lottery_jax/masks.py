"""Pure pytree mask algebra: allocation, exact-count masks, set algebra, packing.

Every function here takes and returns pytrees (Flax linen params dicts, Flax NNX
``State``, Equinox modules filtered with ``eqx.filter(model, eqx.is_array)``,
plain dicts...) and imports nothing but JAX and NumPy. Masks are boolean arrays
with the shape of the leaf they mask, ``True`` = kept. Leaves that a method does
not select get an all-``True`` mask, never ``None``.

Conventions pinned here (and relied on by the rest of the library):

* **Exact counts.** A leaf of ``n`` weights at sparsity ``p`` prunes exactly
  ``floor(p * n)`` weights (:func:`prune_count`). The product is taken to be an
  integer when it is within floating-point rounding of one (``|p*n - round(p*n)|
  <= eps(dtype(p)) * n``), so ``p = 0.9, n = 10`` prunes 9 and ``p = c / n``
  always prunes ``c``. Sparsities must lie in ``[0, 1)``, so at least one weight
  of a non-empty leaf is always kept.
* **Ties.** Entries are ranked by ``(value, flat index)``: among equal values the
  lower flat (row-major) index is pruned first. ``-0.0`` equals ``0.0``; NaN
  ranks above ``+inf`` (pruned last). Scores are compared as float32 (bfloat16
  and float16 convert exactly; float64 is rounded). Global magnitude ranks by
  ``(|w|, leaf order, flat index)``, leaf order being ``jax.tree`` flatten order.
  The same inputs therefore give the same mask on one device or many.
* **Selection** is exact and sort-free: a bisection of at most 32 steps on
  order-preserving uint32 keys finds the k-th smallest key; a cumulative sum
  ranks the ties at it only when some of them must stay.
  Everything is jit-compatible with static shapes; sparsities may be traced.
* **Traced sparsities** are float32 when x64 is off, so under ``jit`` the count
  is exact up to float32 resolution of ``p * n`` (always exact for
  ``p = c / n`` with ``n < 2**24``). Pass concrete sparsities for guaranteed
  counts on huge leaves.
* **Partitions** (strong tickets in partially frozen networks) are pytrees of
  int8 codes: :data:`SEARCHABLE`, :data:`PRUNED` (frozen pruned) and
  :data:`LOCKED` (frozen kept); see :func:`freeze`.

Validation raises ``ValueError`` naming the leaf path and the offending value;
value checks only run on concrete inputs (never on tracers).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOCKED", "PRUNED", "SEARCHABLE", "LeafStats", "Overlap", "Partition",
    "Combined", "Summary", "allocate", "apply", "chance_overlap", "combine_by_rank",
    "density", "erk_sparsities",
    "freeze", "frozen_pruned", "intersection", "locked", "magnitude", "overlap",
    "pack", "partition_summary", "path_str", "prunable", "prunable_except",
    "prune_count", "prune_counts", "random", "searchable", "sparsity",
    "straight_through", "summary", "topk", "total_sparsity", "union", "unpack",
]

PyTree = Any
KeyPath = tuple
Predicate = Callable[[KeyPath, Any], bool]
# A partition is a pytree shaped like the params with int8 code leaves.
Partition = PyTree

SEARCHABLE = 0  # entry is searched over (chosen by top-k / magnitude / random)
PRUNED = 1  # frozen pruned: always 0, counts toward the target sparsity
LOCKED = 2  # frozen locked: always kept

# Path components containing any of these are never prunable (biases, norms).
EXCLUDED_NAME_PARTS = ("bias", "scale", "bn", "norm", "mean", "var")

_SIGN = np.uint32(0x80000000)
_U32_MAX = np.uint32(0xFFFFFFFF)


# --------------------------------------------------------------------------- #
# Paths and leaf selection
# --------------------------------------------------------------------------- #


def _key_name(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(path: KeyPath) -> str:
  """Readable '/'-joined name of a jax key path, e.g. ``"conv1/kernel"``.

  A trailing ``.value`` attribute (the NNX ``Variable`` wrapper) is dropped, so
  an NNX state and a linen params dict give the same names.

  Args:
    path: a key path as given by ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The path as a string; ``""`` for the root.
  """
  keys = list(path)
  if (len(keys) > 1 and isinstance(keys[-1], jax.tree_util.GetAttrKey)
      and keys[-1].name == "value"):
    keys = keys[:-1]
  return "/".join(_key_name(k) for k in keys)


def prunable(path: KeyPath, leaf: Any) -> bool:
  """Default leaf predicate: convolution and dense kernels.

  A leaf is prunable when it is an array with ``ndim >= 2`` and no component of
  its path contains (case-insensitive) any of :data:`EXCLUDED_NAME_PARTS`
  (``bias``, ``scale``, ``bn``, ``norm``, ``mean``, ``var``). The classifier is
  *not* excluded here; use ``prunable_except("classifier")`` (or whatever your
  model calls it) for that.

  Args:
    path: the leaf's key path.
    leaf: the leaf (an array; anything without ``shape`` is not prunable).

  Returns:
    Whether the leaf is selected for pruning.
  """
  shape = getattr(leaf, "shape", None)
  if shape is None or len(shape) < 2:
    return False
  for key in path:
    name = _key_name(key).lower()
    if any(part in name for part in EXCLUDED_NAME_PARTS):
      return False
  return True


def _pattern_matches(pattern: str | re.Pattern, name: str) -> bool:
  if isinstance(pattern, re.Pattern):
    return pattern.search(name) is not None
  if pattern in name or fnmatch.fnmatchcase(name, pattern):
    return True
  try:
    return re.search(pattern, name) is not None
  except re.error:
    return False


def prunable_except(*patterns: str | re.Pattern,
                    base: Predicate = prunable) -> Predicate:
  """A predicate like ``base`` that also rejects leaves whose path matches.

  A pattern matches :func:`path_str` of the leaf's path if it is a substring of
  it, an ``fnmatch`` pattern matching the whole of it, or a regular expression
  found in it (``re.search``); compiled ``re.Pattern`` objects are used as
  regexes only.

  Example: ``masks.magnitude(params, s, where=masks.prunable_except("head"))``.

  Args:
    *patterns: patterns of paths to exclude.
    base: the predicate to refine (default :func:`prunable`).

  Returns:
    A ``(path, leaf) -> bool`` predicate.
  """

  def predicate(path: KeyPath, leaf: Any) -> bool:
    if not base(path, leaf):
      return False
    name = path_str(path)
    return not any(_pattern_matches(p, name) for p in patterns)

  predicate.__name__ = f"prunable_except{patterns!r}"
  return predicate


# --------------------------------------------------------------------------- #
# Internal helpers: flattening, structure checks, concreteness
# --------------------------------------------------------------------------- #


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _any_traced(xs: Sequence[Any]) -> bool:
  return any(_is_traced(x) for x in xs)


def _flatten(tree: PyTree):
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [p for p, _ in leaves_with_path]
  leaves = [leaf for _, leaf in leaves_with_path]
  return paths, leaves, treedef


def _structure_mismatch(fn: str, name_a: str, tree_a: PyTree, name_b: str,
                        tree_b: PyTree) -> ValueError:
  paths_a = [path_str(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(tree_a)[0]]
  paths_b = [path_str(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(tree_b)[0]]
  missing = [p for p in paths_a if p not in set(paths_b)]
  extra = [p for p in paths_b if p not in set(paths_a)]
  if missing or extra:
    detail = []
    if missing:
      detail.append(f"leaves of {name_a} missing from {name_b}: {missing[:5]}"
                    + (" ..." if len(missing) > 5 else ""))
    if extra:
      detail.append(f"leaves of {name_b} not in {name_a}: {extra[:5]}"
                    + (" ..." if len(extra) > 5 else ""))
    msg = "; ".join(detail)
  else:
    msg = (f"same leaf paths but different containers: {name_a} is "
           f"{jax.tree.structure(tree_a)}, {name_b} is "
           f"{jax.tree.structure(tree_b)}")
  return ValueError(f"{fn}: tree structures of {name_a} and {name_b} differ: "
                    f"{msg}")


def _aligned_leaves(fn: str, name_ref: str, ref: PyTree, name: str,
                    tree: PyTree, treedef, broadcast: bool = False) -> list:
  """Leaves of ``tree`` in the flatten order of ``ref``'s ``treedef``.

  With ``broadcast``, a single leaf (e.g. a float) is repeated for every leaf.
  Containers may differ if the leaf paths are identical (a dict of sparsities
  for an NNX state, say).
  """
  other_def = jax.tree.structure(tree)
  if broadcast and jax.tree_util.treedef_is_leaf(other_def):
    return [tree] * treedef.num_leaves
  if other_def == treedef:
    return jax.tree.leaves(tree)
  ref_paths = [path_str(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(ref)[0]]
  pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
  if [path_str(p) for p, _ in pairs] == ref_paths:
    return [leaf for _, leaf in pairs]
  raise _structure_mismatch(fn, name_ref, ref, name, tree)


def _size(leaf: Any) -> int:
  return int(np.prod(np.shape(leaf), dtype=np.int64))


def _check_bool(fn: str, path: KeyPath, leaf: Any, what: str = "mask") -> None:
  dtype = getattr(leaf, "dtype", None)
  if dtype is None or jnp.dtype(dtype) != jnp.bool_:
    raise ValueError(
        f"{fn}: {what} for leaf '{path_str(path)}' must be a boolean array, got "
        f"{type(leaf).__name__} of dtype {dtype}; cast with `.astype(bool)` or "
        f"build it with lottery_jax.masks")


def _check_shape(fn: str, path: KeyPath, leaf: Any, like: Any, what: str,
                 like_what: str) -> None:
  if np.shape(leaf) != np.shape(like):
    raise ValueError(
        f"{fn}: {what} for leaf '{path_str(path)}' has shape {np.shape(leaf)} "
        f"but the {like_what} has shape {np.shape(like)}")


# --------------------------------------------------------------------------- #
# Exact counts
# --------------------------------------------------------------------------- #


def _check_sparsity(fn: str, path: KeyPath | None, value: Any,
                    what: str = "sparsity", upper_open: bool = True) -> None:
  """Validates a concrete fraction: in [0, 1) (or [0, 1] if not upper_open)."""
  if _is_traced(value):
    return
  where = f" for leaf '{path_str(path)}'" if path is not None else ""
  arr = np.asarray(value)
  if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.floating)
                           or np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f"{fn}: {what}{where} must be a real scalar, got {value!r}")
  v = float(arr)
  ok = (0.0 <= v < 1.0) if upper_open else (0.0 <= v <= 1.0)
  if not ok:
    interval = "[0, 1)" if upper_open else "[0, 1]"
    raise ValueError(f"{fn}: {what}{where} is {value!r}; expected a value in "
                     f"{interval}")


def _float_dtype(p: Any):
  dtype = getattr(p, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return None
  return jnp.dtype(dtype)


def _count_concrete(p: Any, n: int, cap: int) -> int:
  dtype = _float_dtype(p)
  if dtype is None or dtype.itemsize < 4:  # Python floats; ints; widen f16/bf16
    dtype = np.dtype(np.float64) if dtype is None else np.dtype(np.float32)
  x = np.asarray(p, dtype=dtype) * dtype.type(n)
  nearest = np.round(x)
  tol = float(np.finfo(dtype).eps) * max(n, 1)
  k = int(nearest) if abs(float(x) - float(nearest)) <= tol else int(np.floor(x))
  return max(0, min(k, cap))


def _count_traced(p: Any, n: int, cap: int):
  p = jnp.asarray(p)
  if not jnp.issubdtype(p.dtype, jnp.floating) or p.dtype.itemsize < 4:
    p = p.astype(jnp.float32)
  x = p * jnp.asarray(n, p.dtype)
  nearest = jnp.round(x)
  tol = jnp.finfo(p.dtype).eps * max(n, 1)
  k = jnp.where(jnp.abs(x - nearest) <= tol, nearest, jnp.floor(x))
  return jnp.clip(k, 0, cap).astype(jnp.int32)


def prune_count(sparsity: Any, n: int):
  """Number of weights pruned from a leaf of ``n`` weights: ``floor(p * n)``.

  This is THE count rule of the library. ``p * n`` is treated as an integer
  when within rounding error of one (``eps(dtype) * n``), so ``0.9 * 10`` gives
  9 and ``(c / n) * n`` gives ``c``. The result is capped at ``n - 1``: a
  sparsity below 1 never prunes a whole non-empty leaf.

  Args:
    sparsity: fraction in ``[0, 1)``; a Python/NumPy scalar gives a Python
      ``int``, a traced value an int32 array.
    n: the leaf size.

  Returns:
    The prune count.
  """
  cap = max(n - 1, 0)
  if _is_traced(sparsity):
    return _count_traced(sparsity, n, cap)
  _check_sparsity("prune_count", None, sparsity)
  return _count_concrete(sparsity, n, cap)


def prune_counts(params: PyTree, sparsities: Any) -> PyTree:
  """Per-leaf prune counts ``floor(p * n)`` (see :func:`prune_count`).

  Args:
    params: pytree of arrays (only shapes are used).
    sparsities: pytree of concrete per-leaf sparsities matching ``params`` (as
      from :func:`allocate`), or one scalar for every leaf.

  Returns:
    A pytree like ``params`` of Python ints.

  Raises:
    ValueError: bad sparsity (naming the leaf) or mismatched structures.
  """
  paths, leaves, treedef = _flatten(params)
  sps = _aligned_leaves("prune_counts", "params", params, "sparsities",
                        sparsities, treedef, broadcast=True)
  counts = []
  for path, leaf, p in zip(paths, leaves, sps):
    if _is_traced(p):
      raise ValueError(f"prune_counts: sparsity for leaf '{path_str(path)}' is "
                       "traced; prune_counts needs concrete sparsities")
    _check_sparsity("prune_counts", path, p)
    n = _size(leaf)
    counts.append(_count_concrete(p, n, max(n - 1, 0)))
  return jax.tree.unflatten(treedef, counts)


def _leaf_count(fn: str, path: KeyPath, p: Any, n: int):
  cap = max(n - 1, 0)
  if _is_traced(p):
    return _count_traced(p, n, cap)
  _check_sparsity(fn, path, p)
  return _count_concrete(p, n, cap)


# --------------------------------------------------------------------------- #
# Exact selection kernel
# --------------------------------------------------------------------------- #


def _order_keys(x: jax.Array) -> jax.Array:
  """Flat uint32 keys whose unsigned order is the float order of ``x``."""
  x = jnp.ravel(x)
  if x.dtype != jnp.float32:
    x = x.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 ties with +0.0
  x = jnp.where(jnp.isnan(x), jnp.float32(jnp.nan), x)  # one NaN, above +inf
  u = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(u >= _SIGN, ~u, u | _SIGN)


def _kth_smallest_key(keys: jax.Array, k, sel: jax.Array | None):
  """A threshold t with #{sel & keys < t} <= k <= #{sel & keys <= t}, by bisection.

  The smallest such t, unless the bisection meets a t with exactly k keys at or
  below it first: it stops there, since the k smallest are then exactly the keys
  <= t and no tie needs ranking. Either way `_smallest` selects the same entries.
  Stopping early saves about log2 of the gap between the k-th and (k+1)-th keys
  of the 32 passes (4 to 8 on random scores of 2^14 to 2^21 entries).
  """

  def cond(carry):
    lo, hi = carry
    return lo < hi

  def body(carry):
    lo, hi = carry
    mid = lo + (hi - lo) // 2
    le = keys <= mid
    if sel is not None:
      le = le & sel
    c = jnp.sum(le, dtype=jnp.int32)
    return (jnp.where(c < k, mid + 1, jnp.where(c == k, mid, lo)),
            jnp.where(c >= k, mid, hi))

  t, _ = jax.lax.while_loop(cond, body, (jnp.uint32(0), jnp.uint32(_U32_MAX)))
  return t


def _smallest(keys: jax.Array, k, sel: jax.Array | None = None) -> jax.Array:
  """Flat bool: the k entries (among ``sel``) of smallest (key, flat index)."""
  t = _kth_smallest_key(keys, k, sel)

  def within(x):
    return x if sel is None else x & sel

  # #{key < t} < k <= #{key <= t} by the choice of t: every entry below t goes, and
  # `remaining` of the ties at t, the lowest flat indices first.
  remaining = k - jnp.sum(within(keys < t), dtype=jnp.int32)
  n_equal = jnp.sum(within(keys == t), dtype=jnp.int32)

  def every_tie(keys, t, remaining):  # the usual case: no ranking among ties needed
    return within(keys <= t)

  def lowest_ties(keys, t, remaining):
    equal = within(keys == t)
    tie_rank = jnp.cumsum(equal, dtype=jnp.int32)  # 1-based among the ties
    return within(keys < t) | (equal & (tie_rank <= remaining))

  # The cumulative sum costs more than the whole bisection on a CPU (2^22 entries:
  # ~2x, benchmarks/slt_topk.py), so it runs only when some ties at t must stay
  # (never with distinct scores). Under vmap the cond becomes a select and both
  # branches run, as before.
  return jax.lax.cond(n_equal == remaining, every_tie, lowest_ties, keys, t, remaining)


def _keep_from_keys(keys: jax.Array, k, codes: jax.Array | None) -> jax.Array:
  """Flat keep mask: prune the k smallest keys, respecting a partition."""
  if codes is None:
    pruned = _smallest(keys, k)
  else:
    frozen = codes == PRUNED
    search = codes == SEARCHABLE
    n_frozen = jnp.sum(frozen, dtype=jnp.int32)
    n_search = jnp.sum(search, dtype=jnp.int32)
    # Clamped so the partition always holds (an infeasible traced target
    # yields the nearest feasible sparsity; concrete ones raise before this).
    k_search = jnp.clip(k - n_frozen, 0, n_search)
    # Entries outside the search get the key 2**32 - 1, above every real key (NaN
    # included), so the selection never picks them and its passes read no codes.
    pruned = frozen | _smallest(jnp.where(search, keys, jnp.uint32(_U32_MAX)), k_search)
  return ~pruned


# Kernels run on flattened leaves padded to a bucketed length, so one compiled
# kernel serves every leaf size in a bucket (all leaves up to 4096 entries
# share one). Padding entries get the key 2**32 - 1 and come last in index
# order, so they are never selected. Under an outer jit the kernels inline.
_MIN_BUCKET = 4096


def _bucket(n: int) -> int:
  """Padded length for ``n`` entries: at most 12.5% above ``n``."""
  if n <= _MIN_BUCKET:
    return _MIN_BUCKET
  step = 1 << ((n - 1).bit_length() - 4)
  return -(-n // step) * step


def _pad_flat(x: Any, length: int, value: Any) -> jax.Array:
  flat = jnp.ravel(x)
  if flat.shape[0] == length:
    return flat
  return jnp.pad(flat, (0, length - flat.shape[0]), constant_values=value)


def _mask_padding(keys: jax.Array, n) -> jax.Array:
  iota = jax.lax.iota(jnp.int32, keys.shape[0])
  return jnp.where(iota < n, keys, jnp.uint32(_U32_MAX))


@functools.partial(jax.jit, static_argnames=("kind",))
def _keep_flat(values: jax.Array, n, k, codes: jax.Array | None,
               kind: str) -> jax.Array:
  x = jnp.abs(values) if kind == "magnitude" else values
  return _keep_from_keys(_mask_padding(_order_keys(x), n), k, codes)


@functools.partial(jax.jit, static_argnames=("length",))
def _keep_random_flat(rng: jax.Array, n, k, codes: jax.Array | None,
                      length: int) -> jax.Array:
  bits = jax.random.bits(rng, (length,), jnp.uint32)
  return _keep_from_keys(_mask_padding(bits, n), k, codes)


def _partition_leaves(fn: str, partition: PyTree | None, params: PyTree,
                      paths, leaves, treedef) -> list:
  if partition is None:
    return [None] * len(leaves)
  codes = _aligned_leaves(fn, "params", params, "partition", partition, treedef)
  for path, leaf, c in zip(paths, leaves, codes):
    _check_shape(fn, path, c, leaf, "partition", "leaf")
    dtype = getattr(c, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"{fn}: partition for leaf '{path_str(path)}' must hold "
                       f"integer codes (int8), got dtype {dtype}")
  return codes


def _check_feasible(fn: str, path: KeyPath, codes: Any, k: Any, n: int,
                    p: Any) -> None:
  if codes is None or _is_traced(codes) or _is_traced(k):
    return
  c = np.asarray(codes)
  n_frozen = int(np.count_nonzero(c == PRUNED))
  n_locked = int(np.count_nonzero(c == LOCKED))
  bad = np.setdiff1d(np.unique(c), [SEARCHABLE, PRUNED, LOCKED])
  if bad.size:
    raise ValueError(f"{fn}: partition for leaf '{path_str(path)}' holds "
                     f"unknown codes {bad.tolist()}; expected SEARCHABLE=0, "
                     "PRUNED=1, LOCKED=2")
  if n_frozen > k:
    raise ValueError(
        f"{fn}: infeasible target for leaf '{path_str(path)}': sparsity {p!r} "
        f"prunes {k} of {n} weights but the partition freezes {n_frozen} as "
        "pruned")
  if k > n - n_locked:
    raise ValueError(
        f"{fn}: infeasible target for leaf '{path_str(path)}': sparsity {p!r} "
        f"prunes {k} of {n} weights but the partition locks {n_locked}, "
        f"leaving at most {n - n_locked} prunable")


def _make_masks(fn: str, tree: PyTree, sparsities: Any, where: Predicate,
                partition: PyTree | None, kind: str, rng: Any = None) -> PyTree:
  paths, leaves, treedef = _flatten(tree)
  sps = _aligned_leaves(fn, "params", tree, "sparsities", sparsities, treedef,
                        broadcast=True)
  codes = _partition_leaves(fn, partition, tree, paths, leaves, treedef)
  out = []
  for i, (path, leaf, p, c) in enumerate(zip(paths, leaves, sps, codes)):
    shape = np.shape(leaf)
    if not where(path, leaf):
      out.append(jnp.ones(shape, jnp.bool_))
      continue
    n = _size(leaf)
    k = _leaf_count(fn, path, p, n)
    _check_feasible(fn, path, c, k, n, p)
    k = k if _is_traced(k) else np.int32(k)
    length = _bucket(n)
    if c is not None:
      c = _pad_flat(jnp.asarray(c, jnp.int8), length, LOCKED)
    if kind == "random":
      keep = _keep_random_flat(jax.random.fold_in(rng, i), np.int32(n), k, c,
                               length)
    else:
      values = jnp.asarray(leaf)
      if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)
      keep = _keep_flat(_pad_flat(values, length, 0), np.int32(n), k, c, kind)
    out.append(jnp.reshape(keep[:n], shape))
  return jax.tree.unflatten(treedef, out)


def magnitude(params: PyTree, sparsities: Any, where: Predicate = prunable, *,
              partition: Partition | None = None) -> PyTree:
  """Magnitude masks: prune the ``floor(p * n)`` smallest ``|w|`` per leaf.

  Ties: among equal magnitudes the lower flat index is pruned first.

  Args:
    params: pytree of weights.
    sparsities: per-leaf sparsities (as from :func:`allocate`) or one scalar
      for every selected leaf; may be traced.
    where: leaf predicate; other leaves get all-True masks.
    partition: optional :func:`freeze` partition to respect: frozen-pruned
      entries count toward the sparsity and stay pruned, locked ones stay kept,
      the rest of the budget goes to the smallest searchable entries.

  Returns:
    Boolean masks like ``params`` (True = kept).

  Raises:
    ValueError: sparsity outside [0, 1), mismatched structures, or a target the
      partition makes infeasible (naming the leaf).

  >>> import jax.numpy as jnp
  >>> from lottery_jax import masks
  >>> params = {"conv": {"kernel": jnp.array([[0.3, -0.1], [2.0, 0.1]]),
  ...                    "bias": jnp.ones(2)}}
  >>> kept = masks.magnitude(params, 0.5)     # floor(0.5 * 4) = 2 pruned per kernel
  >>> kept["conv"]["kernel"]                  # tie |0.1|: the lower flat index goes
  Array([[ True, False],
         [ True, False]], dtype=bool)
  >>> kept["conv"]["bias"]                    # not selected: all kept
  Array([ True,  True], dtype=bool)
  >>> masks.apply(params, kept)["conv"]["kernel"]
  Array([[0.3, 0. ],
         [2. , 0. ]], dtype=float32)
  """
  return _make_masks("magnitude", params, sparsities, where, partition,
                     "magnitude")


def topk(scores: PyTree, sparsities: Any, partition: Partition | None = None,
         where: Predicate = prunable) -> PyTree:
  """Top-k masks of scores: keep the largest, prune ``floor(p * n)`` per leaf.

  Ties: among equal scores the lower flat index is pruned first; NaN scores
  rank above ``+inf``.

  Args:
    scores: pytree of score arrays (signed).
    sparsities: per-leaf sparsities or one scalar; may be traced.
    partition: optional :func:`freeze` partition to respect (see
      :func:`magnitude`).
    where: leaf predicate; other leaves get all-True masks.

  Returns:
    Boolean masks like ``scores`` (True = kept).
  """
  return _make_masks("topk", scores, sparsities, where, partition, "scores")


def random(key: jax.Array, params: PyTree, sparsities: Any,
           where: Predicate = prunable, *,
           partition: Partition | None = None) -> PyTree:
  """Uniformly random masks with exact per-leaf prune counts.

  Leaf ``i`` (in flatten order) uses ``jax.random.fold_in(key, i)``, so a
  leaf's mask does not depend on the other leaves.

  Args:
    key: a JAX PRNG key.
    params: pytree of arrays (only shapes are used).
    sparsities: per-leaf sparsities or one scalar; may be traced.
    where: leaf predicate; other leaves get all-True masks.
    partition: optional :func:`freeze` partition to respect.

  Returns:
    Boolean masks like ``params``.
  """
  return _make_masks("random", params, sparsities, where, partition, "random",
                     rng=key)


# --------------------------------------------------------------------------- #
# Allocation
# --------------------------------------------------------------------------- #


def erk_sparsities(shapes: Sequence[tuple], sparsity: Any,
                   power_scale: float = 1.0) -> list:
  """Erdos-Renyi-Kernel per-layer sparsities (Evci et al. 2020, RigL).

  Layer density is proportional to ``(sum(shape) / prod(shape)) ** power``,
  scaled so that the kept total is ``(1 - s) * N``. Layers whose density would
  exceed 1 (all layers sharing the current largest ratio at once) are made
  dense and the others rescaled, until no density exceeds 1 (the RigL loop).

  Args:
    shapes: the selected leaves' shapes.
    sparsity: global target in [0, 1); a traced value gives traced outputs.
    power_scale: exponent on the ratio (1.0 = ERK; 0.0 = uniform).

  Returns:
    One sparsity per shape: Python floats, or float32 arrays if traced.
  """
  if not shapes:
    return []
  traced = _is_traced(sparsity)
  xp = jnp if traced else np
  n = xp.asarray([float(math.prod(s)) for s in shapes])
  raw = xp.asarray([(float(sum(s)) / max(float(math.prod(s)), 1.0))
                    ** power_scale for s in shapes])
  s = sparsity if traced else float(sparsity)
  dense = xp.zeros(len(shapes), bool)

  def scale(dense):
    rhs = xp.sum(xp.where(dense, -n * s, n * (1 - s)))
    divisor = xp.sum(xp.where(dense, 0.0, raw * n))
    return rhs / xp.where(divisor > 0, divisor, 1.0)

  for _ in range(len(shapes) + 1):
    eps = scale(dense)
    max_raw = xp.max(xp.where(dense, -xp.inf, raw))
    exceed = (eps * max_raw > 1) & xp.any(~dense)
    if not traced and not exceed:
      break
    dense = dense | (exceed & (raw == max_raw))
  eps = scale(dense)
  out = xp.where(dense, 0.0, xp.clip(1 - eps * raw, 0.0, 1.0))
  if traced:
    return [out[i] for i in range(len(shapes))]
  return [float(v) for v in out]


def _protect_largest(keys: jax.Array) -> jax.Array:
  """Gives the leaf's last-ranked entry (largest key, highest index among
  ties) a key above every real key, so it is never selected."""
  if keys.size == 0:
    return keys
  last = keys.size - 1 - jnp.argmax(keys[::-1])
  return keys.at[last].set(_U32_MAX)


@jax.jit
def _global_counts(values: list, sizes: list, k) -> list:
  """Per-leaf counts of the k smallest (|w|, leaf, index) over all leaves,
  never counting a leaf's last-ranked weight (no leaf is pruned whole).

  ``values`` are flattened leaves padded to bucketed lengths; ``sizes`` their
  real lengths.
  """
  keys = []
  for v, n in zip(values, sizes):
    kk = _order_keys(jnp.abs(v))
    real = jax.lax.iota(jnp.int32, kk.shape[0]) < n
    kk = _protect_largest(jnp.where(real, kk, jnp.uint32(0)))
    keys.append(jnp.where(real, kk, jnp.uint32(_U32_MAX)))

  def body(_, carry):
    lo, hi = carry
    mid = lo + (hi - lo) // 2
    count = sum(jnp.sum(kk <= mid, dtype=jnp.int32) for kk in keys)
    ok = count >= k
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  t, _ = jax.lax.fori_loop(0, 32, body, (jnp.uint32(0), jnp.uint32(_U32_MAX)))
  below = jnp.stack([jnp.sum(kk < t, dtype=jnp.int32) for kk in keys])
  equal = jnp.stack([jnp.sum(kk == t, dtype=jnp.int32) for kk in keys])
  remaining = k - jnp.sum(below)
  equal_before = jnp.cumsum(equal) - equal
  take = jnp.clip(remaining - equal_before, 0, equal)
  return below + take


def allocate(params: PyTree, sparsity: Any, method: str = "global_magnitude",
             where: Predicate = prunable, *, erk_power_scale: float = 1.0
             ) -> PyTree:
  """Per-leaf sparsities that meet one global target ``sparsity``.

  Methods:
    * ``"global_magnitude"``: one ``|w|`` threshold over all selected leaves
      such that exactly ``floor(s * N)`` weights fall below it (ties by leaf
      order, then flat index); a leaf's sparsity is ``count / n`` of its own
      pruned weights, so ``prune_counts``/``magnitude`` reproduce exactly the
      global selection. No leaf is pruned whole (sparsities must stay below
      1): each leaf's largest weight is exempt from the threshold, and the
      next-smallest weight elsewhere is pruned instead (only matters at
      extreme targets). ``floor(s * N)`` must then be at most ``N - L`` for
      ``L`` selected leaves.
    * ``"uniform"``: every selected leaf gets ``s``.
    * ``"erk"``: Erdos-Renyi-Kernel with iterative dense capping
      (:func:`erk_sparsities`); each leaf then prunes ``floor(p * n)``, so the
      total may fall short of ``s * N`` by less than one weight per leaf.

  Args:
    params: pytree of weights.
    sparsity: global target in [0, 1).
    method: one of the above.
    where: leaf predicate; other leaves get 0.0.
    erk_power_scale: ERK exponent.

  Returns:
    A pytree like ``params`` of per-leaf sparsities: Python floats for concrete
    inputs, float32 arrays when traced.
  """
  _check_sparsity("allocate", None, sparsity)
  paths, leaves, treedef = _flatten(params)
  idx = [i for i, (p, leaf) in enumerate(zip(paths, leaves)) if where(p, leaf)]
  out: list = [0.0] * len(leaves)
  if not idx:
    return jax.tree.unflatten(treedef, out)
  sel = [leaves[i] for i in idx]
  sizes = [_size(v) for v in sel]
  if method == "uniform":
    value = sparsity if _is_traced(sparsity) else float(sparsity)
    per_leaf = [value] * len(idx)
  elif method == "erk":
    per_leaf = erk_sparsities([tuple(np.shape(v)) for v in sel], sparsity,
                              erk_power_scale)
  elif method == "global_magnitude":
    total = sum(sizes)
    cap = max(total - len(sizes), 0)  # one weight kept per leaf
    if _is_traced(sparsity):
      k = _count_traced(sparsity, total, cap)
    else:
      k = _count_concrete(sparsity, total, total)
      if k > cap:
        raise ValueError(
            f"allocate: sparsity {sparsity!r} prunes {k} of {total} weights, "
            f"but keeping one weight in each of the {len(sizes)} selected "
            f"leaves allows at most {cap}")
      k = np.int32(k)
    padded = []
    for v, n in zip(sel, sizes):
      v = jnp.asarray(v)
      if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.float32)
      padded.append(_pad_flat(v, _bucket(n), 0))
    counts = _global_counts(padded, [np.int32(n) for n in sizes], k)
    if _is_traced(counts):
      per_leaf = [counts[j].astype(jnp.float32) / max(n, 1)
                  for j, n in enumerate(sizes)]
    else:
      counts = np.asarray(counts)
      per_leaf = [int(c) / max(n, 1) for c, n in zip(counts, sizes)]
  else:
    raise ValueError(f"allocate: unknown method {method!r}; expected "
                     "'global_magnitude', 'uniform' or 'erk'")
  for i, p in zip(idx, per_leaf):
    out[i] = p
  return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------- #
# Applying masks
# --------------------------------------------------------------------------- #


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """``w * m`` per leaf, keeping ``w``'s dtype.

  Boolean masks select (``jnp.where``, so a pruned ``inf``/``nan`` becomes 0);
  floating masks (e.g. from :func:`straight_through`) multiply, so gradients
  flow through them.

  Raises:
    ValueError: mismatched structures or shapes, or masks of another dtype.
  """
  paths, leaves, treedef = _flatten(params)
  ms = _aligned_leaves("apply", "params", params, "masks", masks, treedef)
  out = []
  for path, w, m in zip(paths, leaves, ms):
    _check_shape("apply", path, m, w, "mask", "parameter")
    dtype = jnp.dtype(m.dtype if hasattr(m, "dtype") else np.asarray(m).dtype)
    if dtype == jnp.bool_:
      out.append(jnp.where(m, w, jnp.zeros((), jnp.asarray(w).dtype)))
    elif jnp.issubdtype(dtype, jnp.floating):
      out.append((w * m).astype(jnp.asarray(w).dtype))
    else:
      raise ValueError(f"apply: mask for leaf '{path_str(path)}' has dtype "
                       f"{dtype}; expected bool (or floating, for STE masks)")
  return jax.tree.unflatten(treedef, out)


@jax.custom_vjp
def _ste(scores: jax.Array, mask: jax.Array) -> jax.Array:
  return mask.astype(scores.dtype)


def _ste_fwd(scores, mask):
  return mask.astype(scores.dtype), None


def _ste_bwd(_, g):
  return g, None  # identity to the scores; the boolean mask has no cotangent


_ste.defvjp(_ste_fwd, _ste_bwd)


def straight_through(scores: PyTree, masks: PyTree) -> PyTree:
  """Straight-through estimator over pytrees (custom VJP).

  The forward value is ``masks`` cast to each score leaf's dtype; the backward
  pass treats the binarisation as the identity, so ``d/dscores = upstream``.
  Use as ``w * straight_through(s, topk(s, sp))``: then ``dL/ds = dL/dw_eff * w``.

  Args:
    scores: pytree of floating score arrays.
    masks: boolean masks like ``scores``.

  Returns:
    Floating masks like ``scores``.
  """
  paths, leaves, treedef = _flatten(scores)
  ms = _aligned_leaves("straight_through", "scores", scores, "masks", masks,
                       treedef)
  out = []
  for path, s, m in zip(paths, leaves, ms):
    _check_bool("straight_through", path, m)
    _check_shape("straight_through", path, m, s, "mask", "score")
    out.append(_ste(s, m))
  return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------- #
# Set algebra and statistics
# --------------------------------------------------------------------------- #


def _mask_leaves(fn: str, masks: Sequence[PyTree]):
  if not masks:
    raise ValueError(f"{fn}: needs at least one mask pytree")
  paths, first, treedef = _flatten(masks[0])
  all_leaves = [first]
  for j, other in enumerate(masks[1:], start=1):
    all_leaves.append(_aligned_leaves(fn, "masks[0]", masks[0], f"masks[{j}]",
                                      other, treedef))
  for j, leaves in enumerate(all_leaves):
    for path, m, ref in zip(paths, leaves, first):
      _check_bool(fn, path, m, f"masks[{j}]")
      _check_shape(fn, path, m, ref, f"masks[{j}]", "first mask")
  return paths, all_leaves, treedef


def union(*masks: PyTree) -> PyTree:
  """Kept in any of the masks (elementwise OR)."""
  _, all_leaves, treedef = _mask_leaves("union", masks)
  out = [functools.reduce(jnp.logical_or, group) for group in zip(*all_leaves)]
  return jax.tree.unflatten(treedef, out)


def intersection(*masks: PyTree) -> PyTree:
  """Kept in all of the masks (elementwise AND)."""
  _, all_leaves, treedef = _mask_leaves("intersection", masks)
  out = [functools.reduce(jnp.logical_and, group) for group in zip(*all_leaves)]
  return jax.tree.unflatten(treedef, out)


class Combined(NamedTuple):
  """Result of :func:`combine_by_rank`.

  ``masks``: the combined boolean masks (all-True on leaves not selected);
  ``kept``: the number of selected weights kept; ``per_copy_kept``: the per-copy
  top-``q`` count ``q`` that the combined set corresponds to (the literal union /
  intersection of per-copy global magnitude masks keeping ``q`` weights each
  equals ``masks`` when no tie straddles the cut); ``protected``: weights kept only
  because their leaf would otherwise be pruned whole (0 except at extreme targets).
  """
  masks: PyTree
  kept: int
  per_copy_kept: int
  protected: int = 0


def combine_by_rank(params: Sequence[PyTree], sparsity: float, mode: str,
                    where: Predicate = prunable) -> Combined:
  """Union or intersection of the global magnitude masks of several weight trees,
  at exactly the global ``sparsity`` (the count rule of :func:`prune_count` over
  the selected weights). Concrete inputs only (host NumPy).

  Each copy ranks the selected weights by ``|w|``, largest first (rank 0), over
  all selected leaves together; equal magnitudes rank the higher global index
  (leaf order, then flat index) first, so a single copy gives exactly the mask of
  ``magnitude(w, allocate(w, sparsity, "global_magnitude"))``. A weight's combined
  key is its smallest rank over the copies (``mode="union"``: kept if kept in any
  copy's top-``q``) or its largest (``"intersection"``: kept if in every copy's
  top-``q``). The ``N - prune_count(sparsity, N)`` weights with the smallest keys
  are kept; equal keys keep the higher global index first. This is the search
  over the per-copy threshold ``q`` done exactly: keeping every key ``< q``
  is the literal union/intersection of per-copy top-``q`` masks, and the cut at
  the target count falls inside the key class ``q - 1``, which is split by index.

  As :func:`allocate`, no selected leaf is pruned whole: each leaf's best weight
  (smallest key) is always kept and the next-ranked weight elsewhere is dropped
  instead (`Combined.protected` counts these; they matter at extreme targets only).

  Raises:
    ValueError: an unknown ``mode``, differing tree structures or shapes, or a
      target that keeps fewer weights than there are selected leaves.
  """
  if mode not in ("union", "intersection"):
    raise ValueError(f"combine_by_rank: mode {mode!r} is unknown; expected 'union' or "
                     "'intersection'")
  if not params:
    raise ValueError("combine_by_rank: needs at least one weight tree")
  _check_sparsity("combine_by_rank", None, sparsity)
  paths, first, treedef = _flatten(params[0])
  copies = [first] + [_aligned_leaves("combine_by_rank", "params[0]", params[0],
                                      f"params[{j}]", t, treedef)
                      for j, t in enumerate(params[1:], start=1)]
  idx = [i for i, (p, leaf) in enumerate(zip(paths, first)) if where(p, leaf)]
  sizes = [_size(first[i]) for i in idx]
  total = sum(sizes)
  keep = total - prune_count(sparsity, total) if total else 0
  key = None
  for leaves in copies:
    for i in idx:
      if np.shape(leaves[i]) != np.shape(first[i]):
        raise ValueError(f"combine_by_rank: leaf '{path_str(paths[i])}' has shape "
                         f"{np.shape(leaves[i])} in one copy and {np.shape(first[i])} "
                         "in the first")
    mag = np.concatenate([np.abs(np.asarray(leaves[i], np.float64)).reshape(-1)
                          for i in idx]) if idx else np.zeros(0)
    # Largest first; among equal magnitudes the higher index first (stable sort
    # of the reversed vector, indices mapped back).
    order = (total - 1) - np.argsort(-mag[::-1], kind="stable")
    rank = np.empty(total, np.int64)
    rank[order] = np.arange(total)
    key = rank if key is None else (np.minimum(key, rank) if mode == "union"
                                    else np.maximum(key, rank))
  # As `allocate`: no selected leaf is pruned whole. Each leaf's best weight (smallest
  # key, ties to the higher index) is exempt; the next weight elsewhere goes instead.
  if keep < len(idx):
    raise ValueError(f"combine_by_rank: sparsity {sparsity} keeps {keep} of {total} "
                     f"weights, fewer than the {len(idx)} selected leaves (one each)")
  order = np.lexsort((-np.arange(total), key)) if total else np.zeros(0, np.int64)
  position = np.empty(total, np.int64)
  position[order] = np.arange(total)
  starts = np.cumsum([0] + sizes[:-1])
  best = [int(st + np.argmin(position[st:st + n])) for st, n in zip(starts, sizes) if n]
  kept_flat = np.zeros(total, bool)
  kept_flat[best] = True
  beyond = [b for b in best if position[b] >= keep]   # kept only by the exemption
  kept_flat[order[~kept_flat[order]][:keep - len(best)]] = True
  by_rank = kept_flat.copy()
  by_rank[beyond] = False
  per_copy = int(key[by_rank].max()) + 1 if by_rank.any() else 0
  out = [jnp.ones(np.shape(leaf), bool) for leaf in first]
  for i, st, n in zip(idx, starts, sizes):
    out[i] = jnp.asarray(kept_flat[st:st + n].reshape(np.shape(first[i])))
  return Combined(jax.tree.unflatten(treedef, out), int(keep), per_copy, len(beyond))


class Overlap(NamedTuple):
  """IoU of kept sets: ``per_leaf`` (pytree like the masks) and ``total``.

  ``total`` pools the intersections and unions of the leaves selected by the
  ``where`` predicate. Values are Python floats for concrete inputs and
  float32 arrays under tracing; ``total`` is None when it cannot be computed.
  """
  per_leaf: PyTree
  total: Any


def _iou(inter, union_) -> Any:
  if _is_traced(inter) or _is_traced(union_):
    return jnp.where(union_ > 0, inter / jnp.maximum(union_, 1), 1.0)
  inter, union_ = int(inter), int(union_)
  return inter / union_ if union_ else 1.0  # two empty sets: identical


@jax.jit
def _overlap_counts(a: list, b: list):
  inter = [jnp.sum(x & y, dtype=jnp.int32) for x, y in zip(a, b)]
  uni = [jnp.sum(x | y, dtype=jnp.int32) for x, y in zip(a, b)]
  return inter, uni


def overlap(a: PyTree, b: PyTree, where: Predicate = prunable) -> Overlap:
  """Intersection over union of the kept sets of two masks.

  Args:
    a: boolean masks.
    b: boolean masks like ``a``.
    where: leaves pooled into ``total`` (per-leaf IoU is given for all
      leaves). The IoU of two empty sets is 1.0.

  Returns:
    :class:`Overlap`, symmetric in ``a`` and ``b``.

  >>> import jax.numpy as jnp
  >>> from lottery_jax import masks
  >>> a = {"w": jnp.array([[True, True], [False, False]])}
  >>> b = {"w": jnp.array([[True, False], [True, False]])}
  >>> masks.overlap(a, b).total               # 1 kept in both, 3 kept in either
  0.3333333333333333
  """
  paths, (la, lb), treedef = _mask_leaves("overlap", (a, b))
  inter, uni = _overlap_counts(la, lb)
  if not _any_traced(inter):
    inter = [int(x) for x in jax.device_get(inter)]
    uni = [int(x) for x in jax.device_get(uni)]
  per_leaf = [_iou(i, u) for i, u in zip(inter, uni)]
  sel = [j for j, (p, m) in enumerate(zip(paths, la)) if where(p, m)]
  total = _iou(sum(inter[j] for j in sel), sum(uni[j] for j in sel))
  return Overlap(jax.tree.unflatten(treedef, per_leaf), total)


def _density_and_size(fn: str, path: KeyPath, leaf: Any, size_leaf: Any):
  """(density, n, is_mask) of one chance_overlap input leaf."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jnp.dtype(dtype) == jnp.bool_:
    n = _size(leaf)
    kept = jnp.sum(leaf, dtype=jnp.int32)
    if not _is_traced(kept):
      kept = int(kept)
      return (kept / n if n else 1.0), n, True
    return kept / max(n, 1), n, True
  if np.ndim(leaf) != 0:
    raise ValueError(f"{fn}: leaf '{path_str(path)}' must be a boolean mask or "
                     f"a scalar density, got shape {np.shape(leaf)}")
  if not _is_traced(leaf):
    _check_sparsity(fn, path, leaf, what="density", upper_open=False)
    leaf = float(leaf)
  n = None
  if size_leaf is not None:
    n = int(size_leaf) if np.ndim(size_leaf) == 0 and not hasattr(
        size_leaf, "shape") else _size(size_leaf)
  return leaf, n, False


def chance_overlap(a: PyTree, b: PyTree | None = None, *,
                   sizes: PyTree | None = None,
                   where: Predicate = prunable) -> Overlap:
  """Expected IoU of two independent random masks with given densities.

  Per leaf with densities ``da``, ``db``: ``da*db / (da + db - da*db)`` (the
  ratio of the expected intersection and union; exact as n grows, and the
  chance level of Movva et al. 2021). The total pools
  ``sum n*da*db / sum n*(da + db - da*db)`` over the selected leaves, so for
  global pruning each layer contributes at its own density. Two empty masks
  (both densities 0) have chance IoU 1.0.

  Args:
    a: boolean masks, or a pytree of scalar densities.
    b: the same for the second mask; ``None`` means the same densities as a.
    sizes: leaf sizes (arrays such as the params, or ints) when ``a``/``b``
      hold scalar densities; without it ``total`` is None.
    where: leaves pooled into ``total``; applied to the mask leaves, or to
      ``sizes`` leaves when densities are scalars.

  Returns:
    :class:`Overlap` of expected IoUs.
  """
  fn = "chance_overlap"
  paths, la, treedef = _flatten(a)
  lb = la if b is None else _aligned_leaves(fn, "a", a, "b", b, treedef)
  ls = ([None] * len(la) if sizes is None else
        _aligned_leaves(fn, "a", a, "sizes", sizes, treedef))
  per_leaf, num, den, total_ok = [], 0.0, 0.0, True
  for path, x, y, size_leaf in zip(paths, la, lb, ls):
    da, na, mask_a = _density_and_size(fn, path, x, size_leaf)
    db, nb, _ = _density_and_size(fn, path, y, size_leaf)
    if na is not None and nb is not None and na != nb:
      raise ValueError(f"{fn}: leaf '{path_str(path)}' has {na} weights in a "
                       f"and {nb} in b")
    n = na if na is not None else nb
    both = da * db
    either = da + db - both
    traced = _is_traced(both)
    if traced:
      per_leaf.append(jnp.where(either > 0, both / jnp.where(either > 0, either,
                                                             1.0), 1.0))
    else:
      per_leaf.append(both / either if either > 0 else 1.0)
    if mask_a:
      selected = where(path, x)
    elif hasattr(size_leaf, "shape") and np.ndim(size_leaf) > 0:
      selected = where(path, size_leaf)
    else:
      selected = True
    if n is None:
      total_ok = False
    elif selected:
      num = num + n * both
      den = den + n * either
  if not total_ok:
    total = None
  elif _is_traced(num) or _is_traced(den):
    total = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)
  else:
    total = num / den if den > 0 else 1.0
  return Overlap(jax.tree.unflatten(treedef, per_leaf), total)


def density(masks: PyTree) -> PyTree:
  """Per-leaf fraction kept (Python floats, or arrays under tracing)."""
  paths, leaves, treedef = _flatten(masks)
  out = []
  for path, m in zip(paths, leaves):
    _check_bool("density", path, m)
    kept = jnp.sum(m, dtype=jnp.int32)
    n = _size(m)
    out.append(kept / max(n, 1) if _is_traced(kept)
               else (int(kept) / n if n else 1.0))
  return jax.tree.unflatten(treedef, out)


def sparsity(masks: PyTree) -> PyTree:
  """Per-leaf fraction pruned, ``1 - density``."""
  return jax.tree.map(lambda d: 1 - d, density(masks))


@dataclasses.dataclass(frozen=True)
class LeafStats:
  """Counts of one leaf (or of a total)."""
  path: str
  shape: tuple
  size: int
  kept: int
  selected: bool = True

  @property
  def pruned(self) -> int:
    return self.size - self.kept

  @property
  def density(self) -> float:
    return self.kept / self.size if self.size else 1.0

  @property
  def sparsity(self) -> float:
    return 1.0 - self.density


@dataclasses.dataclass(frozen=True)
class Summary:
  """Per-leaf and total counts of a mask pytree; ``str()`` prints a table.

  ``total`` pools the leaves selected by ``where``; ``total_all`` pools every
  leaf (the whole model's sparsity, biases included).
  """
  leaves: tuple
  total: LeafStats
  total_all: LeafStats

  def __str__(self) -> str:
    rows = [("leaf", "shape", "size", "kept", "pruned", "sparsity")]
    for s in (*self.leaves, self.total, self.total_all):
      name = s.path if s.selected else f"{s.path} (not selected)"
      rows.append((name, "x".join(map(str, s.shape)) if s.shape else "-",
                   f"{s.size:,}", f"{s.kept:,}", f"{s.pruned:,}",
                   f"{100 * s.sparsity:.2f}%"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
      cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in
                                         zip(r[1:], widths[1:])]
      lines.append("  ".join(cells))
      if j == 0 or j == len(rows) - 3:
        lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(masks: PyTree, where: Predicate = prunable) -> Summary:
  """Per-leaf and total kept/pruned counts and sparsity (concrete masks only).

  Args:
    masks: boolean masks.
    where: leaves pooled into ``Summary.total``.

  Returns:
    A :class:`Summary`; ``print(summary(m))`` shows a table.
  """
  paths, leaves, _ = _flatten(masks)
  for path, m in zip(paths, leaves):
    _check_bool("summary", path, m)
    if _is_traced(m):
      raise ValueError(f"summary: mask for leaf '{path_str(path)}' is traced; "
                       "summary needs concrete masks (call it outside jit)")
  kept = jax.device_get([jnp.sum(m, dtype=jnp.int32) for m in leaves])
  stats = tuple(LeafStats(path_str(p), tuple(np.shape(m)), _size(m), int(k),
                          bool(where(p, m)))
                for p, m, k in zip(paths, leaves, kept))
  sel = [s for s in stats if s.selected]
  total = LeafStats("total (selected)", (), sum(s.size for s in sel),
                    sum(s.kept for s in sel))
  total_all = LeafStats("total (all leaves)", (), sum(s.size for s in stats),
                        sum(s.kept for s in stats))
  return Summary(stats, total, total_all)


def total_sparsity(masks: PyTree, where: Predicate = prunable) -> float:
  """Pooled sparsity of the selected leaves (concrete masks)."""
  return summary(masks, where).total.sparsity


# --------------------------------------------------------------------------- #
# Frozen partitions (strong tickets in partially frozen networks)
# --------------------------------------------------------------------------- #


@functools.partial(jax.jit, static_argnames=("length",))
def _partition_codes_flat(rng: jax.Array, n, n_pruned, n_locked,
                          length: int) -> jax.Array:
  bits = _mask_padding(jax.random.bits(rng, (length,), jnp.uint32), n)
  pruned = _smallest(bits, n_pruned)
  frozen = _smallest(bits, n_pruned + n_locked)  # a superset of `pruned`
  codes = jnp.where(pruned, PRUNED, jnp.where(frozen, LOCKED, SEARCHABLE))
  return codes.astype(jnp.int8)


def freeze(key: jax.Array, params: PyTree, prune_fraction: Any,
           lock_fraction: Any, distribution: str = "uniform",
           where: Predicate = prunable) -> Partition:
  """Random partition of each selected leaf: frozen pruned, locked, searchable.

  A leaf of ``n`` weights with per-leaf fractions ``(p, r)`` gets exactly
  ``floor(p*n)`` :data:`PRUNED` and ``floor(r*n)`` :data:`LOCKED` entries
  (the count rule of :func:`prune_count`), chosen uniformly at random with
  ``jax.random.fold_in(key, leaf_index)``; the rest are :data:`SEARCHABLE`.
  Non-selected leaves are all searchable (mask functions ignore them anyway).

  Per-leaf fractions:
    * ``"uniform"``: every selected leaf gets ``(p, r)``.
    * ``"erk"``: frozen-pruned fractions follow ERK at ``p`` (a randomly pruned
      ERK source network when ``r = 0``, as Gadhikar et al. 2023); each leaf
      then locks the same share ``r / (1 - p)`` of its unpruned weights, so
      the model-wide locked fraction is ``r``.
  ``prune_fraction`` / ``lock_fraction`` may also be pytrees of per-leaf
  fractions like ``params`` (then ``distribution`` is ignored).

  Args:
    key: PRNG key.
    params: pytree of arrays (shapes only).
    prune_fraction: fraction frozen pruned, in [0, 1).
    lock_fraction: fraction frozen locked, in [0, 1], with ``p + r <= 1``.
    distribution: ``"uniform"`` or ``"erk"``.
    where: leaf predicate.

  Returns:
    A pytree like ``params`` of int8 codes.

  Raises:
    ValueError: fractions out of range or summing above 1 (naming the leaf).
  """
  fn = "freeze"
  paths, leaves, treedef = _flatten(params)
  scalar_p = jax.tree_util.treedef_is_leaf(jax.tree.structure(prune_fraction))
  scalar_r = jax.tree_util.treedef_is_leaf(jax.tree.structure(lock_fraction))
  if scalar_p:
    _check_sparsity(fn, None, prune_fraction, what="prune_fraction")
  if scalar_r:
    _check_sparsity(fn, None, lock_fraction, what="lock_fraction",
                    upper_open=False)
  if scalar_p and scalar_r and not _any_traced([prune_fraction, lock_fraction]):
    if float(prune_fraction) + float(lock_fraction) > 1.0 + 1e-12:
      raise ValueError(f"{fn}: prune_fraction {prune_fraction!r} + "
                       f"lock_fraction {lock_fraction!r} = "
                       f"{float(prune_fraction) + float(lock_fraction)!r} > 1")
  idx = [i for i, (p, leaf) in enumerate(zip(paths, leaves)) if where(p, leaf)]
  ps = _aligned_leaves(fn, "params", params, "prune_fraction", prune_fraction,
                       treedef, broadcast=True)
  rs = _aligned_leaves(fn, "params", params, "lock_fraction", lock_fraction,
                       treedef, broadcast=True)
  if scalar_p and distribution == "erk":
    erk = erk_sparsities([tuple(np.shape(leaves[i])) for i in idx],
                         prune_fraction)
    ps = list(ps)
    rs = list(rs)
    for i, pe in zip(idx, erk):
      if scalar_r:
        # Lock the same share r / (1 - p) of every leaf's unpruned weights.
        rs[i] = lock_fraction * (1.0 - pe) / (1.0 - prune_fraction)
        if not _any_traced([rs[i]]):
          rs[i] = min(float(rs[i]), 1.0 - float(pe))  # float round-off only
      ps[i] = pe
  elif distribution not in ("uniform", "erk"):
    raise ValueError(f"{fn}: unknown distribution {distribution!r}; expected "
                     "'uniform' or 'erk'")
  out = [jnp.zeros(np.shape(leaf), jnp.int8) for leaf in leaves]
  for i in idx:
    path, n, p, r = paths[i], _size(leaves[i]), ps[i], rs[i]
    _check_sparsity(fn, path, p, what="prune_fraction")
    _check_sparsity(fn, path, r, what="lock_fraction", upper_open=False)
    if not _any_traced([p, r]) and float(p) + float(r) > 1.0 + 1e-12:
      raise ValueError(f"{fn}: for leaf '{path_str(path)}' prune_fraction "
                       f"{p!r} + lock_fraction {r!r} = {float(p) + float(r)!r} "
                       "> 1")
    kp = _leaf_count(fn, path, p, n)
    # The locked count may reach n (r = 1 is allowed).
    kl = (_count_traced(r, n, n) if _is_traced(r) else
          _count_concrete(r, n, n))
    if _any_traced([kp, kl]):
      kl = jnp.minimum(kl, n - kp)
    else:
      kl = min(kl, n - kp)
      kp, kl = np.int32(kp), np.int32(kl)
    codes = _partition_codes_flat(jax.random.fold_in(key, i), np.int32(n),
                                  kp, kl, _bucket(n))
    out[i] = jnp.reshape(codes[:n], np.shape(leaves[i]))
  return jax.tree.unflatten(treedef, out)


def searchable(partition: Partition) -> PyTree:
  """Boolean pytree: entries the search may choose."""
  return jax.tree.map(lambda c: c == SEARCHABLE, partition)


def frozen_pruned(partition: Partition) -> PyTree:
  """Boolean pytree: entries frozen pruned (always 0)."""
  return jax.tree.map(lambda c: c == PRUNED, partition)


def locked(partition: Partition) -> PyTree:
  """Boolean pytree: entries frozen locked (always kept)."""
  return jax.tree.map(lambda c: c == LOCKED, partition)


def partition_summary(partition: Partition) -> dict:
  """Model-wide counts of a partition (concrete).

  Returns:
    ``{"size", "searchable", "pruned", "locked"}`` as Python ints; the
    searchable count is the number of mask bits an SLT must store.
  """
  codes = jax.tree.leaves(partition)
  counts = jax.device_get([[jnp.sum(c == v, dtype=jnp.int32) for v in
                            (SEARCHABLE, PRUNED, LOCKED)] for c in codes])
  total = np.sum(np.asarray(counts, np.int64).reshape(-1, 3), axis=0)
  return {"size": int(sum(_size(c) for c in codes)),
          "searchable": int(total[0]), "pruned": int(total[1]),
          "locked": int(total[2])}


# --------------------------------------------------------------------------- #
# Packing
# --------------------------------------------------------------------------- #


def pack(masks: PyTree) -> PyTree:
  """One bit per weight: each leaf becomes ``packbits(ravel(m))`` (uint8).

  Bits are big-endian within a byte (NumPy's default); the last byte is zero
  padded. Jit-compatible.
  """
  paths, leaves, treedef = _flatten(masks)
  out = []
  for path, m in zip(paths, leaves):
    _check_bool("pack", path, m)
    out.append(jnp.packbits(jnp.ravel(m)))
  return jax.tree.unflatten(treedef, out)


def unpack(packed: PyTree, like: PyTree) -> PyTree:
  """Inverse of :func:`pack`; shapes come from ``like`` (arrays or
  ``jax.ShapeDtypeStruct``s, e.g. the params).

  Raises:
    ValueError: mismatched structures or a packed leaf of the wrong length.
  """
  paths, leaves, treedef = _flatten(like)
  ps = _aligned_leaves("unpack", "like", like, "packed", packed, treedef)
  out = []
  for path, ref, p in zip(paths, leaves, ps):
    n = _size(ref)
    expected = (n + 7) // 8
    if np.shape(p) != (expected,):
      raise ValueError(f"unpack: packed leaf '{path_str(path)}' has shape "
                       f"{np.shape(p)}; a leaf of shape {np.shape(ref)} packs "
                       f"to ({expected},)")
    bits = jnp.unpackbits(jnp.asarray(p, jnp.uint8), count=n)
    out.append(bits.astype(jnp.bool_).reshape(np.shape(ref)))
  return jax.tree.unflatten(treedef, out)
