"""Siblings (seed 001): exact-count union / intersection, overlap against chance,
and the experiment end to end, vmapped and sequential."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lottery_jax import experiments, load_run
from lottery_jax import masks as mask_algebra
from lottery_jax.engine import loop
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.stages import derive
from lottery_jax.tickets import siblings as sib
from test_engine import flat, tiny_config


def _trees(seed, copies, shapes=((6, 9), (4, 5)), decimals=None):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(copies):
    t = {f"l{i}": {"kernel": rng.normal(size=s).astype(np.float32)} for i, s in enumerate(shapes)}
    if decimals is not None:   # coarse values: many exact ties
      t = jax.tree.map(lambda x: np.round(x, decimals).astype(np.float32), t)
    t["l0"]["bias"] = np.zeros(shapes[0][-1], np.float32)
    out.append(t)
  return out


def _kept(tree, where=mask_algebra.prunable):
  return sum(int(np.sum(m)) for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
             if where(p, m))


def _subset(a, b):
  return all(np.all(~np.asarray(x) | np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _top_q(params, q, n):
  """Literal per-copy masks keeping the q largest |w| over the selected leaves (ties:
  the higher global index first), written independently of `combine_by_rank`."""
  out = []
  for p in params:
    names = [k for k in sorted(p) if "kernel" in p[k]]
    flat_w = np.concatenate([np.abs(p[k]["kernel"]).ravel() for k in names])
    assert flat_w.size == n
    order = sorted(range(n), key=lambda i: (-flat_w[i], -i))
    keep = np.zeros(n, bool)
    keep[order[:q]] = True
    m = jax.tree.map(lambda x: np.ones(np.shape(x), bool), p)
    start = 0
    for k in names:
      size = p[k]["kernel"].size
      m[k]["kernel"] = keep[start:start + size].reshape(p[k]["kernel"].shape)
      start += size
    out.append(m)
  return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), copies=st.integers(1, 5),
       sparsity=st.sampled_from([0.3, 0.5, 0.8, 0.9]), ties=st.booleans())
def test_combine_hits_the_target_and_is_the_threshold_search(seed, copies, sparsity, ties):
  """The combined mask keeps exactly N - prune_count(s, N) weights and lies between
  the literal union (intersection) of per-copy top-(q-1) and top-q masks: the exact
  answer of the search over the per-copy threshold q."""
  params = _trees(seed, copies, decimals=1 if ties else None)
  n = 6 * 9 + 4 * 5
  for mode, combine in (("union", mask_algebra.union),
                        ("intersection", mask_algebra.intersection)):
    c = mask_algebra.combine_by_rank(params, sparsity, mode)
    assert c.kept == _kept(c.masks) == n - mask_algebra.prune_count(sparsity, n)
    assert np.all(c.masks["l0"]["bias"])   # unselected leaves stay kept
    if c.protected:   # a leaf kept alive by the exemption: the bounds do not apply
      continue
    q = c.per_copy_kept
    upper = combine(*_top_q(params, q, n))
    assert _subset(c.masks, upper)
    if q > 1:
      assert _subset(combine(*_top_q(params, q - 1, n)), c.masks)


def test_one_copy_is_the_global_magnitude_mask():
  (p,) = _trees(3, 1, shapes=((20, 30), (10, 12)))
  p["l1"]["kernel"] *= 1e-3   # a leaf that global magnitude would prune whole at 0.995
  for s in (0.2, 0.75, 0.95, 0.995):
    want = mask_algebra.magnitude(p, mask_algebra.allocate(p, s, "global_magnitude"))
    for mode in ("union", "intersection"):
      got = mask_algebra.combine_by_rank([p], s, mode).masks
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_combine_rejects_bad_input():
  a, b = _trees(0, 2)
  with pytest.raises(ValueError, match="mode 'mean' is unknown"):
    mask_algebra.combine_by_rank([a, b], 0.5, "mean")
  b["l1"]["kernel"] = b["l1"]["kernel"][:2]
  with pytest.raises(ValueError, match="l1/kernel"):
    mask_algebra.combine_by_rank([a, b], 0.5, "union")


def test_overlap_report_against_chance():
  params = _trees(1, 3, shapes=((40, 50),))
  m = sib.one_shot_masks(params, 0.8, mask_algebra.prunable)
  rep = sib.overlap_report([m[0], m[0]], mask_algebra.prunable)
  assert rep["mean_iou"] == 1.0
  # Chance at density d = 0.2: d / (2 - d).
  assert rep["chance_iou"] == pytest.approx(0.2 / 1.8, rel=1e-6)
  rep = sib.overlap_report(m, mask_algebra.prunable)
  assert len(rep["pairs"]) == 3
  # Independent random weights: overlap near chance (400 kept of 2000; the IoU of two
  # independent 20% masks has a standard deviation of about 0.015).
  assert abs(rep["mean_iou"] - rep["chance_iou"]) < 0.06
  assert set(rep["per_layer"]) == {"l0/kernel"}


def _config(**kw):
  """configs/siblings_quick.py shrunk: 2 siblings, a 256-image digits subset, a
  2-epoch schedule (16 steps), the (8, 16, 16) CNN of the engine tests."""
  from test_configs import load_config
  c = load_config("siblings_quick")
  assert c.siblings.count == 4 and c.siblings.vmap and c.experiment == "siblings"
  return derive(c, **{
      "num_epochs": 2.0, "sparsity": 0.7, "siblings.count": 2, "siblings.shared_epochs": 0.0,
      "model.kwargs": {"widths": (8, 16, 16)}, "data.max_train_examples": 256,
      "data.max_eval_examples": 64, "data.batch_size": 32, "checkpoint_every_steps": 4,
      "optimizer.learning_rate": 0.05, "analysis.enabled": False, "progress_bar": False,
      **kw})


def test_siblings_vmapped_equal_sequential_and_sweep(tmp_path):
  """The sweep k in (0, 1): S=2 siblings in one vmapped program; k=1 again with one
  stage per sibling gives the same weights (to float32 rounding: vmap batches the
  convolutions, 1e-5 relative after 16 steps is ~100x that) and the same masks and
  accuracies. Every field the issue lists is in summary.json."""
  swept = experiments.run(_config(**{"siblings.shared_epochs_sweep": (0.0, 1.0)}),
                          str(tmp_path / "sweep"))
  assert [r["shared_epochs"] for r in swept["sweep"]] == [0.0, 1.0]
  with open(tmp_path / "sweep" / "summary.json") as f:
    assert json.load(f)["shared_epochs"] == [0.0, 1.0]
  k0, k1 = swept["sweep"]
  for r in (k0, k1):
    assert r["vmap"] is True and len(r["per_sibling"]) == 2
    assert {"mean_iou", "chance_iou", "per_layer"} <= set(r["overlap"])
    for arm in ("union", "intersection", "one_shot"):
      assert r[arm]["sparsity"] == pytest.approx(0.7, abs=1e-3)
      assert 0.0 <= r[arm]["test_accuracy"] <= 1.0
  # k = 0: both copies start from the same initialisation; k = 1 forks the shared stage.
  k0_dir = tmp_path / "sweep" / "k0"
  assert not (k0_dir / "shared").exists() and (tmp_path / "sweep" / "k1" / "shared").exists()
  init = load_run(str(k0_dir / "one_shot_s0.7"))   # exists: retrained from the init
  assert init["params"]
  # Every k's siblings trained, and its overlap.json written, before any retraining.
  for r in (k0, k1):
    d = tmp_path / "sweep" / f"k{r['shared_epochs']:g}"
    with open(d / "overlap.json") as f:
      written = json.load(f)
    assert written["by_sparsity"][0]["overlap"] == r["overlap"]
    assert written["per_sibling_test_accuracy"] == [p["test_accuracy"] for p in r["per_sibling"]]
  assert (os.stat(tmp_path / "sweep" / "k1" / "overlap.json").st_mtime_ns
          < os.stat(k0_dir / "union_s0.7" / "summary.json").st_mtime_ns)

  seq = experiments.run(_config(**{"siblings.shared_epochs": 1.0, "siblings.vmap": False}),
                        str(tmp_path / "seq"))
  assert seq["vmap"] is False
  for i in range(2):
    a = load_run(str(tmp_path / "sweep" / "k1" / k1["per_sibling"][i]["workdir"]))
    b = load_run(str(tmp_path / "seq" / seq["per_sibling"][i]["workdir"]))
    for part in ("params", "batch_stats"):
      fa, fb = flat(a[part]), flat(b[part])
      for k in fa:
        np.testing.assert_allclose(fb[k], fa[k], rtol=1e-5, atol=1e-6, err_msg=f"{i} {k}")
  for arm in ("union", "intersection", "one_shot"):
    ma = flat(load_run(str(tmp_path / "sweep" / "k1" / k1[arm]["workdir"]))["masks"])
    mb = flat(load_run(str(tmp_path / "seq" / seq[arm]["workdir"]))["masks"])
    for k in ma:
      np.testing.assert_array_equal(ma[k], mb[k], err_msg=f"{arm} {k}")
  assert seq["overlap"]["mean_iou"] == pytest.approx(k1["overlap"]["mean_iou"], abs=1e-9)

  # Re-running finds every stage finished: nothing retrained.
  stamp = os.stat(tmp_path / "seq" / "union_s0.7" / "summary.json").st_mtime_ns
  again = experiments.run(_config(**{"siblings.shared_epochs": 1.0, "siblings.vmap": False}),
                          str(tmp_path / "seq"))
  assert again["union"] == seq["union"]
  assert os.stat(tmp_path / "seq" / "union_s0.7" / "summary.json").st_mtime_ns == stamp


@pytest.mark.parametrize("field,value,match", [
    ("siblings.count", 1, r"siblings\.count=1"),
    ("siblings.retrain_from", "theta", r"siblings\.retrain_from='theta'"),
    ("siblings.sparsities", (0.5, 1.2), r"siblings\.sparsities"),
    ("siblings.shared_epochs", -1.0, r"siblings\.shared_epochs=-1\.0"),
])
def test_bad_sibling_settings_name_the_field(tmp_path, field, value, match):
  with pytest.raises(ConfigError, match=match):
    experiments.run(_config(**{field: value}), str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()


def test_mask_source_file_must_fit(tmp_path):
  """A stage's `mask.source` may be a packed-masks file; one for another model fails
  with a message naming it."""
  from lottery_jax.engine import io
  bad = tmp_path / "m.safetensors"
  io.save_masks(str(bad), {"params": {"other": {"kernel": np.ones((3, 3), bool)}}})
  cfg = derive(tiny_config(num_steps=2), **{"mask.program": "given", "mask.source": str(bad)})
  cfg.model.kwargs = {"widths": (8, 16, 16)}
  with pytest.raises(ValueError, match=str(bad)):
    loop.run(cfg, str(tmp_path / "run"))


def test_sibling_configs():
  """configs/siblings_quick.py runs end to end in the tests above (shrunk); the sweep
  and the ResNet-20 configs validate and pass the experiment's checks."""
  from lottery_jax.engine import config as config_lib
  from lottery_jax.experiments import siblings as sib_exp
  from test_configs import load_config
  m1d = load_config("siblings_sweep", "mnist1d")
  assert m1d.model.name == "mnist1d_cnn" and m1d.data.name == "mnist1d"
  for c in (load_config("siblings_sweep"), m1d,
            load_config("siblings_resnet20_cifar10", "folder=/nonexistent")):
    config_lib.validate(c)
    sib_exp._check(c)
    assert len(c.siblings.shared_epochs_sweep) >= 4
  r20 = load_config("siblings_resnet20_cifar10", "folder=/x")
  assert r20.siblings.count == 10 and len(r20.siblings.sparsities) == 10
  assert r20.siblings.sparsities[-1] == pytest.approx(1 - 0.8 ** 10, abs=1e-6)
  assert r20.model.name == "cifar_resnet20" and r20.optimizer.milestones == (80, 120)
  # `,subset`: the reduced CIFAR-10 scale of benchmarks/siblings_results.py.
  sub = load_config("siblings_resnet20_cifar10", "folder=/x.zip,subset")
  config_lib.validate(sub)
  sib_exp._check(sub)
  assert sub.data.path == "/x.zip" and sub.model.kwargs.widths == (4, 8, 16)
  assert sub.siblings.count == 4 and sub.siblings.shared_epochs_sweep[0] == 0.0
  assert max(sub.siblings.shared_epochs_sweep) < sub.num_epochs
  assert sub.optimizer.milestones == (0.5 * sub.num_epochs, 0.75 * sub.num_epochs)
  with pytest.raises(ValueError, match="unknown"):
    load_config("siblings_resnet20_cifar10", "subset,nonsense")
  # `,epochs=E`: the subset scale's length, its milestones at 50% and 75% of it.
  e5 = load_config("siblings_resnet20_cifar10", "folder=/x.zip,subset,epochs=5")
  assert e5.num_epochs == 5.0 and e5.optimizer.milestones == (2.5, 3.75)
  assert e5.data.path == "/x.zip"
  for bad, what in (("folder=/x.zip,epochs=5", "add ',subset'"),
                    ("subset,epochs=0", "E > 0"), ("subset,epochs=five", "E > 0")):
    with pytest.raises(ValueError, match=what):
      load_config("siblings_resnet20_cifar10", bad)


