"""Every config in configs/ runs end to end for a few steps on tiny or mock data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lottery_jax import load_run
from lottery_jax import experiments
from lottery_jax.engine import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def shrink(c, *, steps=2, batch=16, eval_examples=32, **data):
  c.num_steps = steps
  c.num_epochs = 1.0
  c.log_every_steps = 1
  c.checkpoint_every_steps = steps
  c.eval_every_epochs = 0.0
  c.tensorboard = False
  c.analysis.saliency_batches = 1
  c.data.per_device_batch_size = 0
  c.data.batch_size = batch
  c.data.eval_batch_size = batch
  c.data.max_train_examples = 4 * batch
  c.data.max_eval_examples = eval_examples
  c.data.num_workers = 0
  for k, v in data.items():
    c.data[k] = v
  return c


def _tiny_zip(path, per_class: int) -> None:
  from PIL import Image
  import zipfile
  rng = np.random.default_rng(0)
  with zipfile.ZipFile(path, "w") as z:
    for split in ("train", "test"):
      for cls in ("cat", "dog"):
        for i in range(per_class):
          img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
          buf = path.parent / "img.png"
          img.save(buf)
          z.write(buf, f"{split}/{cls}/{i}.png")


def test_every_config_is_covered():
  names = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py"))
  covered = {"quickstart", "jackpot_r32_cifar10", "jackpot_vgg19_cifar10",
             "pretrain_r32_cifar10", "pretrain_vgg19_cifar10",
             "pretrain_resnet20_cifar10", "pretrain_resnet20_cifar10_restart", "jackpot_r50",
             # run by tests/test_imp.py
             "imp_quick", "ticket_vs_finetune_quick", "imp_conv_cifar10",
             "imp_resnet20_cifar10", "ticket_vs_finetune_cifar10",
             # run by tests/test_siblings.py
             "siblings_quick", "siblings_sweep", "siblings_resnet20_cifar10",
             # run by tests/test_strong_tickets.py
             "slt_quick", "slt_conv6_cifar10", "slt_resnet18_cifar10", "slt_r50_imagenet"}
  assert set(names) == covered, f"add a test for {set(names) - covered}"


@pytest.mark.parametrize("model", ["r32", "vgg19"])
def test_cifar_pretrain_then_jackpot_on_mock_tfds(tmp_path, model):
  with tfds.testing.mock_data(num_examples=64):
    pre = shrink(load_config(f"pretrain_{model}_cifar10"))
    loop.run(pre, str(tmp_path / "pretrain"))
    search = shrink(load_config(f"jackpot_{model}_cifar10"))
    search.pretrained = str(tmp_path / "pretrain")
    summary = loop.run(search, str(tmp_path / "search"))
  assert summary["steps"] == 2
  assert abs(summary["sparsity"]["of_pruned_layers"] - 0.9) < 1e-3
  assert "iou_magnitude" in summary["mask_analysis"]


def test_resnet20_pretrain_from_an_image_folder_zip(tmp_path):
  path = tmp_path / "tiny.zip"
  _tiny_zip(path, per_class=8)
  c = shrink(load_config("pretrain_resnet20_cifar10", f"folder={path}"), batch=8,
             eval_examples=16)
  summary = loop.run(c, str(tmp_path / "run"))
  assert summary["final_eval"]["examples"] == 16
  # The warm restart: a second dense cycle from the first one's weights.
  r = shrink(load_config("pretrain_resnet20_cifar10_restart", f"folder={path}"), batch=8,
             eval_examples=16)
  assert r.pretrained == "benchmarks/checkpoints/resnet20_cifar10_full"
  r.pretrained = str(tmp_path / "run")
  restarted = loop.run(r, str(tmp_path / "restart"))
  assert restarted["initial_eval"] == summary["final_eval"]


FULL_ZIP = os.path.join(os.path.dirname(REPO), "shared", "datasets", "cifar10-jpeg.zip")


@pytest.mark.parametrize("ckpt,at_least", [("resnet20_cifar10", 0.75),
                                           ("resnet20_cifar10_full", 0.85)])
def test_committed_checkpoints_load_and_score(tmp_path, ckpt, at_least):
  """The committed CIFAR-10 ResNet-20s (exported by earlier versions of the engine)
  load through `config.pretrained` and score what their summaries say: the initial
  eval of a run that starts from them is their own final eval, on a fixed 1,000-image
  test subset (binomial standard error ~1.2 points at 85%, so `at_least` sits 2.5+
  points under the recorded full-test accuracy)."""
  if not os.path.exists(FULL_ZIP):
    pytest.skip(f"{FULL_ZIP} not present")
  path = os.path.join(REPO, "benchmarks", "checkpoints", ckpt)
  with open(os.path.join(path, "summary.json")) as f:
    recorded = json.load(f)["final_eval"]["accuracy"]
  assert recorded >= at_least + 0.025
  c = shrink(load_config("pretrain_resnet20_cifar10", f"folder={FULL_ZIP}"), steps=1,
             batch=8, eval_examples=1000)
  c.pretrained = path
  c.optimizer.learning_rate = 0.0
  summary = loop.run(c, str(tmp_path / "run"))
  assert summary["initial_eval"]["examples"] == 1000
  assert summary["initial_eval"]["accuracy"] >= at_least, summary["initial_eval"]


_ONE_DEVICE_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from absl import flags
from ml_collections import config_flags
from lottery_jax.engine import loop
from lottery_jax.models import conv
from test_configs import shrink
assert jax.device_count() == 1
pre_flag = config_flags.DEFINE_config_file("pre")
search_flag = config_flags.DEFINE_config_file("search")
# The lowering is chosen the way a user chooses it: --config.model.conv=<impl> (config
# flags read their overrides from sys.argv).
sys.argv = ["run", "--pre={configs}/pretrain_resnet20_cifar10.py:folder={zip}",
            "--search={configs}/jackpot_r32_cifar10.py:folder={zip}",
            "--pre.model.conv={impl}", "--search.model.conv={impl}"]
flags.FLAGS(sys.argv)
pre = shrink(pre_flag.value, batch=32, eval_examples=32)
pre_summary = loop.run(pre, "{work}/pretrain")
search = shrink(search_flag.value, batch=32, eval_examples=32)
search.model.name = "cifar_resnet20"
search.pretrained = "{work}/pretrain"
summary = loop.run(search, "{work}/search")
conv.raise_pending_errors()
print(json.dumps({{"torch_registered": bool(conv._callbacks), "pretrain": pre_summary,
                  "summary": summary}}))
"""

