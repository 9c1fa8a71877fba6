"""Tests of the jackpot swap rule (lottery_jax.search.swap) and the rate schedules."""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lottery_jax.search.schedules import constant_rate, decaying_rate
from lottery_jax.search.swap import (
  swap_update,
  swap_update_reference,
  swap_update_sort,
  update_masks,
)

F, T = False, True


def _run(score, mask, k, rate, max_swaps=None, **kwargs):
  new_mask, n = swap_update(np.asarray(score, np.float32), np.asarray(mask), k, rate, max_swaps, **kwargs)
  return np.asarray(new_mask).tolist(), int(n)


# --- hand-worked cases --------------------------------------------------------------------


def test_no_op_when_already_sorted():
  # t = 0.2; no pruned score above it, no kept score at or below it.
  assert _run([0.1, 0.2, 0.3, 0.4], [F, F, T, T], 2, 1.0) == ([F, F, T, T], 0)


def test_simple_swap():
  # sorted [0.2, 0.3, 0.4, 0.5], t = 0.3: R = {0 (0.5)}, D = {2 (0.3)}.
  assert _run([0.5, 0.2, 0.3, 0.4], [F, F, T, T], 2, 1.0) == ([T, F, F, T], 1)


def test_tie_across_threshold_leaves_mask_unchanged():
  # sorted [0.1, 0.5, 0.5, 0.9], t = 0.5: R = {0}, D = {2, 3}: |R| != |D|.
  assert _run([0.9, 0.1, 0.5, 0.5], [F, F, T, T], 2, 1.0) == ([F, F, T, T], 0)
  # All equal: t = 1, R is empty.
  assert _run([1.0, 1.0, 1.0, 1.0], [F, F, T, T], 2, 1.0) == ([F, F, T, T], 0)


def test_unequal_candidate_counts_leave_mask_unchanged():
  # sorted [0.1, 0.2, 0.2, 0.7, 0.8], k = 2, t = 0.2: R = {0, 1}, D = {2, 3, 4}.
  assert _run([0.8, 0.7, 0.2, 0.2, 0.1], [F, F, T, T, T], 2, 1.0) == ([F, F, T, T, T], 0)


def test_tied_drop_candidates_inside_threshold_swap():
  # sorted [.1, .1, .5, .8, .9], t = 0.1: R = {0, 1}, D = {2, 3}, equal sizes.
  score, mask = [0.9, 0.8, 0.1, 0.1, 0.5], [F, F, T, T, T]
  assert _run(score, mask, 2, 1.0) == ([T, T, F, F, T], 2)
  # One swap: revive the highest R (0), drop the lowest D; 2 and 3 tie, lower index first.
  assert _run(score, mask, 2, 0.5) == ([T, F, F, T, T], 1)


def test_rate_below_one_swaps_extremes():
  score = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]
  mask = [F, T, F, T, F, T, F, T]  # pruned {0.9, 0.8, 0.7, 0.6}; kept {0.1, 0.2, 0.3, 0.4}
  # ceil(0.5 * 4) = 2: revive 0.9 and 0.8, drop 0.1 and 0.2.
  assert _run(score, mask, 4, 0.5) == ([T, F, T, F, F, T, F, T], 2)
  assert _run(score, mask, 4, 0.3) == ([T, F, T, F, F, T, F, T], 2)  # ceil(1.2) = 2
  assert _run(score, mask, 4, 0.25) == ([T, F, F, T, F, T, F, T], 1)
  assert _run(score, mask, 4, 1e-6) == ([T, F, F, T, F, T, F, T], 1)  # any rate > 0 swaps one
  assert _run(score, mask, 4, 1.0) == ([T, F, T, F, T, F, T, F], 4)


def test_swap_count_of_exact_products_is_not_rounded_up():
  # 0.1 * 10 is 1 in exact arithmetic (float32 gives 1.0000000149).
  score = np.concatenate([np.linspace(2, 3, 10), np.linspace(0, 1, 10)]).astype(np.float32)
  mask = np.array([F] * 10 + [T] * 10)
  assert _run(score, mask, 10, 0.1)[1] == 1
  assert _run(score, mask, 10, 0.7)[1] == 7


def test_tied_revive_candidates_break_by_lower_index():
  # Pruned 1 and 3 tie at 0.9 above t; one swap revives index 1.
  score = [0.0, 0.9, 0.5, 0.9, 0.1, 0.6]
  mask = [F, F, T, F, T, T]  # k = 3, sorted [0, .1, .5, .6, .9, .9], t = 0.5
  new_mask, n = _run(score, mask, 3, 0.5)
  assert n == 1 and new_mask == [F, T, T, F, F, T]  # revive 1, drop 4 (0.1)


