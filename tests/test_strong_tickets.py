"""Strong tickets in partially frozen random networks (`lottery_jax.search.strong`).

Pins: the weights never change, per-layer counts are exact and the frozen partition
holds at every step (p, r > 0; the randomly pruned source r = 0; the dense source
p = r = 0), the estimator's gradient runs through |S| as edge-popup's, bad settings
name their field, and a run of configs/slt_quick.py (shrunk) stores a ticket whose
regenerated network reproduces the run's logits bitwise, with the bit accounting.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from lottery_jax import data, experiments, masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import io, loop, programs
from lottery_jax.engine.errors import CheckpointMismatchError, ConfigError
from lottery_jax.engine.losses import cross_entropy
from lottery_jax.search import load_strong_ticket, strong

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
STEPS = 4


def _config(p=0.2, r=0.3, sparsity=0.6, allocation="uniform", distribution="uniform",
            weight_init="kaiming_normal", **fields):
  c = config_lib.base_config()
  c.model.name = "digits_cnn"
  c.model.kwargs = {"widths": (8, 16, 16)}
  c.model.weight_init = weight_init
  c.data = data.default_config("digits")
  c.data.batch_size = 32
  c.data.augment = False
  c.mask.program = "strong_ticket"
  c.sparsity = sparsity
  c.allocation = allocation
  c.prune_classifier = True
  c.freeze.prune_fraction = p
  c.freeze.lock_fraction = r
  c.freeze.distribution = distribution
  c.optimizer.learning_rate = 1.0
  c.optimizer.weight_decay = 0.0
  c.num_steps = STEPS
  c.tensorboard = False
  c.progress_bar = False
  for k, v in fields.items():
    c.update_from_flattened_dict({k: v})
  return c


def _build(c):
  return loop.build(c, mesh=loop.make_mesh(jax.devices()[:1]))


def _layout(c):
  """The program's weights and layout on the digits CNN, without building data."""
  model = models.get(c.model.name, num_classes=10, **c.model.kwargs.to_dict())
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
  program = programs.get_program(c, total_steps=STEPS)
  where = programs.prunable_where(c, models.spec(c.model.name).classifier)
  ctx = programs.Context(config=c, params=params, where=where,
                         key=loop.stage_keys(c.seed)[1])
  return program.layout(programs.Context(config=c, params=program.params(ctx), where=where,
                                         key=ctx.key))


def _flat(tree):
  return io.flatten_dict(io.plain(tree))


@pytest.mark.parametrize("p,r,allocation,distribution", [
    (0.2, 0.3, "uniform", "uniform"),   # p and r both nonzero
    (0.3, 0.0, "erk", "erk"),           # the randomly pruned source (r = 0)
    (0.0, 0.0, "uniform", "uniform"),   # the dense source (p = r = 0)
])
def test_weights_frozen_counts_exact_partition_holds_every_step(p, r, allocation,
                                                                 distribution):
  r_ = _build(_config(p, r, allocation=allocation, distribution=distribution,
                      **{"optimizer.momentum": 0.0}))
  layout = r_.layout
  flags = _flat(layout.masked)
  counts = _flat(layout.prune_counts)
  codes = _flat(layout.partition)
  masked = [k for k, f in flags.items() if f]
  assert "classifier/kernel" in masked
  # The partition: exact floor counts per layer, all searchable when p = r = 0.
  for k in masked:
    n = codes[k].size
    if distribution == "uniform":
      assert np.sum(codes[k] == mask_algebra.PRUNED) == mask_algebra.prune_count(p, n)
      assert np.sum(codes[k] == mask_algebra.LOCKED) == mask_algebra.prune_count(r, n)
  if p == r == 0:
    assert all(np.all(codes[k] == mask_algebra.SEARCHABLE) for k in masked)
  params0 = _flat(jax.device_get(r_.state.params))
  state, it, changed = r_.state, r_.train_iter(), 0
  previous = _flat(jax.device_get(state.masks))
  for _ in range(STEPS + 1):  # the initial masks, then every step
    host = jax.device_get(state)
    params, m = _flat(host.params), _flat(host.masks)
    for k, w in params0.items():  # never trained: bitwise the same
      np.testing.assert_array_equal(params[k], w)
    for k in masked:
      assert int(np.sum(~m[k])) == counts[k], k
      assert not np.any(m[k][codes[k] == mask_algebra.PRUNED]), k
      assert np.all(m[k][codes[k] == mask_algebra.LOCKED]), k
      changed += int(np.sum(m[k] != previous[k]))
    np.testing.assert_array_equal(_flat(host.partition)["conv0/kernel"], codes["conv0/kernel"])
    previous = m
    if int(host.step) < STEPS:
      batch = next(it)
      if int(host.step) == 0:
        want = _sgd_step_through_abs(r_, host, batch)
      state, _ = r_.train_step(state, batch)
      if int(host.step) == 0:
        got = _flat(jax.device_get(state.scores))
        for k in masked:
          np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-7)
  it.close()
  assert changed > 0  # the search moved
  # Biases are zero (the references' networks have none); kernels are random.
  assert np.all(params0["classifier/bias"] == 0)


