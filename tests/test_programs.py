"""The train step of every mask program: one device, under vmap, on an 8-device mesh.

Each program is built from a config through the engine's registry (as `loop.build`
does) on a tiny digits CNN and synthetic batches, so these tests pin the step
itself: what trains, what stays frozen, exact counts, and that vmap and sharding
do not change the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax import search, tickets  # noqa: F401  (register the methods' programs)
from lottery_jax.engine import programs
from lottery_jax.engine.config import base_config
from lottery_jax.engine.loop import make_mesh
from lottery_jax.engine.optim import make_optimizer
from lottery_jax.engine.state import TrainState, partition_placeholders
from lottery_jax.engine.step import make_eval_step, make_train_step, state_sharding

STEPS = 3
BATCH = 16

# name -> config fields; "given" reads the masks of a magnitude mask built here.
PROGRAMS = {
    "dense": {},
    "magnitude": {"sparsity": 0.8},
    "given": {},
    "jackpot": {"sparsity": 0.8, "mask.update_rule": "swap"},
    "jackpot_topk": {"sparsity": 0.8, "mask.update_rule": "topk",
                     "mask.score_init": "random"},
    # uniform 0.6 is feasible for a partition that freezes 30% pruned, 20% locked
    "jackpot_partitioned": {"sparsity": 0.6, "mask.update_rule": "topk",
                            "mask.score_init": "random", "allocation": "uniform"},
    "jackpot_capped": {"sparsity": 0.8, "mask.max_swaps": 1,
                       "mask.score_init": "random"},
    # lottery_jax.tickets: IMP level 1 from a dense level 0; random masks.
    "imp": {"imp.levels": 1, "imp.prune_fraction": 0.5},
    "random": {"sparsity": 0.8},
    # lottery_jax.search.strong: random weights it draws itself, a frozen partition.
    "strong_ticket": {"sparsity": 0.5, "model.weight_init": "kaiming_normal",
                      "freeze.prune_fraction": 0.2, "freeze.lock_fraction": 0.1,
                      "allocation": "uniform", "pretrained": ""},
}


def _config(name):
  c = base_config()
  c.model.name = "digits_cnn"
  c.model.kwargs = {"widths": (4, 8, 8)}
  c.mask.program = name if name in ("strong_ticket",) else name.split("_")[0]
  c.pretrained = "(weights given in the test)"
  c.optimizer.learning_rate = 0.5
  for k, v in PROGRAMS[name].items():
    c.update_from_flattened_dict({k: v})
  return c


def _setup(name, key=0, partition=None):
  c = _config(name)
  model = models.get("digits_cnn", num_classes=10, widths=(4, 8, 8))
  variables = model.init(jax.random.PRNGKey(key), jnp.zeros((1, 8, 8, 1)), train=False)
  params = variables["params"]
  spec = models.spec("digits_cnn")
  where = programs.prunable_where(c, spec.classifier)
  source = None
  if c.mask.program == "given":
    kept = mask_algebra.magnitude(params, 0.7, where=where)
    source = {"masks": jax.device_get(kept), "params": params}
    c.mask.source = "(masks given in the test)"
  if c.mask.program == "imp":   # level 0: the dense run, all kept, its final weights
    source = {"masks": jax.device_get(programs.all_kept(params)), "params": params}
    c.mask.source = "(level 0 given in the test)"
  program = programs.get_program(c, total_steps=STEPS)
  ctx = programs.Context(config=c, params=params, where=where, key=jax.random.PRNGKey(7),
                         source=source)
  if program.params is not None:   # a program that draws its own weights
    params = program.params(ctx)
    ctx = programs.Context(config=c, params=params, where=where, key=ctx.key, source=source)
  layout = program.layout(ctx)
  if partition is not None:
    layout = programs.Layout(layout.masked, layout.prune_counts, layout.sparsities,
                             partition(params, where))
  masks, scores = program.init(ctx, layout)
  if layout.partition is not None:
    masks = mask_algebra.topk(_full(scores, params), layout.sparsities,
                              partition=layout.partition,
                              where=lambda p, leaf: _flag(layout.masked, p))
  if not program.train_scores:
    params = mask_algebra.apply(params, masks)
  tx = make_optimizer(c.optimizer, STEPS, 1)
  trainable = {"scores": scores} if program.train_scores else {"params": params}
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), scores=scores, masks=masks,
      partition=jax.tree.map(jnp.asarray, layout.partition)
      if layout.partition is not None else partition_placeholders(params),
      opt_state=tx.init(trainable), rng=jax.random.PRNGKey(1),
      bad_step=jnp.full((), -1, jnp.int32))
  return model, tx, program, layout, state


def _full(scores, params):
  return jax.tree.map(lambda s, w: jnp.broadcast_to(s, w.shape) if s.ndim == 0 else s,
                      scores, params)


def _flag(tree, path):
  node = tree
  for k in path:
    node = node[getattr(k, "key", k)]
  return bool(node)


def _batches(n, key=3):
  k1, k2 = jax.random.split(jax.random.PRNGKey(key))
  images = jax.random.normal(k1, (n, BATCH, 8, 8, 1))
  labels = jax.random.randint(k2, (n, BATCH), 0, 10)
  return [{"image": images[i], "label": labels[i]} for i in range(n)]


def _run(step, state, batches):
  """Runs the steps; metrics of the last step, with "swaps" summed over all steps."""
  swaps = None
  for b in batches:
    state, metrics = step(state, b)
    swaps = metrics["swaps"] if swaps is None else jax.tree.map(jnp.add, swaps,
                                                                metrics["swaps"])
  return state, {**metrics, "swaps": swaps}


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


STEP_CASES = sorted(set(PROGRAMS) - {"jackpot_partitioned"})


@pytest.mark.parametrize("name", STEP_CASES)
def test_step_one_device(name):
  model, tx, program, layout, state = _setup(name)
  before = jax.device_get(state)
  step = make_train_step(model, tx, program, layout)
  after, metrics = _run(step, state, _batches(STEPS))
  after = jax.device_get(after)
  assert int(after.step) == STEPS
  assert np.isfinite(float(metrics["loss"]))
  counts = _leaves(layout.prune_counts)
  masked = _leaves(layout.masked)
  for k, m in _leaves(after.masks).items():
    # Exact prune count on every masked leaf at every step; others all kept.
    assert int(m.size - m.sum()) == (counts[k] if masked[k] else 0), k
  p0, p1 = _leaves(before.params), _leaves(after.params)
  if program.train_scores:
    # Scores train: weights, BN scale/shift and the classifier are bitwise frozen.
    for k in p0:
      np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before.scores), jax.tree.leaves(after.scores)))
  else:
    # Weights train; pruned weights stay exactly zero and masks never change.
    assert any(not np.array_equal(p0[k], p1[k]) for k in p0)
    for k, m in _leaves(after.masks).items():
      assert not np.any(p1[k][~m]), k
      np.testing.assert_array_equal(m, _leaves(before.masks)[k])
  if program.update.changes_masks and name != "jackpot":
    # Random scores on a fresh net: the rule must actually move masks.
    assert int(sum(jax.tree.leaves(metrics["swaps"]))) > 0


@pytest.mark.parametrize("name", STEP_CASES)
def test_step_under_vmap_equals_separate_copies(name):
  """Two copies on a leading sibling axis, each with its own batches, end where two
  separate single-copy runs end: masks exactly, floats to float32 rounding (vmap
  batches the convolutions into one grouped convolution, which may sum in another
  order: differences of a few ulps per step, far below 1e-5 after 3 steps)."""
  model, tx, program, layout, state = _setup(name)
  single = make_train_step(model, tx, program, layout)
  batched = make_train_step(model, tx, program, layout, siblings=2)
  data = [_batches(STEPS, key=3), _batches(STEPS, key=4)]
  stacked_state, stacked = stack_copies(state, data)
  both, metrics = _run(batched, stacked_state, stacked)
  assert np.shape(metrics["loss"]) == (2,)
  assert_each_copy_matches(single, state, data, both)


def stack_copies(state, data):
  """Two copies of `state` on a leading sibling axis, and the copies' batches
  (`data[i]` is copy i's list) stacked step by step."""
  stacked_state = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  stacked = [jax.tree.map(lambda a, b: jnp.stack([a, b]), x, y) for x, y in zip(*data)]
  return stacked_state, stacked


def assert_each_copy_matches(single, state, data, both):
  """Copy i of the sibling run `both` equals `single` run alone from `state` on
  `data[i]`: masks exactly, params, scores and BN statistics to float32 rounding."""
  for i in range(len(data)):
    alone, _ = _run(single, jax.tree.map(jnp.copy, state), data[i])
    mine = jax.tree.map(lambda x: x[i], both)
    for k, v in _leaves(alone.masks).items():
      np.testing.assert_array_equal(_leaves(mine.masks)[k], v, err_msg=k)
    for part in ("params", "scores", "batch_stats"):
      a, b = _leaves(getattr(alone, part)), _leaves(getattr(mine, part))
      for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"{part} {k}")