def test_max_swaps_caps_swaps():
  score = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]
  mask = [F, T, F, T, F, T, F, T]
  assert _run(score, mask, 4, 1.0, max_swaps=1) == ([T, F, F, T, F, T, F, T], 1)
  assert _run(score, mask, 4, 0.5, max_swaps=3)[1] == 2


def test_negative_zero_ties_with_zero():
  # -0.0 == 0.0: sorted [-0., 0., 1.], k = 1, t = 0: R is empty.
  assert _run([0.0, -0.0, 1.0], [F, T, T], 1, 1.0) == ([F, T, T], 0)


def test_k_zero_and_k_n():
  assert _run([0.3, 0.1, 0.2], [T, T, T], 0, 1.0) == ([T, T, T], 0)
  assert _run([0.3, 0.1, 0.2], [F, F, F], 3, 1.0) == ([F, F, F], 0)


def test_k_n_minus_one():
  assert _run([0.5, 0.1, 0.2], [T, F, F], 2, 1.0) == ([T, F, F], 0)
  assert _run([0.5, 0.1, 0.2], [F, F, T], 2, 1.0) == ([T, F, F], 1)


def test_one_element_leaf():
  assert _run([0.5], [T], 0, 1.0) == ([T], 0)
  assert _run([0.5], [F], 1, 1.0) == ([F], 0)


def test_multidimensional_leaf_uses_flat_index():
  score = np.array([[0.9, 0.9], [0.1, 0.5]], np.float32)
  mask = np.array([[F, F], [T, T]])
  new_mask, n = swap_update(score, mask, 2, 0.5)
  assert int(n) == 1 and np.asarray(new_mask).tolist() == [[T, F], [F, T]]


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5, float("nan")])
def test_bad_rate_raises_naming_value(rate):
  with pytest.raises(ValueError, match="rate must be in"):
    swap_update(np.zeros(3, np.float32), np.array([F, T, T]), 1, rate)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="prune_count"):
    swap_update(np.zeros(3, np.float32), np.array([F, T, T]), 4, 1.0)
  with pytest.raises(TypeError, match="static Python int"):
    swap_update(np.zeros(3, np.float32), np.array([F, T, T]), jnp.int32(1), 1.0)
  with pytest.raises(ValueError, match="max_swaps"):
    swap_update(np.zeros(3, np.float32), np.array([F, T, T]), 1, 1.0, max_swaps=0)
  with pytest.raises(TypeError, match="bool"):
    swap_update(np.zeros(3, np.float32), np.array([0, 1, 1]), 1, 1.0)


def test_rate_one_no_cap_gives_threshold_mask():
  rng = np.random.default_rng(0)
  score = rng.normal(size=1000).astype(np.float32)
  mask = np.ones(1000, bool)
  mask[rng.permutation(1000)[:900]] = False
  new_mask, n = swap_update(score, mask, 900, 1.0)
  t = np.sort(score)[899]
  np.testing.assert_array_equal(np.asarray(new_mask), score > t)
  assert int(n) == int(np.sum(~mask & (score > t)))


# --- properties against the reference port -----------------------------------------------


@functools.partial(jax.jit, static_argnums=(2, 4, 5))
def _jit_topk(score, mask, k, rate, max_swaps, capacity):
  return swap_update(score, mask, k, rate, max_swaps, capacity=capacity)


@functools.partial(jax.jit, static_argnums=(2, 4))
def _jit_sort(score, mask, k, rate, max_swaps):
  return swap_update_sort(score, mask, k, rate, max_swaps)


@st.composite
def _cases(draw):
  n = draw(st.sampled_from([1, 5, 16, 40]))
  k = draw(st.integers(0, n))
  discrete = draw(st.booleans())
  if discrete:  # many ties
    levels = draw(st.integers(1, 4))
    score = draw(hnp.arrays(np.int8, n, elements=st.integers(0, levels - 1))).astype(np.float32)
  else:
    score = draw(hnp.arrays(np.float32, n, elements=st.floats(-4, 4, width=32)))
  pruned = draw(st.permutations(range(n)))[:k]
  mask = np.ones(n, bool)
  mask[list(pruned)] = False
  rate = draw(st.sampled_from([1.0, 0.5, 0.3, 0.01]))
  max_swaps = draw(st.sampled_from([None, 1, 3]))
  return score, mask, k, rate, max_swaps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases(), st.sampled_from([1, 2, 4096]))
