"""PyTorch <-> Flax conversion: equivalence with plain-torch twins, round trips, errors.

The plain-torch twins (torchvision's and the lottery-jackpots reference's exact
state-dict key names) live in `lottery_jax.convert.torch_twins`.
"""

import os

import jax
import numpy as np
import pytest

from lottery_jax import convert, models

torch = pytest.importorskip(
    "torch", reason="PyTorch is the optional extra: pip install 'lottery-jax[torch]'")
nn = torch.nn
from lottery_jax.convert.torch_twins import make_torch, randomize  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def to_nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- #
# Equivalence
# --------------------------------------------------------------------------- #

EQUIVALENCE = {  # name: (input HWC, batch); small sizes keep the CPU run short
    "resnet50": ((64, 64, 3), 2),
    "mobilenet_v2": ((64, 64, 3), 4),
    "cifar_mobilenet_v2": ((16, 16, 3), 2),
    "cifar_resnet18": ((16, 16, 3), 2),
    "cifar_resnet20": ((32, 32, 3), 4),
    "jackpot_resnet32": ((32, 32, 3), 2),
    "jackpot_vgg19": ((32, 32, 3), 2),
}


@pytest.mark.parametrize("name", sorted(EQUIVALENCE))
def test_equivalence_eval_and_train(name):
  shape, batch = EQUIVALENCE[name]
  num_classes = 10
  ref = randomize(make_torch(name, num_classes))
  state = {k: v.clone() for k, v in ref.state_dict().items()}
  variables = convert.load_torch_state_dict(state, name, num_classes)
  model = models.get(name, num_classes=num_classes)
  x = np.random.default_rng(0).normal(size=(batch,) + shape).astype(np.float32)

  ref.eval()
  with torch.no_grad():
    want = ref(to_nchw(x)).numpy()
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert rel_err(got, want) < 1e-4

  ref.train()
  with torch.no_grad():
    want_train = ref(to_nchw(x)).numpy()
  got_train, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert rel_err(got_train, want_train) < 1e-4
  # The updated running statistics are those PyTorch holds after its step.
  after = convert.load_torch_state_dict(ref.state_dict(), name, num_classes)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(updates["batch_stats"]),
                          jax.tree.leaves(after["batch_stats"])):
    assert rel_err(a, b) < 1e-4, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_torchvision_basic_block_keys_load(name):
  """Every key of a torchvision ResNet-18/34 state dict has its place (no forward)."""
  ref = make_torch(name, 1000)
  variables = convert.load_torch_state_dict(ref.state_dict(), name, 1000)
  np.testing.assert_array_equal(
      variables["params"]["layer2_0"]["downsample_0"]["kernel"],
      ref.layer2[0].downsample[0].weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                ref.fc.weight.detach().numpy().T)


# --------------------------------------------------------------------------- #
# Jackpot checkpoints, formats, round trips, errors
# --------------------------------------------------------------------------- #


def _jackpot_checkpoint(ref, seed=0):
  """A lottery-jackpots style checkpoint: DataParallel keys, `mask`/`b_mask` per conv."""
  g = torch.Generator().manual_seed(seed)
  state = {}
  for key, value in ref.state_dict().items():
    state["module." + key] = value.clone()
  for name, m in ref.named_modules():
    if isinstance(m, nn.Conv2d):
      scores = torch.rand(m.weight.shape, generator=g)
      state[f"module.{name}.mask"] = scores
      state[f"module.{name}.b_mask"] = (scores > 0.5).float()
  return {"state_dict": state, "best_acc": 93.7, "epoch": 30, "cfg": [0.9] * 3}


def test_jackpot_checkpoint_pt_with_scores_and_masks(tmp_path):
  ref = randomize(make_torch("jackpot_resnet32", 100), seed=3)
  ckpt = _jackpot_checkpoint(ref)
  path = tmp_path / "model_best.pt"
  torch.save(ckpt, path)
  variables = convert.load_torch_state_dict(path, "jackpot_resnet32", 100)
  assert set(variables) == {"params", "batch_stats", "scores", "masks"}
  scores = ckpt["state_dict"]["module.layer2.0.conv1.mask"].numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(variables["scores"]["layer2_0"]["conv1"]["kernel"], scores)
  np.testing.assert_array_equal(variables["masks"]["layer2_0"]["conv1"]["kernel"], scores > 0.5)
  assert variables["masks"]["fc"]["kernel"].shape == (1, 1, 128, 100)
  # Leaves without entries are "not pruned".
  assert variables["masks"]["bn1"]["scale"].dtype == np.bool_
  assert bool(variables["masks"]["bn1"]["scale"].all())


