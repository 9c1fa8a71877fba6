"""PyTorch <-> Flax conversion: equivalence with plain-torch twins, round trips, errors.

The PyTorch twins below are written in plain `torch.nn` (torchvision is not a
dependency) with torchvision's and the lottery-jackpots reference's exact
state-dict key names.
"""

import os

import jax
import numpy as np
import pytest

from lottery_jax import convert, models

torch = pytest.importorskip(
    "torch", reason="PyTorch is the optional extra: pip install 'lottery-jax[torch]'")
nn = torch.nn
F = torch.nn.functional

jax.config.update("jax_default_matmul_precision", "highest")
torch.set_num_threads(1)


# --------------------------------------------------------------------------- #
# Plain-torch twins with torchvision / lottery-jackpots key names
# --------------------------------------------------------------------------- #


class TVBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TVBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TVResNet(nn.Module):
  """torchvision.models.ResNet (v1.5)."""

  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_bn_act(inp, oup, kernel, stride=1, groups=1):
  """torchvision's Conv2dNormActivation: Sequential(conv, bn, ReLU6)."""
  return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups,
                                 bias=False), nn.BatchNorm2d(oup), nn.ReLU6())


class TVInvertedResidual(nn.Module):

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = inp * expand_ratio
    self.use_res_connect = stride == 1 and inp == oup
    layers = [conv_bn_act(inp, hidden, 1)] if expand_ratio != 1 else []
    layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
               nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TVMobileNetV2(nn.Module):
  """torchvision.models.MobileNetV2 (width 1.0)."""

  def __init__(self, num_classes=1000, dropout=0.2):
    super().__init__()
    settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                [6, 160, 3, 2], [6, 320, 1, 1]]
    features = [conv_bn_act(3, 32, 3, 2)]
    inp = 32
    for t, c, n, s in settings:
      for i in range(n):
        features.append(TVInvertedResidual(inp, c, s if i == 0 else 1, t))
        inp = c
    features.append(conv_bn_act(inp, 1280, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

  def forward(self, x):
    x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
    return self.classifier(torch.flatten(x, 1))


class JackpotBlock(nn.Module):
  """lottery-jackpots models/resnet_cifar.py ResBasicBlock (option A shortcut)."""

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.stride, self.inplanes, self.planes = stride, inplanes, planes

  def shortcut(self, x):
    if self.stride == 1 and self.inplanes == self.planes:
      return x
    lo = (self.planes - self.inplanes) // 2
    hi = self.planes - self.inplanes - lo
    return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, lo, hi), "constant", 0)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class CifarResNetTorch(nn.Module):
  """He et al. CIFAR ResNet; `conv_fc=True` is the jackpot reference's 1x1-conv `fc`."""

  def __init__(self, depth, widths, num_classes, conv_fc):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    inp = widths[0]
    for stage, planes in enumerate(widths):
      blocks = []
      for i in range(n):
        blocks.append(JackpotBlock(inp, planes, 2 if (stage > 0 and i == 0) else 1))
        inp = planes
      setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
    self.conv_fc = conv_fc
    self.fc = nn.Conv2d(inp, num_classes, 1, bias=True) if conv_fc else nn.Linear(inp,
                                                                                  num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    x = F.adaptive_avg_pool2d(x, 1)
    if self.conv_fc:
      return self.fc(x).flatten(1)
    return self.fc(x.flatten(1))


class JackpotVGGTorch(nn.Module):
  """lottery-jackpots models/vgg_cifar.py, VGG-19."""

  CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]

  def __init__(self, num_classes):
    super().__init__()
    layers, inp = [], 3
    for v in self.CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(inp, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
        inp = v
    layers.append(nn.AvgPool2d(1, 1))
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Conv2d(512, num_classes, 1, bias=True)

  def forward(self, x):
    return self.classifier(self.features(x)).flatten(1)


def make_torch(name, num_classes):
  if name == "resnet18":
    return TVResNet(TVBasicBlock, [2, 2, 2, 2], num_classes)
  if name == "resnet34":
    return TVResNet(TVBasicBlock, [3, 4, 6, 3], num_classes)
  if name == "resnet50":
    return TVResNet(TVBottleneck, [3, 4, 6, 3], num_classes)
  if name == "mobilenet_v2":
    return TVMobileNetV2(num_classes, dropout=0.0)
  if name == "cifar_resnet20":
    return CifarResNetTorch(20, (16, 32, 64), num_classes, conv_fc=False)
  if name == "jackpot_resnet32":
    return CifarResNetTorch(32, (32, 64, 128), num_classes, conv_fc=True)
  if name == "jackpot_vgg19":
    return JackpotVGGTorch(num_classes)
  raise KeyError(name)


def randomize(module, seed=0):
  """Random weights and random BN running statistics (and affine params)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.5 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return module


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