def test_matches_reference(case, capacity):
  score, mask, k, rate, max_swaps = case
  want_mask, want_n = swap_update_reference(score, mask, k, rate, max_swaps)
  assert np.sum(~want_mask) == k
  for new_mask, n in (
    _jit_topk(score, mask, k, rate, max_swaps, capacity),
    _jit_sort(score, mask, k, rate, max_swaps),
  ):
    np.testing.assert_array_equal(np.asarray(new_mask), want_mask)
    assert int(n) == want_n
    assert int(np.sum(~np.asarray(new_mask))) == k


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_repeated_updates_keep_exact_sparsity(seed):
  rng = np.random.default_rng(seed)
  n, k = 64, 48
  mask = np.ones(n, bool)
  mask[rng.permutation(n)[:k]] = False
  score = rng.integers(0, 3, size=n).astype(np.float32)
  for _ in range(4):
    score = score + rng.normal(scale=0.5, size=n).astype(np.float32) * rng.integers(0, 2, size=n)
    want = swap_update_reference(score, mask, k, 0.5, None)
    new_mask, _ = _jit_topk(score, mask, k, 0.5, None, 8)
    np.testing.assert_array_equal(np.asarray(new_mask), want[0])
    mask = np.asarray(new_mask)
    assert np.sum(~mask) == k


# --- pytrees, jit, sharding ---------------------------------------------------------------


def _tree_case(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"conv": (16, 8, 3, 3), "dense": (32, 10), "bias": (10,)}
  counts = {"conv": 1000, "dense": 250, "bias": 0}
  scores, masks = {}, {}
  for name, shape in shapes.items():
    size = int(np.prod(shape))
    init = np.ones(size, bool)
    init[rng.permutation(size)[: counts[name]]] = False
    # Magnitude-style init plus noise, so that each layer has a few inversions.
    score = np.where(init, 1.0, 0.99) + rng.normal(scale=0.01, size=size)
    scores[name] = score.astype(np.float32).reshape(shape)
    masks[name] = init.reshape(shape)
  return scores, masks, counts


def test_update_masks_pytree_matches_per_leaf_reference():
  scores, masks, counts = _tree_case()
  new_masks, n_swaps = jax.jit(lambda s, m, r: update_masks(s, m, counts, r))(scores, masks, 0.5)
  assert jax.tree.structure(new_masks) == jax.tree.structure(masks)
  for name in scores:
    want_mask, want_n = swap_update_reference(scores[name], masks[name], counts[name], 0.5)
    np.testing.assert_array_equal(np.asarray(new_masks[name]), want_mask)
    assert int(n_swaps[name]) == want_n
    assert n_swaps[name].dtype == jnp.int32
  assert int(n_swaps["bias"]) == 0
  assert int(n_swaps["conv"]) > 0
  np.testing.assert_array_equal(np.asarray(new_masks["bias"]), masks["bias"])


def test_update_masks_sort_impl_agrees():
  scores, masks, counts = _tree_case(1)
  fast = update_masks(scores, masks, counts, 1.0, 5)
  slow = update_masks(scores, masks, counts, 1.0, 5, impl="sort")
  jax.tree.map(np.testing.assert_array_equal, fast, slow)


def test_update_masks_traced_rate_from_schedule():
  scores, masks, counts = _tree_case(2)
  schedule = decaying_rate(total_steps=10, power=2.0)

  @jax.jit
  def step(scores, masks, step):
    return update_masks(scores, masks, counts, schedule(step))

  for s in (0, 5, 10):
    got = step(scores, masks, jnp.int32(s))
    want = update_masks(scores, masks, counts, float(schedule(s)))
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_update_masks_sharded_and_replicated_on_mesh(axis_type):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  scores, masks, counts = _tree_case(3)
  want = update_masks(scores, masks, counts, 0.5)
  fn = jax.jit(lambda s, m, r: update_masks(s, m, counts, r))
  replicated = NamedSharding(mesh, P())
  rep = jax.device_put((scores, masks), replicated)
  got_rep = fn(*rep, 0.5)
  # Shard the leading axis of each leaf whose leading dimension divides by 8.
  spec = lambda x: NamedSharding(mesh, P("data") if x.shape[0] % 8 == 0 else P())
  sharded = jax.tree.map(lambda x: jax.device_put(x, spec(x)), (scores, masks))
  got_sharded = fn(*sharded, 0.5)
  for got in (got_rep, got_sharded):
    jax.tree.map(np.testing.assert_array_equal, got, want)