def _sgd_step_through_abs(r_, state, batch):
  """The scores after one plain SGD step (no momentum, no decay) if dL/dS = sign(S) *
  dL/dW_eff * W, edge-popup's gradient through GetSubnet(scores.abs())."""
  eff = jax.tree.map(lambda w, m: w * m.astype(w.dtype), state.params, state.masks)

  def loss(e):
    logits, _ = r_.model.apply({"params": e, "batch_stats": state.batch_stats},
                               batch["image"], train=True, mutable=["batch_stats"])
    return cross_entropy(logits, batch["label"]).mean()

  g_eff = _flat(jax.device_get(jax.jit(jax.grad(loss))(eff)))
  scores, params = _flat(state.scores), _flat(state.params)
  lr = r_.config.optimizer.learning_rate
  return {k: scores[k] - lr * np.sign(scores[k]) * g_eff[k] * params[k]
          for k, f in _flat(r_.layout.masked).items() if f}


def test_weight_inits_follow_the_references():
  shape = (3, 3, 32, 64)
  fan_in = 3 * 3 * 32
  std = np.sqrt(2.0 / fan_in)
  key = jax.random.PRNGKey(3)
  normal = np.asarray(strong.draw_kernel(key, shape, "kaiming_normal"))
  assert abs(normal.std() / std - 1) < 0.02
  uniform = np.asarray(strong.draw_kernel(key, shape, "kaiming_uniform"))
  assert np.abs(uniform).max() <= std * np.sqrt(3) and abs(uniform.std() / std - 1) < 0.02
  signed = np.asarray(strong.draw_kernel(key, shape, "signed_constant"))
  np.testing.assert_array_equal(np.abs(signed), np.float32(std))
  assert abs(np.mean(signed > 0) - 0.5) < 0.02
  # Kernels are redrawn (per leaf, deterministically), biases zeroed, the rest kept.
  model = models.get("mnist1d_cnn", num_classes=10, widths=(4, 8, 8))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 1)))["params"]
  a = _flat(strong.random_weights(strong.weight_key(5), params, "signed_constant"))
  b = _flat(strong.random_weights(strong.weight_key(5), params, "signed_constant"))
  c = _flat(strong.random_weights(strong.weight_key(6), params, "signed_constant"))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert np.all(a["fc/bias"] == 0)
  np.testing.assert_array_equal(a["bn1/scale"], _flat(params)["bn1/scale"])
  assert not np.array_equal(a["conv2/kernel"], c["conv2/kernel"])
  np.testing.assert_array_equal(np.abs(a["conv2/kernel"]), np.float32(np.sqrt(2 / 12)))


@pytest.mark.parametrize("fields,field", [
    ({"freeze.prune_fraction": 0.6, "freeze.lock_fraction": 0.4}, "freeze.lock_fraction"),
    ({"freeze.prune_fraction": 1.0}, "freeze.prune_fraction"),
    ({"freeze.distribution": "igq"}, "freeze.distribution"),
    ({"model.weight_init": "xavier"}, "model.weight_init"),
])
def test_validate_names_the_field(fields, field):
  c = _config(**fields)
  with pytest.raises(ConfigError, match=f"config.{field}="):
    config_lib.validate(c)


@pytest.mark.parametrize("kwargs,field", [
    (dict(p=0.7, r=0.0, sparsity=0.6), "sparsity"),             # s < p
    (dict(p=0.1, r=0.5, sparsity=0.6), "sparsity"),             # s > 1 - r
    (dict(weight_init=""), "model.weight_init"),
    (dict(allocation="global_magnitude"), "allocation"),
    (dict(pretrained="/some/run"), "pretrained"),
])
def test_program_refuses_bad_settings(kwargs, field):
  pretrained = kwargs.pop("pretrained", "")
  c = _config(**kwargs)
  c.pretrained = pretrained
  with pytest.raises(ConfigError, match=f"config.{field}="):
    programs.get_program(c, total_steps=STEPS)