def test_unrolled_convs_under_vmap():
  """model.conv="unrolled": under vmap one ordinary convolution per copy (forward and
  both gradients) instead of one grouped convolution; without vmap the same ops as
  XLA's convolution (bitwise), under vmap the same values (a grouped conv sums each
  copy's products in the same order as a plain one; compared to 1e-6 relative)."""
  import jax.numpy as jnp
  from lottery_jax.models import conv
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4, 5))

  def loss(impl):
    def f(x, w):
      y = conv.conv_general_dilated(x, w, (2, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), impl=impl)
      return jnp.sum(y ** 2)
    return f

  for i in range(3):
    a = jax.grad(loss("xla"), argnums=(0, 1))(x[i], w[i])
    b = jax.grad(loss("unrolled"), argnums=(0, 1))(x[i], w[i])
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
  grouped = jax.jit(jax.vmap(jax.grad(loss("xla"), argnums=(0, 1))))
  unrolled = jax.jit(jax.vmap(jax.grad(loss("unrolled"), argnums=(0, 1))))
  for u, v in zip(grouped(x, w), unrolled(x, w)):
    np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-5)
  text = unrolled.lower(x, w).compile().as_text()
  assert "feature_group_count=3" not in text and "batch_group_count=3" not in text
  assert text.count(" convolution(") == 3 * 3   # forward, dx, dw per copy
  grouped_text = grouped.lower(x, w).compile().as_text()
  assert "feature_group_count=3" in grouped_text or "batch_group_count=3" in grouped_text