def test_jackpot_resnet50_checkpoint_into_torchvision_layout():
  """The reference's ResNet-50 has a 1x1-conv fc: it loads into the dense `fc`."""
  ref = make_torch("resnet50", 10)
  state = {k: v for k, v in ref.state_dict().items()}
  state["fc.weight"] = state["fc.weight"][:, :, None, None]
  state["fc.mask"] = torch.ones_like(state["fc.weight"])
  variables = convert.load_torch_state_dict({"module." + k: v for k, v in state.items()},
                                            "resnet50", 10)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                ref.fc.weight.detach().numpy().T)
  assert variables["scores"]["fc"]["kernel"].shape == (2048, 10)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_formats_without_torch(tmp_path, fmt):
  ref = randomize(make_torch("cifar_resnet20", 10), seed=1)
  arrays = {k: v.numpy() for k, v in ref.state_dict().items()}
  path = tmp_path / f"w.{fmt}"
  if fmt == "npz":
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, str(path))
  variables = convert.load_torch_state_dict(path, "cifar_resnet20", 10)
  np.testing.assert_array_equal(variables["batch_stats"]["layer3_2"]["bn2"]["var"],
                                arrays["layer3.2.bn2.running_var"])


def test_pt_without_torch_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / "w.pt"
  path.write_bytes(b"not read")
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kw):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kw)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(ImportError, match=r"pip install 'lottery-jax\[torch\]'"):
    convert.load_torch_state_dict(path, "cifar_resnet20", 10)


@pytest.mark.parametrize("name,num_classes", [("jackpot_vgg19", 10), ("mobilenet_v2", 10)])
def test_export_import_round_trip(tmp_path, name, num_classes):
  ref = randomize(make_torch(name, num_classes), seed=2)
  variables = convert.load_torch_state_dict(ref.state_dict(), name, num_classes)
  rng = np.random.default_rng(0)
  masks = jax.tree.map(lambda p: rng.uniform(size=p.shape) < (0.3 if p.ndim >= 2 else 1.1),
                       variables["params"])
  masked = jax.tree.map(lambda p, m: np.where(m, p, 0), variables["params"], masks)
  out = convert.export_torch_state_dict(variables, name, tmp_path / "ticket.safetensors",
                                        masks=masks)
  assert os.path.exists(out["masks"])
  back = convert.load_torch_state_dict(out["state_dict"], name, num_classes)
  for a, b in zip(jax.tree.leaves(back["params"]), jax.tree.leaves(masked)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(back["batch_stats"]), jax.tree.leaves(variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(back["masks"]), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(a, b)
  # The file is a strict PyTorch state dict for the PyTorch twin.
  from safetensors.torch import load_file
  twin = make_torch(name, num_classes)
  twin.load_state_dict(load_file(out["state_dict"]), strict=True)
  # Masks are bit-packed: one bit per weight (plus padding to a byte).
  from safetensors.numpy import load_file as load_np
  packed = load_np(out["masks"])
  n_weights = sum(int(np.prod(m.shape)) for m in jax.tree.leaves(masks) if m.ndim >= 2)
  assert sum(v.size for v in packed.values()) < n_weights / 8 + len(packed)


def test_export_without_masks_is_identity(tmp_path):
  ref = randomize(make_torch("cifar_resnet20", 10), seed=4)
  variables = convert.load_torch_state_dict(ref.state_dict(), "cifar_resnet20", 10)
  out = convert.export_torch_state_dict(variables, "cifar_resnet20", tmp_path / "d.safetensors")
  back = convert.load_torch_state_dict(out["state_dict"], "cifar_resnet20", 10)
  assert set(back) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_mismatch_lists_missing_unexpected_and_shapes():
  vgg = make_torch("jackpot_vgg19", 100).state_dict()
  with pytest.raises(ValueError) as err:
    convert.load_torch_state_dict(vgg, "jackpot_resnet32", 10)
  msg = str(err.value)
  missing, unexpected = msg.split("unexpected keys")
  assert "157 missing keys: " in missing and "conv1.weight" in missing
  assert "82 " in missing[-4:] and "features.0.weight" in unexpected
  assert "jackpot_resnet32" in msg and "num_classes=10" in msg and "..." in msg

  r20 = make_torch("cifar_resnet20", 100).state_dict()
  with pytest.raises(ValueError, match=r"0 missing keys; 0 unexpected keys; 2 shape "
                                       r"mismatches: fc.weight \(checkpoint \(100, 64\), "
                                       r"model \(10, 64\)\), fc.bias"):
    convert.load_torch_state_dict(r20, "cifar_resnet20", 10)
