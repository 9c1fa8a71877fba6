"""Tests of lottery_jax.masks: exact counts, ties, allocation, algebra, sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax import masks as M

FAST = settings(max_examples=12, deadline=None, derandomize=True)


def reference_keep(values, k, codes=None):
  """NumPy reference: prune the k smallest by (value, flat index)."""
  v = np.asarray(values, np.float32).ravel()
  idx = np.arange(v.size)
  pruned = np.zeros(v.size, bool)
  if codes is not None:
    c = np.asarray(codes).ravel()
    pruned |= c == M.PRUNED
    k -= int(pruned.sum())
    cand = idx[c == M.SEARCHABLE]
  else:
    cand = idx
  order = cand[np.lexsort((cand, v[cand]))]
  pruned[order[:k]] = True
  return ~pruned.reshape(np.shape(values))


def n_pruned(mask):
  return int(np.size(mask) - np.count_nonzero(np.asarray(mask)))


def tree_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv1": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                "bias": jnp.zeros(4)},
      "bn1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
      "dense": {"kernel": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
                "bias": jnp.zeros(5)},
      "classifier": {"kernel": jnp.asarray(rng.normal(size=(5, 3)),
                                           jnp.float32)},
  }


# --------------------------------------------------------------------------- #
# Paths and predicates
# --------------------------------------------------------------------------- #


def test_path_str_and_prunable():
  params = tree_params()
  names = {M.path_str(p): M.prunable(p, x)
           for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert names == {"conv1/kernel": True, "conv1/bias": False, "bn1/scale": False,
                   "bn1/bias": False, "dense/kernel": True, "dense/bias": False,
                   "classifier/kernel": True}
  # Norm-named leaves are excluded even with ndim >= 2; non-arrays are not.
  path = (jax.tree_util.DictKey("LayerNorm_0"), jax.tree_util.DictKey("w"))
  assert not M.prunable(path, jnp.ones((2, 2)))
  assert not M.prunable((jax.tree_util.DictKey("k"),), 3.0)
  seq = (jax.tree_util.GetAttrKey("layers"), jax.tree_util.SequenceKey(2),
         jax.tree_util.GetAttrKey("weight"))
  assert M.path_str(seq) == "layers/2/weight"
  # NNX Variable wrappers: trailing `.value` is dropped.
  nnx_path = (jax.tree_util.DictKey("kernel"), jax.tree_util.GetAttrKey("value"))
  assert M.path_str(nnx_path) == "kernel"


def test_prunable_except_patterns():
  params = tree_params()
  flat = jax.tree_util.tree_flatten_with_path(params)[0]

  def selected(pred):
    return sorted(M.path_str(p) for p, x in flat if pred(p, x))

  assert selected(M.prunable_except("classifier")) == ["conv1/kernel",
                                                       "dense/kernel"]
  assert selected(M.prunable_except("conv*")) == ["classifier/kernel",
                                                  "dense/kernel"]
  assert selected(M.prunable_except(r"^(dense|conv1)/")) == ["classifier/kernel"]
  assert selected(M.prunable_except()) == selected(M.prunable)


# --------------------------------------------------------------------------- #
# Exact counts
# --------------------------------------------------------------------------- #


def test_prune_count_rule():
  assert M.prune_count(0.9, 10) == 9
  assert M.prune_count(0.7, 10) == 7
  assert M.prune_count(0.29, 100) == 29
  assert M.prune_count(0.5, 1) == 0
  assert M.prune_count(0.999, 10) == 9  # floor, not round
  assert M.prune_count(0.0, 0) == 0
  assert M.prune_count(np.float32(0.9), 10) == 9
  assert M.prune_count(np.float32(0.3), 10) == 3
  for n in (1, 2, 3, 7, 10, 97, 1000, 2359296):
    for c in {0, min(1, n - 1), n // 3, n // 2, n - 1}:
      assert M.prune_count(c / n, n) == c, (c, n)
      assert int(jax.jit(M.prune_count, static_argnums=1)(
          jnp.float32(c / n), n)) == c, (c, n)


def test_prune_counts_tree():
  params = {"a": jnp.ones((2, 5)), "b": jnp.ones(3)}
  assert M.prune_counts(params, {"a": 0.9, "b": 0.5}) == {"a": 9, "b": 1}
  assert M.prune_counts(params, 0.5) == {"a": 5, "b": 1}


# --------------------------------------------------------------------------- #
# magnitude / topk / random
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape,p", [
    ((1, 1), 0.5),  # one weight: nothing can be pruned
    ((1, 1), 0.0),
    ((3, 5, 7), 0.0),  # none pruned
    ((3, 5, 7), 104 / 105),  # all but one pruned
    ((3, 5, 7), 0.5),
    ((2, 1, 3), 0.9),
    ((13, 1), 0.3),
])
def test_magnitude_exact_awkward(shape, p):
  w = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  m = M.magnitude({"w": w}, {"w": p})["w"]
  n = math.prod(shape)
  assert m.dtype == jnp.bool_ and m.shape == shape
  assert n_pruned(m) == M.prune_count(p, n)
  np.testing.assert_array_equal(m, reference_keep(np.abs(w), M.prune_count(p, n)))


def test_ties_lower_index_pruned_first():
  w = jnp.zeros((4, 5))
  m = M.magnitude({"k": w}, 0.3)["k"]
  expected = np.ones(20, bool)
  expected[:6] = False
  np.testing.assert_array_equal(np.ravel(m), expected)
  # -0.0 ties with +0.0, +-x ties in magnitude.
  w = jnp.array([[1.0, -0.0, 0.0, -1.0, 2.0, 1.0]])
  np.testing.assert_array_equal(M.magnitude({"k": w}, 0.5)["k"][0],
                                [False, False, False, True, True, True])
  np.testing.assert_array_equal(M.magnitude({"k": w}, 4 / 6)["k"][0],
                                [False, False, False, False, True, True])


def test_topk_signed_ties_nan():
  s = jnp.array([[3.0, -1.0, 2.0, -1.0], [jnp.nan, -jnp.inf, 0.0, jnp.inf]])
  m = M.topk({"s": s}, 0.5)["s"]
  # Pruned: -inf, -1 (idx1), -1 (idx3), 0.0; NaN ranks above +inf.
  np.testing.assert_array_equal(m, [[True, False, True, False],
                                    [True, False, False, True]])
  m = M.topk({"s": s}, 7 / 8)["s"]
  np.testing.assert_array_equal(np.ravel(m), [0, 0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("partitioned", [False, True])
def test_ties_straddling_the_threshold(partitioned):
  # Four distinct values, so at almost every count the k-th smallest ties with
  # others and only some of the ties go (the tie-ranking branch of the selection);
  # at the counts that end a group of ties, all of them go (the branch without
  # ranking). Frozen entries share the searchable ones' values and must not be
  # picked. Then distinct scores, and the same under vmap (where the cond is a
  # select and both branches run).
  rng = np.random.default_rng(0)
  v = rng.integers(0, 4, size=(6, 50)).astype(np.float32)
  n = v.size
  codes = (np.asarray(M.freeze(jax.random.key(1), {"k": jnp.asarray(v)}, 0.2, 0.2,
                               where=lambda p, x: True)["k"]) if partitioned else None)
  part = None if codes is None else {"k": jnp.asarray(codes)}
  lo = 0 if codes is None else int((codes == M.PRUNED).sum())
  hi = n - 1 if codes is None else n - int((codes == M.LOCKED).sum())
  group_ends = 0
  for k in range(lo, hi + 1, 3):
    m = M.topk({"k": jnp.asarray(v)}, k / n, partition=part)["k"]
    expected = reference_keep(v, k, codes)
    np.testing.assert_array_equal(m, expected, err_msg=f"k={k}")
    pruned = ~expected if codes is None else ~expected & (codes == M.SEARCHABLE)
    kept = expected if codes is None else expected & (codes == M.SEARCHABLE)
    group_ends += bool(pruned.any() and kept.any()) and v[pruned].max() < v[kept].min()
  assert group_ends  # both branches ran
  d = rng.permutation(n).astype(np.float32).reshape(v.shape)
  for k in (lo, (lo + hi) // 2, hi):
    np.testing.assert_array_equal(
        M.topk({"k": jnp.asarray(d)}, k / n, partition=part)["k"], reference_keep(d, k, codes))
  k = (lo + hi) // 2
  stacked = jnp.stack([jnp.asarray(v), jnp.asarray(d)])
  out = jax.vmap(lambda s: M.topk({"k": s}, k / n, partition=part)["k"])(stacked)
  for x, s in zip(out, (v, d)):
    np.testing.assert_array_equal(x, reference_keep(s, k, codes))


def test_non_selected_all_true_and_where():
  params = tree_params()
  m = M.magnitude(params, 0.5, where=M.prunable_except("classifier"))
  assert bool(jnp.all(m["classifier"]["kernel"]))
  assert bool(jnp.all(m["conv1"]["bias"])) and m["conv1"]["bias"].shape == (4,)
  assert n_pruned(m["conv1"]["kernel"]) == 36
  assert n_pruned(m["dense"]["kernel"]) == 17


def test_random_exact_deterministic():
  params = tree_params()
  key = jax.random.key(3)
  a = M.random(key, params, 0.6)
  b = M.random(key, params, 0.6)
  c = M.random(jax.random.key(4), params, 0.6)
  for leaf in ("conv1", "dense", "classifier"):
    x = a[leaf]["kernel"]
    assert n_pruned(x) == M.prune_count(0.6, x.size)
    np.testing.assert_array_equal(x, b[leaf]["kernel"])
  assert not np.array_equal(a["conv1"]["kernel"], c["conv1"]["kernel"])
  # Raw uint32 keys work too.
  M.random(jax.random.PRNGKey(0), params, 0.6)


def test_traced_sparsities_match_concrete():
  params = tree_params()
  sp = M.allocate(params, 0.7)
  eager = M.magnitude(params, sp)
  jitted = jax.jit(M.magnitude)(params, sp)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  scores = jax.tree.map(lambda x: -x, params)
  jax.tree.map(np.testing.assert_array_equal, M.topk(scores, sp),
               jax.jit(M.topk)(scores, sp))
  key = jax.random.key(0)
  jax.tree.map(np.testing.assert_array_equal, M.random(key, params, sp),
               jax.jit(M.random)(key, params, sp))


# --------------------------------------------------------------------------- #
# allocate
# --------------------------------------------------------------------------- #


def test_allocate_uniform():
  params = tree_params()
  sp = M.allocate(params, 0.8, "uniform", where=M.prunable_except("classifier"))
  assert sp["conv1"]["kernel"] == 0.8 and sp["dense"]["kernel"] == 0.8
  assert sp["classifier"]["kernel"] == 0.0 and sp["bn1"]["scale"] == 0.0


def test_allocate_global_magnitude_hand_computed():
  params = {"a": {"kernel": jnp.arange(12.0).reshape(3, 4) - 5},
            "b": {"kernel": jnp.ones((2, 5))}, "c": {"bias": jnp.zeros(3)}}
  # |a| = 5 4 3 2 1 0 1 2 3 4 5 6, b = ten 1s; N = 22, prune 11: the 0, then
  # the ties at |w| = 1 in leaf order then flat index: a's two, then 8 of b.
  sp = M.allocate(params, 0.5)
  assert sp == {"a": {"kernel": 3 / 12}, "b": {"kernel": 8 / 10},
                "c": {"bias": 0.0}}
  assert all(isinstance(v, float) for v in jax.tree.leaves(sp))
  m = M.magnitude(params, sp)
  np.testing.assert_array_equal(np.ravel(m["a"]["kernel"]),
                                [1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(np.ravel(m["b"]["kernel"]), [0] * 8 + [1] * 2)
  # The pooled count is exactly floor(s * N) at awkward targets.
  for s in (0.0, 0.3, 0.9, 20 / 22):
    sp = M.allocate(params, s)
    counts = M.prune_counts(params, sp)
    assert counts["a"]["kernel"] + counts["b"]["kernel"] == M.prune_count(s, 22)
  # No leaf is pruned whole: b's last weight survives at 0.9 (19 pruned: 9 of
  # b, then the next smallest of a instead of b's last 1).
  counts = M.prune_counts(params, M.allocate(params, 0.9))
  assert counts == {"a": {"kernel": 10}, "b": {"kernel": 9}, "c": {"bias": 0}}
  with pytest.raises(ValueError, match=r"0\.9545.*prunes 21 of 22.*at most 20"):
    M.allocate(params, 21 / 22)
  # Traced: the same values as float32.
  traced = jax.jit(lambda p: M.allocate(p, 0.5))(params)
  assert float(traced["a"]["kernel"]) == pytest.approx(0.25)
  assert float(traced["b"]["kernel"]) == pytest.approx(0.8)


def test_allocate_global_matches_global_sort():
  params = tree_params(5)
  where = M.prunable_except("classifier")
  sp = M.allocate(params, 0.75, where=where)
  m = M.magnitude(params, sp, where=where)
  sel = [params["conv1"]["kernel"], params["dense"]["kernel"]]
  flat = np.concatenate([np.abs(np.ravel(x)) for x in sel])
  k = M.prune_count(0.75, flat.size)
  threshold = np.sort(flat)[k - 1]
  got = np.concatenate([~np.ravel(m["conv1"]["kernel"]),
                        ~np.ravel(m["dense"]["kernel"])])
  assert got.sum() == k
  assert flat[got].max() <= threshold <= flat[~got].min()


def test_allocate_erk_with_dense_cap():
  # raw ratio sum/prod: a = 4/4 = 1, b = 200/10000 = 0.02. At s = 0.5 the first
  # scale 5002/204 makes a's density 24.5 > 1, so a is dense; then
  # eps = (5000 - 2) / 200 = 24.99 and b's density is 0.4998.
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((100, 100))}
  sp = M.allocate(params, 0.5, "erk")
  assert sp["a"] == 0.0
  assert sp["b"] == pytest.approx(1 - 0.4998)
  kept = 4 + 10000 - M.prune_counts(params, sp)["b"]
  assert kept == 5002
  # Uncapped case: densities proportional to the ratio.
  params = {"a": jnp.ones((10, 10)), "b": jnp.ones((20, 20))}
  sp = M.allocate(params, 0.9, "erk")
  eps = 50 / (0.2 * 100 + 0.1 * 400)
  assert sp["a"] == pytest.approx(1 - 0.2 * eps)
  assert sp["b"] == pytest.approx(1 - 0.1 * eps)
  traced = jax.jit(lambda s: M.allocate(params, s, "erk"))(0.9)
  assert float(traced["a"]) == pytest.approx(sp["a"], rel=1e-5)


def test_allocate_unknown_method():
  with pytest.raises(ValueError, match="unknown method 'l2'"):
    M.allocate(tree_params(), 0.5, "l2")


# --------------------------------------------------------------------------- #
# apply and straight-through
# --------------------------------------------------------------------------- #


def test_apply_dtype_and_float_masks():
  w = {"k": jnp.array([[1.0, jnp.inf], [3.0, 4.0]], jnp.bfloat16)}
  m = {"k": jnp.array([[True, False], [False, True]])}
  out = M.apply(w, m)
  assert out["k"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(out["k"].astype(jnp.float32), [[1, 0], [0, 4]])
  out = M.apply(w, {"k": m["k"].astype(jnp.float32)})
  assert out["k"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"'k'.*int32"):
    M.apply(w, {"k": m["k"].astype(jnp.int32)})


def test_straight_through_forward_and_gradient():
  w = {"k": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
  s = {"k": jnp.array([[0.1, 0.9], [0.5, 0.2]])}
  m = M.topk(s, 0.5)
  ste = M.straight_through(s, m)
  np.testing.assert_array_equal(ste["k"], m["k"].astype(jnp.float32))
  assert ste["k"].dtype == jnp.float32

  def loss(scores):
    eff = M.apply(w, M.straight_through(scores, M.topk(scores, 0.5)))
    return jnp.sum(eff["k"] * jnp.array([[1.0, 2.0], [3.0, 4.0]]))

  g = jax.jit(jax.grad(loss))(s)
  # dL/dS = dL/dW_eff * W for every entry, pruned ones included.
  np.testing.assert_allclose(g["k"], [[1.0, -4.0], [9.0, 2.0]])


# --------------------------------------------------------------------------- #
# Set algebra and statistics
# --------------------------------------------------------------------------- #


def test_union_intersection_overlap_hand():
  a = {"k": jnp.array([[True, True, False, False]]), "e": jnp.zeros((2, 2), bool)}
  b = {"k": jnp.array([[True, False, True, False]]), "e": jnp.zeros((2, 2), bool)}
  np.testing.assert_array_equal(M.union(a, b)["k"], [[1, 1, 1, 0]])
  np.testing.assert_array_equal(M.intersection(a, b)["k"], [[1, 0, 0, 0]])
  np.testing.assert_array_equal(M.union(a)["k"], a["k"])
  ov = M.overlap(a, b)
  assert ov.per_leaf == {"k": 1 / 3, "e": 1.0}  # empty vs empty is 1.0
  assert ov.total == 1 / 3


def test_chance_overlap():
  a = {"x": jnp.array([[True] * 3 + [False]]), "y": jnp.array([[True, False]])}
  co = M.chance_overlap(a)
  assert co.per_leaf["x"] == pytest.approx(0.75 ** 2 / (1.5 - 0.75 ** 2))
  assert co.per_leaf["y"] == pytest.approx(0.25 / 0.75)
  num = 4 * 0.75 ** 2 + 2 * 0.25
  den = 4 * (1.5 - 0.75 ** 2) + 2 * 0.75
  assert co.total == pytest.approx(num / den)
  # Scalar densities: per-leaf always, total only with sizes.
  dens = {"x": 0.75, "y": 0.5}
  assert M.chance_overlap(dens).total is None
  co2 = M.chance_overlap(dens, sizes=a)
  assert co2.total == pytest.approx(co.total)
  assert M.chance_overlap({"x": 0.0}).per_leaf["x"] == 1.0
  assert M.chance_overlap({"x": 1.0}, {"x": 0.5}).per_leaf["x"] == 0.5


def test_summary_density_sparsity():
  m = {"conv": {"kernel": jnp.array([[True, False], [False, False]])},
       "conv_bias": {"bias": jnp.ones(3, bool)}}
  s = M.summary(m)
  assert s.total.size == 4 and s.total.kept == 1 and s.total.sparsity == 0.75
  assert s.total_all.size == 7 and s.total_all.kept == 4
  text = str(s)
  assert "conv/kernel" in text and "75.00%" in text and "not selected" in text
  assert M.density(m) == {"conv": {"kernel": 0.25}, "conv_bias": {"bias": 1.0}}
  assert M.sparsity(m)["conv"]["kernel"] == 0.75
  assert M.total_sparsity(m) == 0.75


# --------------------------------------------------------------------------- #
# freeze and partitions
# --------------------------------------------------------------------------- #


def test_freeze_exact_counts_and_respected():
  params = tree_params(2)
  part = M.freeze(jax.random.key(0), params, 0.3, 0.25)
  for leaf in ("conv1", "dense", "classifier"):
    c = np.asarray(part[leaf]["kernel"])
    n = c.size
    assert c.dtype == np.int8
    assert (c == M.PRUNED).sum() == M.prune_count(0.3, n)
    assert (c == M.LOCKED).sum() == math.floor(0.25 * n)
  assert not np.any(np.asarray(part["conv1"]["bias"]))
  scores = jax.tree.map(lambda x: x * 0 + 1.0, params)  # all ties
  for fn in (lambda sp: M.topk(scores, sp, partition=part),
             lambda sp: M.magnitude(params, sp, partition=part),
             lambda sp: M.random(jax.random.key(1), params, sp, partition=part)):
    m = fn(0.6)
    for leaf in ("conv1", "dense", "classifier"):
      c = np.asarray(part[leaf]["kernel"])
      x = np.asarray(m[leaf]["kernel"])
      assert not x[c == M.PRUNED].any() and x[c == M.LOCKED].all()
      assert n_pruned(x) == M.prune_count(0.6, x.size)
  # Ties among searchable entries: lowest flat index pruned first.
  m = M.topk(scores, 0.6, partition=part)["dense"]["kernel"]
  np.testing.assert_array_equal(
      m, reference_keep(scores["dense"]["kernel"], 21, part["dense"]["kernel"]))
  summ = M.partition_summary(part)
  assert summ["pruned"] == 21 + 10 + 4 and summ["locked"] == 18 + 8 + 3
  assert summ["searchable"] + summ["pruned"] + summ["locked"] == summ["size"]
  assert np.array_equal(M.searchable(part)["dense"]["kernel"],
                        np.asarray(part["dense"]["kernel"]) == 0)
  assert M.frozen_pruned(part)["dense"]["kernel"].sum() == 10
  assert M.locked(part)["dense"]["kernel"].sum() == 8


def test_freeze_erk_and_per_leaf():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((100, 100))}
  part = M.freeze(jax.random.key(0), params, 0.5, 0.2, distribution="erk")
  sp = M.allocate(params, 0.5, "erk")
  pruned = {k: int((np.asarray(v) == M.PRUNED).sum()) for k, v in part.items()}
  assert pruned == M.prune_counts(params, sp)
  total_locked = sum(int((np.asarray(v) == M.LOCKED).sum())
                     for v in part.values())
  assert abs(total_locked - 0.2 * 10004) <= 2
  part = M.freeze(jax.random.key(0), params, {"a": 0.0, "b": 0.5},
                  {"a": 1.0, "b": 0.5})
  assert (np.asarray(part["a"]) == M.LOCKED).all()
  assert (np.asarray(part["b"]) != M.SEARCHABLE).all()


def test_partition_infeasible_names_leaf():
  params = {"layer": {"kernel": jnp.ones((4, 5))}}
  part = M.freeze(jax.random.key(0), params, 0.5, 0.3)
  with pytest.raises(ValueError, match=r"'layer/kernel'.*0\.3.*freezes 10"):
    M.topk(params, 0.3, partition=part)
  with pytest.raises(ValueError, match=r"'layer/kernel'.*0\.8.*locks 6"):
    M.magnitude(params, 0.8, partition=part)
  bad = {"layer": {"kernel": jnp.full((4, 5), 7, jnp.int8)}}
  with pytest.raises(ValueError, match=r"'layer/kernel'.*unknown codes \[7\]"):
    M.topk(params, 0.3, partition=bad)


# --------------------------------------------------------------------------- #
# pack / unpack
# --------------------------------------------------------------------------- #


def test_pack_unpack_odd_sizes():
  params = {"a": jnp.ones((3, 5, 7)), "b": jnp.ones((1, 1)), "c": jnp.ones((2, 4))}
  m = M.random(jax.random.key(0), params, 0.5, where=lambda p, x: True)
  packed = M.pack(m)
  assert packed["a"].dtype == jnp.uint8 and packed["a"].shape == (14,)
  assert packed["b"].shape == (1,) and packed["c"].shape == (1,)
  back = M.unpack(packed, params)
  jax.tree.map(np.testing.assert_array_equal, back, m)
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  jax.tree.map(np.testing.assert_array_equal,
               jax.jit(lambda p: M.unpack(p, like))(jax.jit(M.pack)(m)), m)
  with pytest.raises(ValueError, match=r"'a'.*\(13,\).*\(14,\)"):
    M.unpack({**packed, "a": packed["a"][:13]}, params)


# --------------------------------------------------------------------------- #
# Validation messages
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_names_leaf_and_value(bad):
  params = {"enc": {"kernel": jnp.ones((3, 3))}, "dec": {"kernel": jnp.ones((3, 3))}}
  sp = {"enc": {"kernel": 0.5}, "dec": {"kernel": bad}}
  for fn in (lambda: M.magnitude(params, sp), lambda: M.topk(params, sp),
             lambda: M.random(jax.random.key(0), params, sp),
             lambda: M.prune_counts(params, sp)):
    with pytest.raises(ValueError, match=r"'dec/kernel'") as e:
      fn()
    assert repr(bad) in str(e.value)
  with pytest.raises(ValueError, match=repr(bad)):
    M.allocate(params, bad)


def test_bad_fractions():
  params = {"layer": {"kernel": jnp.ones((3, 3))}}
  with pytest.raises(ValueError, match=r"0\.6.*0\.5.*> 1"):
    M.freeze(jax.random.key(0), params, 0.6, 0.5)
  with pytest.raises(ValueError, match=r"'layer/kernel'.*0\.7.*0\.4"):
    M.freeze(jax.random.key(0), params, {"layer": {"kernel": 0.7}},
             {"layer": {"kernel": 0.4}})
  with pytest.raises(ValueError, match=r"prune_fraction is 1\.0"):
    M.freeze(jax.random.key(0), params, 1.0, 0.0)


def test_mismatched_structures_say_which():
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"missing from sparsities: \['b/kernel'\]"):
    M.magnitude(params, {"a": {"kernel": 0.5}})
  m = M.magnitude(params, 0.5)
  with pytest.raises(ValueError, match=r"masks\[1\] not in masks\[0\]: \['c'\]"):
    M.union(m, {**m, "c": jnp.ones(2, bool)})
  with pytest.raises(ValueError, match=r"'a/kernel'.*\(4,\).*\(2, 2\)"):
    M.apply(params, {**m, "a": {"kernel": jnp.ones(4, bool)}})


def test_non_boolean_masks_rejected():
  m = {"w": {"kernel": jnp.ones((2, 2), jnp.float32)}}
  for fn in (M.union, M.pack, M.summary, M.density,
             lambda x: M.overlap(x, x), lambda x: M.intersection(x, x)):
    with pytest.raises(ValueError, match=r"'w/kernel'.*float32"):
      fn(m)


# --------------------------------------------------------------------------- #
# Frameworks
# --------------------------------------------------------------------------- #


def test_flax_linen_params():
  from flax import linen as nn

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.Dense(6)(x.reshape(x.shape[0], -1))
      return nn.Dense(3, name="classifier")(x)

  variables = Net().init(jax.random.key(0), jnp.ones((1, 5, 5, 2)))
  params = variables["params"]
  where = M.prunable_except("classifier")
  sp = M.allocate(params, 0.9, where=where)
  m = M.magnitude(params, sp, where=where)
  s = M.summary(m, where=where)
  assert s.total.pruned == M.prune_count(0.9, 72 + 600)
  assert bool(jnp.all(m["classifier"]["kernel"]))
  assert M.apply(params, m)["Dense_0"]["kernel"].shape == (100, 6)


def test_flax_nnx_state():
  from flax import nnx
  model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  m = M.magnitude(state, M.allocate(state, 0.5))
  assert n_pruned(m["kernel"][...]) == 12
  assert bool(jnp.all(m["bias"][...]))
  np.testing.assert_array_equal(
      M.unpack(M.pack(m), state)["kernel"][...], m["kernel"][...])
  assert "kernel" in str(M.summary(m))
  masked = M.apply(state, m)
  assert float(jnp.sum(masked["kernel"][...] == 0)) >= 12


def test_equinox_model():
  import equinox as eqx
  model = eqx.nn.MLP(5, 3, 8, 2, key=jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  sp = M.allocate(params, 0.5, "erk")
  m = M.magnitude(params, sp)
  assert n_pruned(m.layers[1].weight) == M.prune_count(sp.layers[1].weight, 64)
  assert bool(jnp.all(m.layers[0].bias))
  pruned = eqx.combine(M.apply(params, m), model)
  assert pruned(jnp.ones(5)).shape == (3,)
  part = M.freeze(jax.random.key(1), params, 0.2, 0.2)
  m = M.topk(params, 0.5, partition=part)
  assert not np.asarray(m.layers[1].weight)[
      np.asarray(part.layers[1].weight) == M.PRUNED].any()


# --------------------------------------------------------------------------- #
# Sharding
# --------------------------------------------------------------------------- #


def test_jit_on_sharded_inputs_identical():
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  rng = np.random.default_rng(0)
  params = {"c": {"kernel": jnp.asarray(rng.normal(size=(8, 6, 4, 16)),
                                        jnp.float32)},
            "d": {"kernel": jnp.round(jnp.asarray(rng.normal(size=(16, 10)),
                                                  jnp.float32) * 2)},  # ties
            "d2": {"bias": jnp.zeros(10)}}
  specs = {"c": {"kernel": P(None, None, "data", "model")},
           "d": {"kernel": P("data", "model")}, "d2": {"bias": P("model")}}
  sharded = jax.device_put(params, jax.tree.map(
      lambda s: NamedSharding(mesh, s), specs,
      is_leaf=lambda x: isinstance(x, P)))
  key = jax.random.key(7)

  def everything(p):
    sp = M.allocate(p, 0.8)
    part = M.freeze(key, p, 0.2, 0.1)
    return (sp, M.magnitude(p, sp), M.topk(p, sp, partition=part),
            M.random(key, p, sp), M.pack(M.magnitude(p, sp)))

  ref = everything(params)
  got = jax.jit(everything)(sharded)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a),
                                                       np.asarray(b)), ref, got)
  assert got[1]["c"]["kernel"].shape == (8, 6, 4, 16)


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #

SHAPES = [(1, 1), (2, 3), (3, 3, 1, 2), (5, 7), (1, 9), (4, 4, 3)]


@st.composite
def pytrees(draw):
  n_leaves = draw(st.integers(1, 3))
  shapes = [SHAPES[draw(st.integers(0, len(SHAPES) - 1))] for _ in range(n_leaves)]
  seed = draw(st.integers(0, 2 ** 16))
  rng = np.random.default_rng(seed)
  ties = draw(st.booleans())
  tree = {}
  for i, shape in enumerate(shapes):
    v = rng.normal(size=shape)
    if ties:
      v = np.round(v)
    tree[f"layer{i}"] = {"kernel": jnp.asarray(v, jnp.float32),
                         "bias": jnp.zeros(shape[-1])}
  sp = {k: {"kernel": draw(st.floats(0.0, 0.99)), "bias": 0.0} for k in tree}
  return tree, sp, seed


@FAST
@given(pytrees())
def test_property_exact_counts_and_reference(case):
  tree, sp, _ = case
  for m in (M.magnitude(tree, sp), M.topk(tree, sp)):
    for name, leaf in tree.items():
      k = M.prune_count(sp[name]["kernel"], leaf["kernel"].size)
      assert n_pruned(m[name]["kernel"]) == k
      assert bool(jnp.all(m[name]["bias"]))
  m = M.topk(tree, sp)
  for name, leaf in tree.items():
    k = M.prune_count(sp[name]["kernel"], leaf["kernel"].size)
    np.testing.assert_array_equal(m[name]["kernel"],
                                  reference_keep(leaf["kernel"], k))


@FAST
@given(pytrees(), st.floats(0.0, 0.95))
def test_property_global_allocation_exact(case, s):
  tree, _, _ = case
  total = sum(leaf["kernel"].size for leaf in tree.values())
  assume(M.prune_count(s, total) <= total - len(tree))  # one kept per leaf
  sp = M.allocate(tree, s)
  counts = M.prune_counts(tree, sp)
  total = sum(leaf["kernel"].size for leaf in tree.values())
  assert sum(c["kernel"] for c in counts.values()) == M.prune_count(s, total)
  m = M.magnitude(tree, sp)
  kept = np.concatenate([np.abs(np.ravel(tree[k]["kernel"]))[
      np.ravel(m[k]["kernel"])] for k in tree])
  gone = np.concatenate([np.abs(np.ravel(tree[k]["kernel"]))[
      ~np.ravel(m[k]["kernel"])] for k in tree])
  if kept.size and gone.size:
    assert gone.max() <= kept.min()


@FAST
@given(pytrees(), st.integers(0, 2 ** 16), st.sampled_from([2, 3]))
def test_property_algebra(case, seed, n_masks):
  tree, sp, _ = case
  ms = [M.random(jax.random.key(seed + j), tree, sp) for j in range(n_masks)]
  u, i = M.union(*ms), M.intersection(*ms)
  for m in ms:
    for a, b, c in zip(jax.tree.leaves(i), jax.tree.leaves(m), jax.tree.leaves(u)):
      assert not np.any(np.asarray(a) & ~np.asarray(b))  # i subset of m
      assert not np.any(np.asarray(b) & ~np.asarray(c))  # m subset of u
  jax.tree.map(np.testing.assert_array_equal, M.unpack(M.pack(u), tree), u)
  ab, ba = M.overlap(ms[0], ms[1]), M.overlap(ms[1], ms[0])
  assert ab == ba
  same = M.overlap(ms[0], ms[0])
  assert same.total == 1.0 and all(v == 1.0 for v in jax.tree.leaves(
      same.per_leaf))
  assert 0.0 <= ab.total <= 1.0


@FAST
@given(pytrees(), st.floats(0.0, 0.6), st.floats(0.0, 0.4), st.floats(0.0, 1.0))
def test_property_freeze_respected_by_topk(case, p, r, extra):
  tree, _, seed = case
  part = M.freeze(jax.random.key(seed), tree, p, r)
  sp = {}
  for name, leaf in tree.items():
    n = leaf["kernel"].size
    c = np.asarray(part[name]["kernel"])
    lo, hi = int((c == M.PRUNED).sum()), n - int((c == M.LOCKED).sum())
    hi = min(hi, n - 1)
    k = lo + int(extra * (hi - lo)) if hi >= lo else lo
    sp[name] = {"kernel": k / n, "bias": 0.0}
  m = M.topk(tree, sp, partition=part)
  for name, leaf in tree.items():
    c = np.asarray(part[name]["kernel"])
    x = np.asarray(m[name]["kernel"])
    assert not x[c == M.PRUNED].any() and x[c == M.LOCKED].all()
    k = M.prune_count(sp[name]["kernel"], x.size)
    assert n_pruned(x) == k
    np.testing.assert_array_equal(x, reference_keep(leaf["kernel"], k, c))
