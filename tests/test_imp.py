"""Lottery tickets on the engine (issue 13): IMP with rewinding and its controls,
ticket vs re-init vs prune & fine-tune, weight correlation.

The invariants of IMP, each pinned here:
* pruned weights are exactly zero at every step of every stage (every step is
  checkpointed in the end-to-end run and read back);
* the masks of level k+1 are a subset of those of level k;
* level L prunes exactly `masks.prune_count(1 - (1 - p)^L, n)` weights: floor(s * n),
  snapped to the nearest integer within float rounding, capped at n - 1; n is each
  leaf (layerwise) or the pool of prunable leaves (global);
* a rewound stage starts from bitwise the saved rewind weights;
* SIGKILL during level 2, then the same command again, ends bitwise where an
  uninterrupted run ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from lottery_jax import experiments, load_run
from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import loop, programs
from lottery_jax.engine.checkpoint import Checkpointer
from lottery_jax.engine.errors import CheckpointMismatchError, ConfigError
from lottery_jax.experiments.tickets import imp_stages, reinit_seed, ticket_vs_finetune_stages
from lottery_jax.tickets.correlation import pearson, weight_correlation
from lottery_jax.tickets.imp import classifier_predicate, imp_masks, level_sparsity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = jax.device_count()   # 8 under tests/conftest.py


def load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs",
                                                                   name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


# A shrunk configs/imp_quick.py (same model family, data and schedule, fewer of each).
SHRINK = {"model.kwargs.widths": (8, 16, 16), "data.batch_size": 32,
          "data.eval_batch_size": 128, "data.max_train_examples": 256,
          "data.max_eval_examples": 200, "num_steps": 12, "log_every_steps": 4,
          "checkpoint_every_steps": 4, "optimizer.learning_rate": 0.05,
          "imp.levels": 2, "imp.rewind_step": 3}


def tiny_imp(**overrides):
  c = load_config("imp_quick")
  c.update_from_flattened_dict({**SHRINK, **overrides})
  return c


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _where(config):
  return programs.prunable_where(config, models.spec(config.model.name).classifier)


def _pruned(masks, where):
  return {mask_algebra.path_str(p): int(np.size(m) - np.count_nonzero(m))
          for p, m in jax.tree_util.tree_flatten_with_path(masks)[0] if where(p, m)}


# The two long end-to-end tests sit first and last, so that pytest-xdist's first
# batches put them on different workers.
# ------------------------------------------------------------- IMP end to end
def _rewind_state(stage_dir, step):
  ckpt = Checkpointer(os.path.join(stage_dir, "rewind"), keep=None, create=False)
  try:
    return ckpt.restore_host(step)
  finally:
    ckpt.close()


def _every_step_has_zero_pruned_weights(stage_dir, final_masks, first_step, last_step):
  ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=None, create=False)
  try:
    steps = ckpt.all_steps()
    assert steps == list(range(first_step, last_step + 1)), (stage_dir, steps)
    want = flat(final_masks)
    for step in steps:
      state, _, _ = ckpt.restore_host(step)
      masks, params = flat(state["masks"]), flat(state["params"])
      for k, m in masks.items():
        np.testing.assert_array_equal(m, want[k], err_msg=f"{stage_dir} step {step} {k}")
        assert not np.any(params[k][~m]), f"{stage_dir} step {step}: {k} pruned != 0"
  finally:
    ckpt.close()


def test_imp_quick_end_to_end_invariants_and_sigkill_resume(tmp_path):
  """configs/imp_quick.py shrunk (2 levels, rewind to step 3, both controls), every
  step checkpointed and read back; then the same config through `lottery_jax.main`,
  SIGKILLed in level 2 and run again, ends bitwise where this run ended. (One test:
  the uninterrupted run is shared, and every stage costs seconds of compilation.)"""
  c = tiny_imp(checkpoint_every_steps=1, keep_checkpoints=1000)
  workdir = str(tmp_path / "straight")
  summary = experiments.run(c, workdir)
  stages = {s.name: s.config for s in imp_stages(c, workdir)}
  assert list(stages) == ["level_0", "level_1", "reinit_1", "random_1", "level_2",
                          "reinit_2", "random_2"]
  where = _where(c)
  k = 3
  runs = {name: load_run(os.path.join(workdir, name)) for name in stages}

  # Pruned weights are exactly zero at every step of every stage.
  for name in stages:
    first = 1 if name == "level_0" else k + 1
    _every_step_has_zero_pruned_weights(os.path.join(workdir, name), runs[name]["masks"],
                                        first, 12)

  # Masks only shrink; counts follow the closed form over the global pool.
  n_pool = sum(int(np.size(w)) for p, w in
               jax.tree_util.tree_flatten_with_path(runs["level_0"]["params"])[0]
               if where(p, w))
  previous = runs["level_0"]["masks"]
  for level in (1, 2):
    masks = runs[f"level_{level}"]["masks"]
    for k_, m in flat(masks).items():
      assert not np.any(m & ~flat(previous)[k_]), f"level {level} revived {k_}"
    assert sum(_pruned(masks, where).values()) == mask_algebra.prune_count(
        level_sparsity(0.5, level), n_pool)
    # Controls: the re-init keeps the level's mask; random pruning keeps its per-leaf
    # counts with another mask.
    for k_, m in flat(runs[f"reinit_{level}"]["masks"]).items():
      np.testing.assert_array_equal(m, flat(masks)[k_])
    assert _pruned(runs[f"random_{level}"]["masks"], where) == _pruned(masks, where)
    assert any(np.any(a != b) for a, b in zip(
        flat(runs[f"random_{level}"]["masks"]).values(), flat(masks).values()))
    previous = masks

  # A rewound stage (and the random-pruning control) starts from bitwise the saved
  # rewind weights under its mask; the re-init from fresh weights at the same step.
  saved, data_state, _ = _rewind_state(os.path.join(workdir, "level_0"), k)
  assert data_state["step"] == k
  for name in ("level_2", "reinit_2"):
    r = loop.build(stages[name], loop.make_mesh())
    start = jax.device_get(r.state)
    assert int(start.step) == k
    masks = flat(start.masks)
    for key, w in flat(saved["params"]).items():
      if name == "reinit_2" and key.endswith("['kernel']"):
        assert not np.array_equal(flat(start.params)[key], np.where(masks[key], w, 0))
      elif name != "reinit_2":
        np.testing.assert_array_equal(flat(start.params)[key], np.where(masks[key], w, 0))
    if name != "reinit_2":
      for key, v in flat(saved["batch_stats"]).items():
        np.testing.assert_array_equal(flat(start.batch_stats)[key], v)
    assert all(not np.any(x) for x in jax.tree.leaves(start.opt_state) if np.ndim(x) > 0)
    counts = [x.count for x in jax.tree.leaves(
        start.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(x, optax.ScaleByScheduleState)]
    assert counts and all(int(n) == k for n in counts)   # the schedule goes on from k
  assert stages["reinit_2"].seed == reinit_seed(c.seed)
  assert stages["reinit_2"].data.seed == c.seed   # the same data order as the ticket

  # summary.json: the fields issue 13 lists.
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["levels"] == summary["levels"]
  assert [set(r) for r in on_disk["levels"]] == [
      {"level", "sparsity", "test_accuracy", "workdir"}] * 3
  assert [r["level"] for r in on_disk["levels"]] == [0, 1, 2]
  assert [r["workdir"] for r in on_disk["levels"]] == ["level_0", "level_1", "level_2"]
  assert on_disk["levels"][2]["sparsity"] == pytest.approx(
      mask_algebra.prune_count(0.75, n_pool) / n_pool)
  for kind in ("reinit", "random_prune"):
    assert [set(r) for r in on_disk["controls"][kind]] == [
        {"level", "sparsity", "test_accuracy"}] * 2
  corr = on_disk["correlation"]
  assert {"all", "kept", "per_layer"} <= set(corr)
  assert -1 <= corr["all"] <= 1 and -1 <= corr["kept"] <= 1
  assert set(corr["per_layer"]) == {"conv0/kernel", "conv1/kernel", "conv2/kernel",
                                    "classifier/kernel"}

  # Stage configs hold only what the stage depends on: more levels (or no controls)
  # name the same stages, which a re-run then skips as finished.
  more = {s.name: s.config for s in imp_stages(
      tiny_imp(**{"imp.levels": 3, "imp.controls": False}), workdir)}
  assert list(more) == ["level_0", "level_1", "level_2", "level_3"]
  for name in ("level_0", "level_1", "level_2"):
    assert config_lib.differences(json.loads(config_lib.to_json(more[name])),
                                  json.loads(config_lib.to_json(stages[name]))) == []

  # The layerwise scope and the half-rate classifier: the registered program's layout
  # on level 0's finished run (what loop.build would compute, without compiling).
  lw = tiny_imp(**{"mask.program": "imp", "mask.source": os.path.join(workdir, "level_0"),
                   "imp.levels": 1, "imp.scope": "layerwise", "imp.prune_fraction": 0.3,
                   "prune_classifier": True, "imp.classifier_half_rate": True})
  dense = runs["level_0"]
  ctx = programs.Context(config=lw, params=dense["params"], where=_where(lw),
                         key=jax.random.PRNGKey(0), source=dense)
  layout = programs.get_program(lw, total_steps=12).layout(ctx)
  counts, sizes = flat(layout.prune_counts), flat(dense["params"])
  for key, n in counts.items():
    if key.endswith("['kernel']"):
      rate = 0.15 if "classifier" in key else 0.3
      assert n == mask_algebra.prune_count(rate, sizes[key].size), key

  _sigkill_during_level_2_then_rerun(tmp_path / "straight", tmp_path / "killed")


def _main(workdir, *extra):
  cmd = [sys.executable, "-m", "lottery_jax.main", f"--config={REPO}/configs/imp_quick.py",
         f"--workdir={workdir}", *extra]
  env = dict(os.environ,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
  return cmd, env


def _flags(overrides: dict) -> list[str]:
  out = []
  for k, v in overrides.items():
    out.append(f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}")
  return out


def _sigkill_during_level_2_then_rerun(straight, killed):
  """The same command after a SIGKILL in level 2 resumes that stage from its last
  checkpoint and ends bitwise where the uninterrupted run `straight` ended."""
  overrides = {**SHRINK, "imp.controls": False, "checkpoint_every_steps": 1}
  cmd, env = _main(killed, *_flags(overrides))
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = killed / "level_2" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and any(s.isdigit() and int(s) >= 5 for s in os.listdir(ckpts)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / "level_1" / "summary.json").exists()
  assert not (killed / "level_2" / "summary.json").exists()
  out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "level_1: finished already" in out.stderr
  assert "resumed from" in out.stderr

  for stage in ("level_0", "level_1", "level_2"):
    a, b = load_run(str(straight / stage)), load_run(str(killed / stage))
    for part in ("masks", "params", "batch_stats"):
      fa, fb = flat(a[part]), flat(b[part])
      assert fa.keys() == fb.keys()
      for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{stage} {part} {k}")
  sa = json.load(open(straight / "summary.json"))
  sb = json.load(open(killed / "summary.json"))
  assert sa["levels"] == sb["levels"] and sa["correlation"] == sb["correlation"]


# ------------------------------------------------------------------ the mask rule
def _random_tree(rng, shapes):
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in shapes.items()}


SHAPES = {"conv0": {"kernel": (3, 3, 1, 8)}, "conv1": {"kernel": (3, 3, 8, 16)},
          "classifier": {"kernel": (16, 10), "bias": (10,)}}


def _params(rng):
  return {k: _random_tree(rng, v) for k, v in SHAPES.items()}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_imp_masks_shrink_with_exact_closed_form_counts(scope, p):
  """Five levels, each ranking fresh 'final weights': every level's mask is a subset
  of the previous one, and the counts are prune_count(1-(1-p)^L, n) per leaf
  (layerwise) or over the pool (global)."""
  rng = np.random.default_rng(0)
  where = mask_algebra.prunable_except("classifier")
  masks = jax.tree.map(lambda w: np.ones(w.shape, bool), _params(rng))
  for level in range(1, 6):
    final = jax.tree.map(lambda w, m: np.where(m, w, 0), _params(rng), masks)
    new = imp_masks(final, masks, where, level=level, prune_fraction=p, scope=scope)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(masks)):
      assert not np.any(a & ~b), "a weight revived"
    s = level_sparsity(p, level)
    counts = _pruned(new, where)
    if scope == "layerwise":
      for name, shape in (("conv0/kernel", (3, 3, 1, 8)), ("conv1/kernel", (3, 3, 8, 16))):
        assert counts[name] == mask_algebra.prune_count(s, int(np.prod(shape)))
    else:
      assert sum(counts.values()) == mask_algebra.prune_count(s, 72 + 1152)
      # The newly pruned are the smallest survivors of the pool (|final w|).
      newly = np.concatenate([np.abs(final[k]["kernel"])[b["kernel"] & ~a["kernel"]]
                              for k, a, b in ((k, new[k], masks[k]) for k in
                                              ("conv0", "conv1"))])
      kept = np.concatenate([np.abs(final[k]["kernel"])[new[k]["kernel"]]
                             for k in ("conv0", "conv1")])
      if newly.size:
        assert newly.max() <= np.sort(kept)[2]  # below all but each leaf's protected top
    assert np.all(new["classifier"]["kernel"]) and np.all(new["classifier"]["bias"])
    masks = new


def test_classifier_pruned_on_its_own_at_half_the_rate():
  rng = np.random.default_rng(1)
  params = _params(rng)
  where = mask_algebra.prunable
  masks = jax.tree.map(lambda w: np.ones(w.shape, bool), params)
  for level in (1, 2, 3):
    masks = imp_masks(params, masks, where, level=level, prune_fraction=0.4,
                      own_fractions=[(classifier_predicate(("classifier",)), 0.2)])
    counts = _pruned(masks, where)
    assert counts["classifier/kernel"] == mask_algebra.prune_count(
        level_sparsity(0.2, level), 160)
    assert counts["conv0/kernel"] + counts["conv1/kernel"] == mask_algebra.prune_count(
        level_sparsity(0.4, level), 72 + 1152)
    assert np.all(masks["classifier"]["bias"])


def test_layer_fractions_prune_matching_leaves_on_their_own():
  """Frankle & Carbin's Conv-2/4/6 rule: conv layers at 10%, the rest at p."""
  c = tiny_imp(**{"imp.layer_fractions": (("conv", 0.1),), "imp.prune_fraction": 0.2,
                  "prune_classifier": True})
  config_lib.validate(c)
  from lottery_jax.tickets.imp import own_fractions
  rng = np.random.default_rng(5)
  params = _params(rng)
  where = mask_algebra.prunable
  masks = jax.tree.map(lambda w: np.ones(w.shape, bool), params)
  for level in (1, 2):
    masks = imp_masks(params, masks, where, level=level, prune_fraction=0.2,
                      own_fractions=own_fractions(c))
    counts = _pruned(masks, where)
    assert counts["conv0/kernel"] == mask_algebra.prune_count(level_sparsity(0.1, level), 72)
    assert counts["conv1/kernel"] == mask_algebra.prune_count(level_sparsity(0.1, level),
                                                              1152)
    assert counts["classifier/kernel"] == mask_algebra.prune_count(
        level_sparsity(0.2, level), 160)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_fresh_optimiser_after_a_rewind_continues_the_schedule(name):
  """open_lth rewinds weights, not the schedule: the first step after a fork at step k
  with `start.optimizer=False` uses the learning rate of step k, with fresh buffers."""
  import ml_collections
  from lottery_jax.engine.optim import (continue_schedules, learning_rate_schedule,
                                        make_optimizer)
  cfg = ml_collections.ConfigDict({"name": name, "learning_rate": 0.1, "momentum": 0.0,
                                   "weight_decay": 0.0, "schedule": "cosine"})
  tx = make_optimizer(cfg, total_steps=100, steps_per_epoch=10)
  params = {"w": np.ones(3, np.float32)}
  state = continue_schedules(tx.init(params), 40)
  updates, _ = tx.update({"w": np.ones(3, np.float32)}, state, params)
  lr = float(learning_rate_schedule(cfg, 100, 10)(40))
  if name == "sgd":
    np.testing.assert_allclose(updates["w"], -lr, rtol=1e-6)
  else:   # Adam's first step from fresh moments is lr * sign(g)
    np.testing.assert_allclose(updates["w"], -lr, rtol=1e-4)


