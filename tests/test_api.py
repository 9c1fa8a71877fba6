"""lottery_jax.api: the jackpot search and masked optimisers for users' own models."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lottery_jax import api, masks
from lottery_jax.search import decaying_rate
from lottery_jax.search.swap import swap_update_reference


def _params(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 8)), "bias": jnp.zeros(8)},
          "dense": {"kernel": jax.random.normal(k[1], (32, 10)), "bias": jnp.zeros(10)},
          "norm": {"scale": jnp.ones(8)}}


def test_starts_from_magnitude_with_reference_scores():
  params = _params()
  search = api.jackpot(params, 0.8)
  state = search.init()
  sparsities = masks.allocate(params, 0.8, method="global_magnitude")
  expected = masks.magnitude(params, sparsities)
  for got, want in zip(jax.tree.leaves(state.masks), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  k = state.scores["dense"]["kernel"]
  m = state.masks["dense"]["kernel"]
  assert set(np.unique(np.asarray(k[m]))) == {1.0} and set(np.unique(np.asarray(k[~m]))) == {
      np.float32(0.99)}
  assert state.scores["conv"]["bias"].shape == () and bool(jnp.all(state.masks["conv"]["bias"]))
  assert search.prune_counts["norm"]["scale"] == 0
  assert search.sparsity(state) == round(int(0.8 * 464) / 464, 6)  # exact floor count


@pytest.mark.parametrize("rate,max_swaps", [(1.0, None), (0.5, None), (1.0, 2)])
def test_update_is_the_reference_swap_rule_with_exact_sparsity(rate, max_swaps):
  """Every update equals the NumPy port of the reference's rule, leaf by leaf; the
  prune counts never move."""
  params = _params(1)
  search = api.jackpot(params, 0.7, rate=rate, max_swaps=max_swaps)
  state = search.init()
  update = jax.jit(search.update)
  key = jax.random.PRNGKey(2)
  for _ in range(5):
    key, sub = jax.random.split(key)
    noise = jax.tree.map(lambda s: 0.05 * jax.random.normal(sub, s.shape), state.scores)
    scores = jax.tree.map(jnp.add, state.scores, noise)
    new, swaps = update(state, scores)
    for path in (("conv", "kernel"), ("dense", "kernel")):
      leaf = lambda t: t[path[0]][path[1]]  # noqa: E731
      want, n = swap_update_reference(np.asarray(leaf(scores)), np.asarray(leaf(state.masks)),
                                      leaf(search.prune_counts), rate, max_swaps)
      np.testing.assert_array_equal(leaf(new.masks), want)
      assert int(leaf(swaps)) == n
      assert int(np.sum(~np.asarray(leaf(new.masks)))) == leaf(search.prune_counts)
      if max_swaps:
        assert n <= max_swaps
    assert int(new.step) == int(state.step) + 1
    state = new


def test_weights_carry_the_straight_through_gradient():
  params = _params(3)
  search = api.jackpot(params, 0.5)
  state = search.init()
  x = jax.random.normal(jax.random.PRNGKey(4), (5, 32))

  def loss_of_weights(p):
    return jnp.sum(jnp.tanh(x @ p["dense"]["kernel"]) ** 2) + jnp.sum(p["conv"]["kernel"] ** 3)

  g_scores = jax.grad(lambda s: loss_of_weights(search.weights(params, s, state.masks)))(
      state.scores)
  effective = masks.apply(params, state.masks)
  g_eff = jax.grad(loss_of_weights)(effective)
  for name in ("dense", "conv"):
    np.testing.assert_allclose(g_scores[name]["kernel"],
                               g_eff[name]["kernel"] * params[name]["kernel"], rtol=1e-6)
  # Forward: exactly the masked weights; unsearched leaves untouched.
  w = search.weights(params, state.scores, state.masks)
  np.testing.assert_array_equal(w["dense"]["kernel"], effective["dense"]["kernel"])
  assert w["norm"]["scale"] is params["norm"]["scale"]


def test_short_restriction_schedule_slows_the_mask_changes():
  params = _params(5)
  fast = api.jackpot(params, 0.9)
  slow = api.jackpot(params, 0.9, rate=decaying_rate(10, power=4), max_swaps=3)
  s_fast, s_slow = fast.init(), slow.init()
  scores = jax.tree.map(
      lambda s: s + 0.2 * jax.random.normal(jax.random.PRNGKey(6), s.shape), s_fast.scores)
  _, n_fast = fast.update(s_fast, scores)
  _, n_slow = slow.update(s_slow, scores)
  assert int(n_fast["dense"]["kernel"]) > 3
  assert int(n_slow["dense"]["kernel"]) == 3


def test_masked_optimizer_keeps_pruned_weights_exactly_zero():
  """AdamW with weight decay and momentum: pruned weights stay 0.0, the rest train;
  the masks live in the optimiser state."""
  params = _params(7)
  kept = masks.magnitude(params, 0.75)
  params = masks.apply(params, kept)
  tx = api.masked(optax.adamw(1e-2, weight_decay=0.1), kept)
  opt_state = tx.init(params)
  assert any(isinstance(s, api.MaskState) for s in opt_state)
  for i in range(4):
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 1.0 + i), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(kept)):
    assert bool(jnp.all(w[~m] == 0.0))
  assert bool(jnp.any(params["dense"]["kernel"] != 0.0))


def test_equinox_and_nnx_models():
  """Any pytree of weights: an Equinox module's arrays and an NNX model's Params."""
  model = eqx.nn.MLP(6, 3, 16, 2, key=jax.random.PRNGKey(0))
  weights, static = eqx.partition(model, eqx.is_array)
  search = api.jackpot(weights, 0.5)
  state = search.init()
  x = jnp.ones((4, 6))
  out = jax.vmap(eqx.combine(search.weights(weights, state.scores, state.masks), static))(x)
  assert out.shape == (4, 3)
  assert search.sparsity(state) == 0.5
  biases = [m for m, w in zip(jax.tree.leaves(state.masks), jax.tree.leaves(weights))
            if w.ndim == 1]
  assert biases and all(bool(jnp.all(b)) for b in biases)

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(6, 16, rngs=rngs)
      self.b = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.b(jax.nn.relu(self.a(x)))

  net = Net(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  search = api.jackpot(params, 0.75)
  state = search.init()
  y = nnx.merge(graphdef, search.weights(params, state.scores, state.masks), rest)(x)
  assert y.shape == (4, 3) and search.sparsity(state) == 0.75


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="sparsity"):
    api.jackpot(_params(), 1.0)
  with pytest.raises(ValueError, match="PRNG key"):
    api.jackpot(_params(), 0.5, score_init="random")
  with pytest.raises(ValueError, match="max_swaps"):
    api.jackpot(_params(), 0.5, max_swaps=0)



def test_the_same_search_as_the_engine(tmp_path):
  """The engine's jackpot step and a user's loop written with lottery_jax.api (same
  model, batches and score optimiser, BatchNorm statistics carried by the user) find
  the same masks: the API is the engine's rule, not a second implementation."""
  from lottery_jax.engine import loop, programs
  from lottery_jax.engine.losses import cross_entropy
  from lottery_jax.engine.optim import make_optimizer
  from test_engine import search_config, tiny_config

  pretrained = str(tmp_path / "pretrained")
  loop.run(tiny_config(num_steps=16, **{"optimizer.learning_rate": 0.05}), pretrained)
  config = search_config(pretrained, num_steps=6)
  r = loop.build(config, mesh=loop.make_mesh(jax.devices()[:1]))
  it = r.train_iter()
  batches = [next(it) for _ in range(6)]
  state = r.state
  for batch in batches:
    state, _ = r.train_step(state, batch)

  params = r.starting_variables["params"]
  stats = r.starting_variables["batch_stats"]
  search = api.jackpot(params, config.sparsity,
                       where=programs.prunable_where(config, r.spec.classifier))
  tx = make_optimizer(config.optimizer, r.total_steps, r.data.steps_per_epoch)
  s = search.init()
  opt_state = tx.init(s.scores)

  @jax.jit
  def step(s, opt_state, stats, batch):
    def loss(scores):
      logits, new = r.model.apply(
          {"params": search.weights(params, scores, s.masks), "batch_stats": stats},
          batch["image"], train=True, mutable=["batch_stats"])
      return cross_entropy(logits, batch["label"]).mean(), new["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(s.scores)
    updates, opt_state = tx.update(grads, opt_state, s.scores)
    s, _ = search.update(s, optax.apply_updates(s.scores, updates))
    return s, opt_state, stats

  for batch in batches:
    s, opt_state, stats = step(s, opt_state, stats, batch)
  moved = 0
  for got, want, start in zip(jax.tree.leaves(s.masks), jax.tree.leaves(state.masks),
                              jax.tree.leaves(r.initial_masks)):
    np.testing.assert_array_equal(got, want)
    moved += int(np.sum(np.asarray(got) != np.asarray(start)))
  assert moved > 0  # the masks did change in 6 steps
  for got, want in zip(jax.tree.leaves(s.scores), jax.tree.leaves(state.scores)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