@pytest.mark.parametrize("name", ["dense", "jackpot"])
def test_im2col_siblings_equal_sequential_xla_copies(name):
  """The conv lowering "im2col" (patches + matmul, a batched GEMM per conv under the
  sibling axis's vmap; measured in benchmarks/siblings.py, not a config option): two
  siblings in one vmapped step end where two separate single-copy steps with XLA's
  convolution end: masks exactly, floats to float32 rounding. Each conv output of
  the test CNN (widths 4, 8, 8) is a sum of at most 9 * 8 = 72 products, which two
  summation orders give to within 2 * gamma_72 ~ 9e-6 of the sum of |products| (and
  typically ~sqrt(72) * 2^-24 ~ 5e-7); three SGD steps carry that into the weights
  (the same 1e-5 / 1e-6 as the other vmap-against-sequential comparisons of the step)."""
  from lottery_jax.engine.step import make_train_step
  from test_programs import _batches, _run, _setup, assert_each_copy_matches, stack_copies
  model, tx, program, layout, state = _setup(name)
  single = make_train_step(model, tx, program, layout, conv_impl="xla")
  batched = make_train_step(model, tx, program, layout, siblings=2, conv_impl="im2col")
  data = [_batches(3, key=3), _batches(3, key=4)]
  stacked_state, stacked = stack_copies(state, data)
  x = stacked[0]["image"]
  text = batched.lower(stacked_state, stacked[0]).compile().as_text()
  assert " convolution(" not in text and x.shape[0] == 2
  both, _ = _run(batched, stacked_state, stacked)
  assert_each_copy_matches(single, state, data, both)


def test_model_conv_names_only_the_offered_lowerings():
  """config.model.conv: "im2col" (measured slower for siblings, BENCHMARKS.md) and
  unknown names are refused, naming the field and the choices."""
  from lottery_jax.engine import config as config_lib
  for bad in ("im2col", "patches", "gemm"):
    c = tiny_config()
    c.model.conv = bad
    with pytest.raises(ConfigError, match=r"config\.model\.conv='%s'.*xla.*torch.*unrolled"
                       % bad):
      config_lib.validate(c)