def test_imp_refuses_a_source_that_is_not_the_previous_level():
  rng = np.random.default_rng(2)
  params = _params(rng)
  where = mask_algebra.prunable_except("classifier")
  level3 = jax.tree.map(lambda w: np.ones(w.shape, bool), params)
  for level in (1, 2, 3):
    level3 = imp_masks(params, level3, where, level=level, prune_fraction=0.5)
  with pytest.raises(CheckpointMismatchError, match="must be level 1 of this IMP"):
    imp_masks(params, level3, where, level=2, prune_fraction=0.5)
  with pytest.raises(ValueError, match="would empty a leaf"):
    imp_masks(params, level3, where, level=40, prune_fraction=0.5)


def test_random_program_copies_the_sources_per_leaf_counts():
  c = tiny_imp(**{"mask.program": "random", "mask.source": "/a/finished/run"})
  rng = np.random.default_rng(3)
  params = _params(rng)
  where = mask_algebra.prunable_except("classifier")
  source = imp_masks(params, jax.tree.map(lambda w: np.ones(w.shape, bool), params), where,
                     level=3, prune_fraction=0.5, scope="layerwise")
  program = programs.get_program(c, total_steps=10)
  ctx = programs.Context(config=c, params=params, where=where, key=jax.random.PRNGKey(0),
                         source={"params": params, "masks": source})
  layout = program.layout(ctx)
  masks, _ = program.init(ctx, layout)
  assert _pruned(jax.device_get(masks), where) == _pruned(source, where)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(jax.device_get(masks)),
                                            jax.tree.leaves(source)))