@pytest.mark.parametrize("name", STEP_CASES)
def test_step_on_eight_devices_matches_one(name):
  """Batch sharded over 8 devices, state replicated: the same masks, and floats equal
  to float32 rounding (the batch mean is summed in another order)."""
  assert jax.device_count() == 8
  model, tx, program, layout, state = _setup(name)
  one, _ = _run(make_train_step(model, tx, program, layout), jax.tree.map(jnp.copy, state),
                _batches(STEPS))
  mesh = make_mesh()
  sharded_state = jax.device_put(state, state_sharding(mesh, 0))
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batches = [jax.device_put(b, data_sharding) for b in _batches(STEPS)]
  eight, _ = _run(make_train_step(model, tx, program, layout, mesh=mesh), sharded_state,
                  batches)
  for k, v in _leaves(one.masks).items():
    np.testing.assert_array_equal(_leaves(eight.masks)[k], v, err_msg=k)
  for part in ("params", "scores"):
    a, b = _leaves(getattr(one, part)), _leaves(getattr(eight, part))
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"{part} {k}")


def test_topk_respects_a_frozen_partition():
  """"topk" with a masks.freeze partition: frozen-pruned entries stay pruned, locked
  entries stay kept, the count stays exact, and only searchable entries move."""
  def partition(params, where):
    return mask_algebra.freeze(jax.random.PRNGKey(5), params, 0.3, 0.2, where=where)

  model, tx, program, layout, state = _setup("jackpot_partitioned", partition=partition)
  initial = _leaves(jax.device_get(state.masks))
  step = make_train_step(model, tx, program, layout)
  after, metrics = _run(step, state, _batches(STEPS))
  codes = _leaves(layout.partition)
  masked = _leaves(layout.masked)
  moved = 0
  for k, m in _leaves(after.masks).items():
    if not masked[k]:
      continue
    assert not np.any(m[codes[k] == mask_algebra.PRUNED]), k
    assert np.all(m[codes[k] == mask_algebra.LOCKED]), k
    assert int(m.size - m.sum()) == _leaves(layout.prune_counts)[k]
    moved += int(np.sum(m != initial[k]))
  assert moved > 0


def test_eval_step_per_sibling():
  model, tx, program, layout, state = _setup("dense")
  del tx, program
  ev = make_eval_step(model, layout=layout)
  evs = make_eval_step(model, layout=layout, siblings=2)
  b = _batches(1)[0]
  b["valid"] = jnp.ones((BATCH,), bool)
  one = ev(state, b)
  two = evs(jax.tree.map(lambda x: jnp.stack([x, x]), state), b)
  assert np.shape(two["correct"]) == (2,)
  np.testing.assert_allclose(np.asarray(two["loss"]), float(one["loss"]), rtol=1e-6)


def test_unknown_program_and_rule_name_the_field():
  from lottery_jax.engine.errors import ConfigError
  c = _config("dense")
  c.mask.program = "nope"
  with pytest.raises(ConfigError, match=r"mask\.program='nope'.*registered"):
    programs.get_program(c, 1)
  c = _config("magnitude")
  c.mask.update_rule = "swap"
  with pytest.raises(ConfigError, match=r"mask\.update_rule='swap' is invalid"):
    programs.get_program(c, 1)
  c = _config("dense")
  c.sparsity = 0.5
  with pytest.raises(ConfigError, match=r"sparsity=0\.5"):
    programs.get_program(c, 1)