# --- schedules ----------------------------------------------------------------------------


def test_constant_rate():
  assert float(constant_rate()(3)) == 1.0
  assert float(jax.jit(constant_rate(0.25))(jnp.int32(7))) == 0.25


@pytest.mark.parametrize("rate", [0.0, -1.0, 1.01])
def test_constant_rate_rejects_values_outside_unit_interval(rate):
  with pytest.raises(ValueError, match=repr(rate)):
    constant_rate(rate)


def test_decaying_rate_values_and_floor():
  schedule = decaying_rate(total_steps=100, power=4.0, floor=1e-3)
  assert float(schedule(0)) == 1.0
  np.testing.assert_allclose(float(schedule(50)), 0.5**4, rtol=1e-6)
  assert float(schedule(100)) == pytest.approx(1e-3)
  assert float(schedule(1000)) == pytest.approx(1e-3)
  rates = jax.jit(jax.vmap(schedule))(jnp.arange(0, 120))
  assert bool(jnp.all((rates > 0) & (rates <= 1)))
  assert bool(jnp.all(jnp.diff(rates) <= 0))


def test_decaying_rate_rejects_bad_arguments():
  with pytest.raises(ValueError, match="total_steps"):
    decaying_rate(0)
  with pytest.raises(ValueError, match="power"):
    decaying_rate(10, power=-1.0)
  with pytest.raises(ValueError, match="floor"):
    decaying_rate(10, floor=0.0)


@pytest.mark.parametrize("capacity", [4, 64])
@pytest.mark.parametrize("discrete", [False, True])
def test_blocked_selection_on_larger_leaves_matches_reference(capacity, discrete):
  # n > 2 * capacity * block, so the candidate lists come from the blocked top_k.
  rng = np.random.default_rng(capacity + discrete)
  n, k = 3001, 2700
  mask = np.ones(n, bool)
  mask[rng.permutation(n)[:k]] = False
  noise = rng.integers(0, 3, size=n) if discrete else rng.normal(scale=4e-3, size=n)
  score = (np.where(mask, 1.0, 0.99) + 0.01 * (noise if discrete else noise / 0.01)).astype(np.float32)
  for rate in (1.0, 0.3):
    want_mask, want_n = swap_update_reference(score, mask, k, rate)
    new_mask, n_swaps = _jit_topk(score, mask, k, rate, None, capacity)
    np.testing.assert_array_equal(np.asarray(new_mask), want_mask)
    assert int(n_swaps) == want_n


@pytest.mark.parametrize("inversions", [7, 8, 9])
def test_inversions_around_capacity_match_reference(inversions):
  # Capacity 8, blocked lists (n > 2 * 8 * 32): 7 inversions use the lists, 8 and 9 the
  # full-sort fallback; all must give the reference's mask.
  rng = np.random.default_rng(inversions)
  n, k = 2000, 1800
  mask = np.ones(n, bool)
  mask[rng.permutation(n)[:k]] = False
  score = np.where(mask, 2.0, 0.0) + rng.random(n)
  pruned, kept = np.flatnonzero(~mask), np.flatnonzero(mask)
  score[rng.choice(pruned, inversions, replace=False)] = 5.0 + np.arange(inversions)
  score[rng.choice(kept, inversions, replace=False)] = -1.0 - np.arange(inversions)
  score = score.astype(np.float32)
  for rate in (1.0, 0.5):
    want_mask, want_n = swap_update_reference(score, mask, k, rate)
    new_mask, n_swaps = _jit_topk(score, mask, k, rate, None, 8)
    np.testing.assert_array_equal(np.asarray(new_mask), want_mask)
    assert int(n_swaps) == want_n == math.ceil(rate * inversions)


def test_subnormal_scores_count_as_zero():
  # Found by hypothesis: XLA:CPU flushes -1e-45 to zero, NumPy did not; both now do.
  score = np.array([-1e-45, 0, 0, 0, 0], np.float32)
  mask = np.array([True, False, True, True, True])
  want_mask, want_n = swap_update_reference(score, mask, 1, 1.0, None)
  assert want_n == 0 and (want_mask == mask).all()   # a tie with 0.0: nothing to swap
  for new_mask, n in (_jit_topk(score, mask, 1, 1.0, None, 1), _jit_sort(score, mask, 1, 1.0, None)):
    np.testing.assert_array_equal(np.asarray(new_mask), want_mask)
    assert int(n) == want_n