def test_weight_correlation():
  rng = np.random.default_rng(4)
  t0 = _params(rng)
  noise = _params(rng)
  tT = jax.tree.map(lambda a, b: a + 0.5 * b, t0, noise)
  where = mask_algebra.prunable
  masks = mask_algebra.magnitude(tT, 0.5, where)
  out = weight_correlation(t0, tT, masks, where)
  w0 = np.concatenate([t0[k]["kernel"].ravel() for k in ("classifier", "conv0", "conv1")])
  wT = np.concatenate([tT[k]["kernel"].ravel() for k in ("classifier", "conv0", "conv1")])
  assert out["all"] == pytest.approx(np.corrcoef(w0, wT)[0, 1], abs=1e-12)
  m = np.asarray(masks["conv1"]["kernel"])
  assert out["per_layer"]["conv1/kernel"]["kept"] == pytest.approx(
      np.corrcoef(t0["conv1"]["kernel"][m], tT["conv1"]["kernel"][m])[0, 1], abs=1e-12)
  assert set(out["per_layer"]) == {"classifier/kernel", "conv0/kernel", "conv1/kernel"}
  same = weight_correlation(t0, t0, mask_algebra.magnitude(t0, 0.5, where), where)
  assert same["all"] == pytest.approx(1.0) and same["top_overlap"]["iou"] == 1.0
  assert pearson([1, 1, 1], [1, 2, 3]) is None


