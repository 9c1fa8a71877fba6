"""End-to-end tests of the engine: search semantics, sharding, resume, bad input."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lottery_jax import load_run
from lottery_jax import search  # noqa: F401  (registers the jackpot program)
from lottery_jax.engine import loop
from lottery_jax.engine.errors import (CheckpointMismatchError, ConfigError,
                                       NonFiniteLossError)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """Dense training on a digits subset (tests/configs/tiny_search.py made dense)."""
  c = _tiny_search_config()
  c.mask.program = "dense"
  c.sparsity = 0.0
  c.mask.update_rule = ""
  for k, v in overrides.items():
    c.update_from_flattened_dict({k: v})
  return c


def _tiny_search_config():
  spec = importlib.util.spec_from_file_location(
      "tiny_search", os.path.join(REPO, "tests", "configs", "tiny_search.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def search_config(pretrained, **overrides):
  base = {"mask.program": "jackpot", "sparsity": 0.9, "mask.update_rule": "swap",
          "pretrained": pretrained}
  base.update(overrides)
  return tiny_config(**base)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  loop.run(tiny_config(num_steps=16, **{"optimizer.learning_rate": 0.05}), workdir)
  return workdir


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_dense_run_writes_results(pretrained):
  with open(os.path.join(pretrained, "summary.json")) as f:
    summary = json.load(f)
  assert summary["steps"] == 16
  assert summary["final_eval"]["examples"] == 200  # every eval example exactly once
  run = load_run(pretrained)
  assert all(m.all() for m in flat(run["masks"]).values())
  assert os.path.exists(os.path.join(pretrained, "config.json"))


def test_search_freezes_weights_bn_and_classifier(pretrained, tmp_path):
  summary = loop.run(search_config(pretrained), str(tmp_path))
  before, after = load_run(pretrained), load_run(str(tmp_path))
  masks = flat(after["masks"])
  # Exported params are W * M; every kept weight must equal the pretrained one
  # bit for bit, and non-pruned leaves (BN scale/shift, classifier) entirely.
  for key, w0 in flat(before["params"]).items():
    w1, m = flat(after["params"])[key], masks[key]
    np.testing.assert_array_equal(w1, np.where(m, w0, 0).astype(w0.dtype))
    if "classifier" in key or "bn" in key:
      assert m.all()
  # BN running statistics keep updating during the search.
  assert any(not np.array_equal(a, flat(after["batch_stats"])[k])
             for k, a in flat(before["batch_stats"]).items())
  # Exact sparsity of the searched layers at the end.
  counts = [(m.size, m.size - m.sum()) for k, m in masks.items() if "conv" in k]
  pruned = sum(c[1] for c in counts)
  assert abs(pruned / sum(c[0] for c in counts) - 0.9) < 0.01
  assert summary["sparsity"]["per_layer"]
  analysis = summary["mask_analysis"]
  for key in ("iou_magnitude", "iou_random", "iou_saliency", "iou_initial",
              "fraction_changed_from_init"):
    assert 0.0 <= analysis[key] <= 1.0
  assert any(k.startswith("swaps/") for k in summary["history"][0])


def test_same_masks_on_one_and_eight_devices(pretrained, tmp_path):
  assert jax.device_count() == 8
  cfg = search_config(pretrained)
  one = loop.run(cfg, str(tmp_path / "one"), mesh=loop.make_mesh(jax.devices()[:1]))
  eight = loop.run(cfg, str(tmp_path / "eight"), mesh=loop.make_mesh())
  m1, m8 = flat(load_run(str(tmp_path / "one"))["masks"]), flat(
      load_run(str(tmp_path / "eight"))["masks"])
  for k in m1:
    np.testing.assert_array_equal(m1[k], m8[k])
  assert one["final_eval"]["accuracy"] == eight["final_eval"]["accuracy"]


def test_finetune_stage_keeps_mask(pretrained, tmp_path):
  from lottery_jax import experiments
  cfg = search_config(pretrained, **{"finetune.num_epochs": 0.5})
  experiments.get("train")(cfg, str(tmp_path))
  found = flat(load_run(str(tmp_path))["masks"])
  tuned = load_run(str(tmp_path / "finetune"))
  for k, m in flat(tuned["masks"]).items():
    np.testing.assert_array_equal(m, found[k])
    assert not np.any(flat(tuned["params"])[k][~m])  # pruned weights exactly zero


def test_finetune_at_learning_rate_zero_only_re_estimates_batchnorm(pretrained, tmp_path):
  """`finetune.learning_rate=0` turns the +T stage into BatchNorm re-estimation on the
  found mask (RESULTS.md, full-data 95%: the search's own running statistics lag its
  last swaps): weights, BN scale/shift and masks stay bitwise those of the search,
  and only the running statistics move."""
  from lottery_jax import experiments
  cfg = search_config(pretrained, **{"finetune.num_epochs": 0.5,
                                     "finetune.learning_rate": 0.0})
  summary = experiments.get("train")(cfg, str(tmp_path))
  found, tuned = load_run(str(tmp_path)), load_run(str(tmp_path / "finetune"))
  for part in ("params", "masks"):
    for k, v in flat(found[part]).items():
      np.testing.assert_array_equal(flat(tuned[part])[k], v, err_msg=f"{part} {k}")
  assert any(not np.array_equal(a, flat(tuned["batch_stats"])[k])
             for k, a in flat(found["batch_stats"]).items())
  # The +T stage starts from the search's network: its first eval is the search's last.
  assert summary["finetune"]["initial_eval"] == summary["final_eval"]


@pytest.mark.parametrize("field,value", [
    ("sparsity", 1.0), ("sparsity", -0.1), ("mask.rate", 0.0), ("mask.rate", 1.5),
    ("allocation", "l2"), ("mask.program", "both"), ("mask.update_rule", "popup")])
def test_bad_config_values(pretrained, tmp_path, field, value):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    loop.run(search_config(pretrained, **{field: value}), str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written


def test_unknown_model_and_dataset(tmp_path):
  with pytest.raises(ValueError, match="unknown model 'resnet5'"):
    loop.run(tiny_config(**{"model.name": "resnet5"}), str(tmp_path))
  with pytest.raises(ValueError, match="nosuchdata"):
    loop.run(tiny_config(**{"data.name": "nosuchdata"}), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_pretrained_that_does_not_fit(pretrained, tmp_path):
  cfg = search_config(pretrained, **{"model.kwargs.widths": (8, 16, 32)})
  with pytest.raises(CheckpointMismatchError, match="shape-mismatched"):
    loop.run(cfg, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_refuses_to_resume_a_different_config(pretrained, tmp_path):
  loop.run(search_config(pretrained, num_steps=3), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(CheckpointMismatchError, match="sparsity: checkpoint has 0.9"):
    loop.run(search_config(pretrained, num_steps=3, sparsity=0.8), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  # Told to, it resumes.
  loop.run(search_config(pretrained, num_steps=3, sparsity=0.8,
                         allow_config_change=True), str(tmp_path))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny_config(num_steps=40, checkpoint_every_steps=1, log_every_steps=1,
                    **{"optimizer.learning_rate": 1e30, "optimizer.momentum": 0.0})
  with pytest.raises(NonFiniteLossError, match=r"at step \d+") as info:
    loop.run(cfg, str(tmp_path))
  bad = int(str(info.value).split("at step ")[1].split(";")[0])
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps and max(steps) <= bad


def _main(workdir, *extra, devices: int = 2):
  cmd = [sys.executable, "-m", "lottery_jax.main",
         f"--config={REPO}/tests/configs/tiny_search.py", f"--workdir={workdir}",
         *extra]
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return cmd, env


# The PyTorch lowering runs in one-device CPU processes only, and hands PyTorch the
# convs with at least TORCH_MIN_ROWS = 8192 output rows: at batch 128 the digits CNN's
# first conv (128 x 8 x 8 rows) goes to PyTorch. XLA's runs on 2 devices (sharded).
LOWERINGS = {
    "xla": dict(devices=2, args=()),
    "torch": dict(devices=1, args=("--config.model.conv=torch", "--config.data.batch_size=128",
                                   "--config.data.max_train_examples=1024")),
}


@pytest.mark.parametrize("impl", sorted(LOWERINGS))
def test_sigkill_then_resume_is_bitwise_identical(pretrained, tmp_path, impl):
  if impl == "torch":
    pytest.importorskip("torch")
    from lottery_jax.models import conv
    assert 128 * 8 * 8 >= conv.TORCH_MIN_ROWS
  lowering = LOWERINGS[impl]
  args = (f"--config.pretrained={pretrained}", "--config.num_steps=30",
          "--config.checkpoint_every_steps=4", *lowering["args"])
  main = functools.partial(_main, devices=lowering["devices"])
  cmd, env = main(tmp_path / "straight", *args)
  subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)
  with open(tmp_path / "straight" / "config.json") as f:
    assert json.load(f)["model.conv"] == impl

  cmd, env = main(tmp_path / "killed", *args)
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = [s for s in (os.listdir(ckpts) if ckpts.exists() else []) if s.isdigit()]
    if any(int(s) >= 8 for s in done):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed" / "summary.json").exists()
  subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)

  a, b = load_run(str(tmp_path / "straight")), load_run(str(tmp_path / "killed"))
  for part in ("masks", "scores", "params", "batch_stats"):
    fa, fb = flat(a[part]), flat(b[part])
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{part} {k}")


def test_sigterm_saves_and_exits(pretrained, tmp_path):
  cmd, env = _main(tmp_path, f"--config.pretrained={pretrained}",
                   "--config.num_steps=100000", "--config.checkpoint_every_steps=100000")
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / "initial_eval.json").exists():
    time.sleep(0.05)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  steps = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert steps, "no checkpoint written on SIGTERM"


def test_main_reports_bad_input_and_exits_nonzero(tmp_path):
  cmd, env = _main(tmp_path, "--config.sparsity=1.5")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 2
  assert "config.sparsity=1.5 is invalid" in out.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