# Tolerance of the torch-vs-xla comparison, from float32 rounding. Each conv output is a
# dot product of K = 9 * C <= 576 float32 products: the two lowerings round it in
# different orders, a relative difference of ~sqrt(K) * 2^-24 ~ 1.4e-6 (worst case
# K * 2^-24 ~ 3.4e-5). Through ResNet-20's 19 convs the relative differences add (BN
# renormalises each layer, ReLU is 1-Lipschitz): ~19 * 1.4e-6 ~ 3e-5 in the logits and
# the loss of the dense pretraining steps; two SGD steps (lr 0.1, on 64 examples)
# amplify that at most a few-fold, ~1e-4. So the loss must agree to 3e-4 relative. A
# conv with bfloat16 operands (8 significand bits, relative error 2^-9 per operand)
# differs by ~2^-8 ~ 4e-3 (a Xeon with AMX showed 1.01378 vs 1.01795, 4.1e-3): an order
# of magnitude outside. The search run's masks are discrete (top-k of scores): rounding
# can flip a near-tie, and one flip moves the loss far more than rounding does (measured
# here: 2 of 269,202 mask entries flipped, search loss 1.96383 vs 1.97095, 3.6e-3, while
# the pretraining losses agreed to 8e-7). So the search loss is compared only when the
# masks agree exactly; otherwise the flips must stay under 1e-3 of each layer.
E2E_LOSS_RTOL = 3e-4


def test_one_device_cpu_run_with_pytorch_convs_matches_xla(tmp_path):
  """`--config.model.conv=torch` in a one-device CPU process (a laptop, a Colab CPU):
  pretraining and a search run end to end with PyTorch's convolutions and land where
  XLA's convolutions land (float32 rounding apart, E2E_LOSS_RTOL)."""
  pytest.importorskip("torch")
  _tiny_zip(tmp_path / "tiny.zip", per_class=16)
  results = {}
  for impl in ("torch", "xla"):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one device
    env.pop("LOTTERY_JAX_CONV_IMPL", None)  # no longer read; make sure nothing depends on it
    work = tmp_path / impl
    script = _ONE_DEVICE_RUN.format(tests=os.path.dirname(__file__), configs=CONFIGS,
                                    zip=tmp_path / "tiny.zip", work=work, impl=impl)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    for run in ("pretrain", "search"):
      with open(work / run / "config.json") as f:
        recorded = json.load(f)   # the lowering is in the run's record (flat or nested)
      assert recorded.get("model.conv", recorded.get("model", {}).get("conv")) == impl
  assert results["torch"]["torch_registered"] and not results["xla"]["torch_registered"]
  a, b = results["torch"]["summary"], results["xla"]["summary"]
  assert a["steps"] == b["steps"] == 2
  pre_a, pre_b = (results[i]["pretrain"]["final_eval"]["loss"] for i in ("torch", "xla"))
  assert abs(pre_a - pre_b) <= E2E_LOSS_RTOL * abs(pre_b), (pre_a, pre_b)
  masks_a = load_run(str(tmp_path / "torch" / "search"))["masks"]
  masks_b = load_run(str(tmp_path / "xla" / "search"))["masks"]
  flips = [float(np.mean(np.asarray(ma) != np.asarray(mb)))
           for ma, mb in zip(jax_leaves(masks_a), jax_leaves(masks_b))]
  assert max(flips) < 1e-3, flips
  if max(flips) == 0:
    loss_a, loss_b = a["final_eval"]["loss"], b["final_eval"]["loss"]
    assert abs(loss_a - loss_b) <= E2E_LOSS_RTOL * abs(loss_b), (loss_a, loss_b)


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.leaves(tree)