# ------------------------------------------------------------------- bad configs
BAD = [
    ({"imp.levels": 0}, "config.imp.levels=0 is invalid for experiment 'imp'"),
    ({"imp.prune_fraction": 1.0}, "config.imp.prune_fraction=1.0 is invalid"),
    ({"imp.prune_fraction": 0.0}, "config.imp.prune_fraction=0.0 is invalid"),
    ({"imp.scope": "per_layer"}, "config.imp.scope='per_layer' is invalid"),
    ({"imp.rewind_step": -1}, "config.imp.rewind_step=-1 is invalid"),
    ({"imp.rewind_step": 12}, "config.imp.rewind_step=12 is invalid.*12-step schedule"),
    ({"imp.rewind_step": 2, "imp.rewind_epoch": 1.0}, "config.imp.rewind_epoch=1.0"),
    ({"imp.rewind_step": 0, "imp.rewind_epoch": 2.0}, "config.imp.rewind_epoch=2.0 is inv"
     "alid.*step 16"),
    ({"imp.classifier_half_rate": True}, "config.imp.classifier_half_rate=True"),
    ({"imp.layer_fractions": (("conv", 1.5),)}, "config.imp.layer_fractions=.* is invalid"),
    ({"siblings.count": 2}, "config.siblings.count=2 is invalid for experiment 'imp'"),
    ({"experiment": "ticket_vs_finetune"}, "config.sparsity=0.0 is invalid for experiment "
     "'ticket_vs_finetune'"),
    ({"experiment": "ticket_vs_finetune", "sparsity": 0.5,
      "ticket_vs_finetune.learning_rates": (0.1, -0.1)},
     r"config.ticket_vs_finetune.learning_rates=\(0.1, -0.1\) is invalid"),
    ({"experiment": "train", "mask.program": "imp"},
     "config.mask.source='' is invalid for mask program 'imp'"),
    ({"experiment": "train", "mask.program": "imp", "mask.source": "/x", "imp.levels": 0},
     "config.imp.levels=0 is invalid for mask program 'imp'"),
    ({"experiment": "train", "mask.program": "imp", "mask.source": "/x", "sparsity": 0.3},
     "config.sparsity=0.3 is invalid for mask program 'imp' at level 2"),
    ({"experiment": "train", "mask.program": "random"},
     "config.sparsity=0.0 is invalid for mask program 'random'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, overrides, message):
  c = tiny_imp()
  with c.unlocked():
    c.update_from_flattened_dict(overrides)
  with pytest.raises(ConfigError, match=message):
    experiments.run(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_fields_added_since_a_run_at_their_defaults_do_not_block_its_resume():
  now = json.loads(config_lib.to_json(tiny_imp()))
  old = {k: v for k, v in now.items()
         if not k.startswith(("imp.", "ticket_vs_finetune.", "start.weights"))}
  # tiny_imp sets imp.* away from the defaults: those are differences, the rest not.
  assert {d.split(":")[0] for d in config_lib.differences(old, now)} == {
      "imp.levels", "imp.prune_fraction", "imp.rewind_step"}
  defaults = json.loads(config_lib.to_json(config_lib.base_config()))
  old = {k: v for k, v in defaults.items() if not k.startswith(("imp.", "start.weights"))}
  assert config_lib.differences(old, defaults) == []


# ------------------------------------------------------------------ CIFAR configs
CIFAR = [("imp_conv_cifar10", "conv2"), ("imp_conv_cifar10", "conv4"),
         ("imp_conv_cifar10", "conv6"), ("imp_conv_cifar10", "conv2,subset"),
         ("imp_resnet20_cifar10", ""), ("imp_resnet20_cifar10", "subset"),
         ("ticket_vs_finetune_cifar10", "vgg19"),
         ("ticket_vs_finetune_cifar10", "mobilenet_v2"),
         ("ticket_vs_finetune_cifar10", "conv2"),
         ("ticket_vs_finetune_cifar10", "conv2,subset"),
         ("ticket_vs_finetune_cifar10", "mobilenet_v2,subset")]


def test_imp_resnet20_cifar10_subset_is_the_reduced_late_rewinding_scale():
  """`,subset` shortens open_lth's recipe (benchmarks/imp_results.py's ResNet-20 runs)
  and keeps what makes it this config: SGD 0.1 with step decay at the same fractions of
  training, global pruning with the classifier, late rewinding, both controls."""
  full = load_config("imp_resnet20_cifar10", "")
  c = load_config("imp_resnet20_cifar10", "folder=/x.zip,subset")
  assert c.data.path == "/x.zip" and c.data.augment
  assert c.num_epochs == 4.0 and c.optimizer.milestones == (2.0, 3.0)
  assert [m / c.num_epochs for m in c.optimizer.milestones] == [
      m / full.num_epochs for m in full.optimizer.milestones]
  assert (c.imp.levels, c.imp.prune_fraction, c.imp.rewind_step) == (3, 0.5, 20)
  assert c.imp.scope == "global" and c.prune_classifier and c.imp.controls
  assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (0.1, 1e-4)


def test_ticket_vs_finetune_cifar10_subset_is_the_reduced_scale_of_every_net():
  """`,subset` (the reduced scale of benchmarks/imp_results.py) keeps each net's
  sparsity, batch and augmentation and the 3-rate sweep, with equal dense and sparse
  budgets; an unknown net fails and names the choices."""
  with pytest.raises(ValueError, match="expected one of"):
    load_config("ticket_vs_finetune_cifar10", "vgg16,subset")
  c = load_config("ticket_vs_finetune_cifar10", "conv2,folder=/x.zip,subset")
  assert c.ticket_vs_finetune.learning_rates == (0.01, 0.03, 0.1)
  assert c.num_epochs == c.ticket_vs_finetune.sparse_epochs == 3.0
  assert c.data.augment is False and c.data.batch_size == 60
  for net, model, sparsity in (("vgg19", "jackpot_vgg19", 0.8),
                               ("mobilenet_v2", "cifar_mobilenet_v2", 0.5)):
    full = load_config("ticket_vs_finetune_cifar10", net)
    c = load_config("ticket_vs_finetune_cifar10", f"{net},folder=/x.zip,subset")
    assert c.model.name == full.model.name == model and c.sparsity == sparsity
    assert c.data.augment and c.data.batch_size == full.data.batch_size == 128
    assert c.num_epochs == c.ticket_vs_finetune.sparse_epochs == 1.0
    assert c.ticket_vs_finetune.learning_rates == (0.01, 0.03, 0.1)


@pytest.mark.parametrize("name,arg", CIFAR, ids=[f"{n}:{a}" for n, a in CIFAR])
def test_cifar_configs_build_on_tiny_data(tmp_path, name, arg):
  """Every stage validated and its mask program built (on mock CIFAR-10), the model
  traced on CIFAR-shaped input, and for IMP the level-1 masks of the config's
  pruning rule on weights of the model's shapes."""
  import jax.numpy as jnp
  import tensorflow_datasets as tfds
  from lottery_jax.engine.stages import validate
  c = load_config(name, arg)
  with tfds.testing.mock_data(num_examples=1024):
    make = imp_stages if c.experiment == "imp" else ticket_vs_finetune_stages
    stages = make(c, str(tmp_path))
  validate(stages)
  if c.experiment == "imp":
    assert len(stages) == 1 + 3 * c.imp.levels
  else:
    assert len(stages) == 4 * len(c.ticket_vs_finetune.learning_rates) >= 12
  model = models.get(c.model.name, num_classes=10, **c.model.kwargs.to_dict())
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.PRNGKey(0))
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 10)
  if c.experiment != "imp":
    return
  from lottery_jax.tickets.imp import own_fractions
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32),
                        variables["params"])
  where = _where(c)
  ones = jax.tree.map(lambda w: np.ones(w.shape, bool), params)
  masks = imp_masks(params, ones, where, level=1, prune_fraction=c.imp.prune_fraction,
                    scope=c.imp.scope, own_fractions=own_fractions(c))
  counts = _pruned(masks, where)
  assert "fc3/kernel" in counts or "fc/kernel" in counts   # the classifier is pruned
  if c.imp.scope == "layerwise":
    sizes = {mask_algebra.path_str(p): w.size
             for p, w in jax.tree_util.tree_flatten_with_path(params)[0]}
    own = dict(c.imp.layer_fractions)   # the conv nets: ("conv", q_conv), ("fc3", q_out)
    for leaf, n in counts.items():
      q = next((own[pat] for pat in own if pat in leaf), c.imp.prune_fraction)
      assert n == mask_algebra.prune_count(q, sizes[leaf]), leaf