def test_infeasible_layer_names_sparsity_and_the_leaf():
  # Model-wide p <= s holds, but ERK freezes more than half of the big layers while
  # the uniform allocation prunes exactly half of each.
  c = _config(p=0.5, r=0.0, sparsity=0.5, distribution="erk")
  with pytest.raises(ConfigError, match=r"config.sparsity=0.5 is infeasible.*leaf '"):
    _layout(c)
  # The same fractions by ERK on both sides are feasible.
  layout = _layout(_config(p=0.5, r=0.0, sparsity=0.5, distribution="erk",
                           allocation="erk"))
  assert strong.partition_counts(layout)["total"]["locked"] == 0


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_slt_quick_end_to_end_stores_a_ticket_that_reproduces_the_logits(tmp_path):
  c = _load_config("slt_quick")
  assert c.freeze.prune_fraction > 0 and c.freeze.lock_fraction > 0
  c.model.kwargs = {"bn_affine": False, "widths": (8, 16, 16)}
  c.num_epochs = 1.0
  c.num_steps = 6
  c.data.batch_size = 64
  c.data.max_eval_examples = 128
  c.log_every_steps = 3
  c.tensorboard = False
  c.progress_bar = False
  workdir = str(tmp_path / "slt")
  summary = experiments.run(c, workdir)

  # Accounting: one bit per searchable entry plus the header.
  report = summary["strong_ticket"]
  total = report["counts"]["total"]
  n, searchable = 0, 0
  for leaf in report["counts"]["per_layer"].values():
    size = leaf["size"]
    pruned, locked = mask_algebra.prune_count(0.25, size), mask_algebra.prune_count(0.25, size)
    assert (leaf["pruned"], leaf["locked"]) == (pruned, locked)
    assert leaf["prune_count"] == mask_algebra.prune_count(0.5, size)
    n += size
    searchable += size - pruned - locked
  assert total["size"] == n and total["searchable"] == searchable
  assert summary["stored_bits"] == searchable + sum(strong.HEADER_BITS.values())
  assert summary["dense_source_bits"] == n + sum(strong.DENSE_SOURCE_HEADER_BITS.values())
  assert abs(report["partition"]["pruned"] - 0.25) < 0.01
  assert abs(report["partition"]["locked"] - 0.25) < 0.01
  assert abs(report["partition"]["searchable"] - 0.5) < 0.01
  assert report["batch_stats_bits"] == 32 * 2 * (8 + 16 + 16)
  assert "final_eval" in summary and summary["sparsity"]["per_layer"]["fc/kernel"] == 0.5

  # The stored file holds the searchable bits (and BatchNorm statistics) only.
  stored = load_file(os.path.join(workdir, strong.TICKET_TENSORS))
  bits = {k: v for k, v in stored.items() if k.startswith("searchable/")}
  assert set(bits) == {f"searchable/{k}" for k in report["counts"]["per_layer"]}
  assert sum(v.size for v in bits.values()) == sum(
      (leaf["searchable"] + 7) // 8 for leaf in report["counts"]["per_layer"].values())

  # The ticket alone (two files in a fresh folder) regenerates the run's network.
  alone = tmp_path / "alone"
  alone.mkdir()
  for name in (strong.TICKET_JSON, strong.TICKET_TENSORS):
    shutil.copy(os.path.join(workdir, name), alone / name)
  ticket = load_strong_ticket(str(alone))
  run = io.load_run(workdir)
  for k, m in _flat(run["masks"]).items():
    np.testing.assert_array_equal(_flat(ticket["masks"])[k], m)
  for k, w in _flat(run["params"]).items():
    np.testing.assert_array_equal(_flat(ticket["variables"]["params"])[k], w)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 40, 1)), jnp.float32)
  apply = jax.jit(lambda v, x: ticket["model"].apply(v, x, train=False))
  ours = np.asarray(apply(ticket["variables"], x))
  theirs = np.asarray(apply({"params": run["params"], "batch_stats": run["batch_stats"]}, x))
  np.testing.assert_array_equal(ours, theirs)
  with pytest.raises(FileNotFoundError, match="strong_ticket"):
    load_strong_ticket(str(tmp_path))