def test_jackpot_r50_from_torchvision_weights_on_mock_imagenet(tmp_path):
  """Exports random ResNet-50 weights as a torchvision state dict, then searches it."""
  import jax
  import jax.numpy as jnp
  from lottery_jax import convert, models
  model = models.get("resnet50", num_classes=1000)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False))(
      jax.random.PRNGKey(0))
  weights = tmp_path / "resnet50.safetensors"
  convert.export_torch_state_dict(variables, "resnet50", str(weights))
  c = load_config("jackpot_r50")
  assert c.sparsity == 0.9 and c.num_epochs == 30 and c.data.name == "imagenet2012"
  c = shrink(c, steps=1, batch=8, eval_examples=8, image_size=64, resize_size=73)
  c.pretrained = str(weights)
  with tfds.testing.mock_data(num_examples=32):
    summary = loop.run(c, str(tmp_path / "run"))
  assert summary["steps"] == 1
  run = load_run(str(tmp_path / "run"))
  assert not run["masks"]["fc"]["kernel"].size or run["masks"]["fc"]["kernel"].all()


def test_quickstart_short(tmp_path):
  c = load_config("quickstart")
  c.num_epochs = 1.0
  c.pretrain.num_epochs = 2.0
  out = experiments.get(c.experiment)(c, str(tmp_path))
  assert "magnitude-pruned 97%, no search" in out["table"]
  assert os.listdir(tmp_path / "jackpot" / "tensorboard")  # event files written
  assert os.path.exists(tmp_path / "jackpot" / "torch_state_dict.masks.safetensors")
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["jackpot"]["accuracy"] == out["jackpot"]["accuracy"]


@pytest.mark.slow
def test_quickstart_main_job_meets_its_promise(tmp_path):
  """The README's main job: jackpot within 2 points of dense, >= 5 above magnitude."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one device, as on a fresh machine
  out = subprocess.run(
      [sys.executable, "-m", "lottery_jax.main", "--config=configs/quickstart.py",
       f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "summary.json") as f:
    s = json.load(f)
  dense, magnitude, jackpot = (s["dense"]["accuracy"], s["magnitude_no_search"]["accuracy"],
                               s["jackpot"]["accuracy"])
  assert jackpot >= dense - 0.02, s["table"]
  assert jackpot >= magnitude + 0.05, s["table"]
  assert "jackpot 97%" in out.stdout


def test_eval_batch_size_zero_means_the_train_batch_and_negative_is_refused():
  """The data pipeline documents `eval_batch_size=0` as "the train batch size";
  validation must accept it (TFDS sources default to it) and refuse < 0."""
  from lottery_jax import data  # pylint: disable=import-outside-toplevel
  from lottery_jax.engine import config as config_lib  # pylint: disable=import-outside-toplevel
  from lottery_jax.engine.errors import ConfigError  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  c.data = data.default_config("cifar10")
  c.data.eval_batch_size = 0
  config_lib.validate(c)
  c.data.eval_batch_size = -1
  with pytest.raises(ConfigError, match="data.eval_batch_size"):
    config_lib.validate(c)


def test_split_options_keeps_the_data_argument_and_takes_the_configs_own():
  """recipes.split_options: bare flags and `name=value` options are taken out, every
  other part (the data argument `cifar_data` reads) is kept in order; a flag given a
  value, or an option given none, stays in the data argument (which then rejects it)."""
  from lottery_jax import recipes
  assert recipes.split_options(["folder=/x.zip", "subset", "epochs=5", "epochs=2"],
                               flags=("subset",), valued=("epochs",)) == (
      "folder=/x.zip", {"subset": True, "epochs": "2"})
  assert recipes.split_options(["subset=1", "epochs"], flags=("subset",),
                               valued=("epochs",)) == ("subset=1,epochs", {})
  assert recipes.split_options([]) == ("", {})