# ------------------------------------------------------------ ticket vs finetune
def test_ticket_vs_finetune_quick_end_to_end(tmp_path):
  """configs/ticket_vs_finetune_quick.py shrunk to two learning rates: one mask for
  the three arms; the ticket starts from theta_0, prune & fine-tune from theta_T, the
  re-init from fresh weights; the correlation per learning rate."""
  c = load_config("ticket_vs_finetune_quick")
  c.update_from_flattened_dict({k: v for k, v in SHRINK.items() if not k.startswith("imp")})
  c.num_steps = 6
  c.sparsity = 0.8
  c.ticket_vs_finetune.learning_rates = (0.01, 0.1)
  workdir = str(tmp_path)
  summary = experiments.run(c, workdir)
  rows = summary["by_learning_rate"]
  assert [r["learning_rate"] for r in rows] == [0.01, 0.1]
  stages = {s.name: s.config for s in ticket_vs_finetune_stages(c, workdir)}
  for r in rows:
    assert r["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert {"all", "kept", "per_layer", "top_overlap"} <= set(r["correlation"])
    for key in ("dense_test_accuracy", "ticket", "reinit", "finetune"):
      assert 0 <= r[key] <= 1
  for r in rows[:1]:   # the starting points, for one learning rate
    d = os.path.join(workdir, r["workdir"])
    assert stages[f"{r['workdir']}/pretrain"].optimizer.learning_rate == r["learning_rate"]
    arms = {a: load_run(os.path.join(d, a)) for a in ("ticket", "reinit", "finetune")}
    for a in ("reinit", "finetune"):
      for k, m in flat(arms[a]["masks"]).items():
        np.testing.assert_array_equal(m, flat(arms["ticket"]["masks"])[k])
    theta_T = flat(load_run(os.path.join(d, "pretrain"))["params"])
    theta_0 = flat(_rewind_state(os.path.join(d, "pretrain"), 0)[0]["params"])
    starts = {a: flat(jax.device_get(loop.build(stages[f"{r['workdir']}/{a}"],
                                                loop.make_mesh()).state.params))
              for a in ("ticket", "reinit", "finetune")}
    m = flat(arms["ticket"]["masks"])
    for k in m:
      np.testing.assert_array_equal(starts["ticket"][k], np.where(m[k], theta_0[k], 0))
      np.testing.assert_array_equal(starts["finetune"][k], np.where(m[k], theta_T[k], 0))
    assert not np.array_equal(starts["reinit"]["['conv1']['kernel']"],
                              starts["ticket"]["['conv1']['kernel']"])
  assert json.load(open(os.path.join(workdir, "summary.json")))["by_learning_rate"] == rows