def _register_hooked(name, draw):
  """A dense program whose `params` hook is `draw(ctx)`."""
  if name not in programs.program_names():
    @programs.register_program(name)
    def _factory(config, total_steps):
      c = config.copy_and_resolve_references()
      c.mask.program = "dense"
      dense = programs.get_program(c, total_steps)
      return programs.MaskProgram(name, trains="weights", layout=dense.layout,
                                  init=dense.init, update=dense.update, params=draw)


def test_a_program_may_draw_its_own_starting_weights():
  """The engine's generic `MaskProgram.params` hook: `build` uses the weights it returns
  everywhere (state, `starting_variables`) and refuses another structure."""
  _register_hooked("test_doubled", lambda ctx: jax.tree.map(lambda w: 2 * w, ctx.params))
  _register_hooked("test_misshapen", lambda ctx: {**ctx.params,
                                                  "classifier": {"kernel": jnp.zeros(1)}})
  doubled = _build(_config(**{"mask.program": "test_doubled", "sparsity": 0.0}))
  fresh = doubled.model.init(loop.stage_keys(0)[0], jnp.zeros((1, 8, 8, 1)), train=False)
  for k, w in _flat(fresh["params"]).items():
    np.testing.assert_array_equal(_flat(jax.device_get(doubled.state.params))[k], 2 * w)
    np.testing.assert_array_equal(_flat(doubled.starting_variables["params"])[k], 2 * w)
  with pytest.raises(CheckpointMismatchError, match="test_misshapen"):
    _build(_config(**{"mask.program": "test_misshapen", "sparsity": 0.0}))


BIG = [("slt_conv6_cifar10", (32, 32, 3), 10), ("slt_resnet18_cifar10", (32, 32, 3), 10),
       ("slt_r50_imagenet", (224, 224, 3), 1000)]


@pytest.mark.parametrize("name,input_shape,classes", BIG, ids=[b[0] for b in BIG])
def test_large_configs_validate_and_lay_out(name, input_shape, classes):
  """Each config validates, its program builds, and its layout is feasible on the
  model's real shapes (no data: the layout needs shapes only), with the stored bits
  its (p, r) promise."""
  c = _load_config(name)
  config_lib.validate(c)
  assert c.experiment == "strong_ticket" and c.prune_classifier
  assert c.model.kwargs.to_dict().get("bn_affine", False) is False
  program = programs.get_program(c, total_steps=10)
  model = models.get(c.model.name, num_classes=classes, **c.model.kwargs.to_dict())
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, *input_shape)),
                                               train=False), jax.random.PRNGKey(0))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
  where = programs.prunable_where(c, models.spec(c.model.name).classifier)
  layout = program.layout(programs.Context(config=c, params=params, where=where,
                                           key=loop.stage_keys(c.seed)[1]))
  total = strong.partition_counts(layout)["total"]
  p, r = c.freeze.prune_fraction, c.freeze.lock_fraction
  assert abs(total["searchable"] / total["size"] - (1 - p - r)) < 1e-3
  assert abs(total["prune_count"] / total["size"] - c.sparsity) < 1e-3
  bits = strong.bit_accounting(layout, {})
  assert bits["dense_source_bits"] / bits["stored_bits"] == pytest.approx(
      1 / (1 - p - r), rel=1e-3)


def test_siblings_each_store_a_ticket(tmp_path):
  """With a sibling axis the experiment stores one ticket per copy: same weights and
  partition (one header), each copy's own searchable bits and BatchNorm statistics."""
  c = _config(**{"siblings.count": 2, "num_steps": 2})
  workdir = str(tmp_path / "sib")
  loop.run(c, workdir, mesh=loop.make_mesh(jax.devices()[:1]))
  for i in range(2):  # as the "strong_ticket" experiment does after the stage
    strong.write_ticket(workdir, loop.sibling_dir(workdir, i))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  found = []
  for i in range(2):
    ticket = load_strong_ticket(loop.sibling_dir(workdir, i))
    run = io.load_run(loop.sibling_dir(workdir, i))
    ours = ticket["model"].apply(ticket["variables"], x, train=False)
    theirs = ticket["model"].apply({"params": run["params"],
                                    "batch_stats": run["batch_stats"]}, x, train=False)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    found.append(_flat(ticket["masks"]))
  assert any(not np.array_equal(found[0][k], found[1][k]) for k in found[0])
