"""Plain-PyTorch twins of the model zoo, with torchvision's and the reference's key names.

Written in plain `torch.nn` (torchvision is not a dependency) with the exact state-dict
key names of torchvision (`resnet18/34/50`, `mobilenet_v2`) and of the lottery-jackpots
reference (`cifar_resnet20`, `jackpot_resnet32`, `jackpot_vgg19`). The equivalence tests
(`tests/test_convert.py`) and the PyTorch benchmark (`benchmarks/vs_pytorch.py`) use them;
they are also a way to move weights to or from PyTorch code that has no torchvision.

Needs PyTorch (`pip install 'lottery-jax[torch]'`):

    from lottery_jax.convert import torch_twins
    net = torch_twins.make_torch("jackpot_resnet32", num_classes=10)
"""

from __future__ import annotations

try:
  import torch
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("lottery_jax.convert.torch_twins needs PyTorch: "
                    "pip install 'lottery-jax[torch]'") from e

nn = torch.nn
F = torch.nn.functional

__all__ = ["make_torch", "randomize", "NAMES"]


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

  def __init__(self, block, layers, num_classes=1000, cifar_stem=False):
    super().__init__()
    self.inplanes = 64
    # The CIFAR stem as CIFAR code writes it with torchvision: conv1 replaced by a
    # 3x3/1 conv, maxpool by nn.Identity (same state-dict keys).
    self.conv1 = (nn.Conv2d(3, 64, 3, 1, 1, bias=False) if cifar_stem
                  else nn.Conv2d(3, 64, 7, 2, 3, bias=False))
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
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
  """torchvision.models.MobileNetV2 (width 1.0); `cifar_strides`: stride 1 in the stem
  and the second stage (`cifar_mobilenet_v2`)."""

  def __init__(self, num_classes=1000, dropout=0.2, cifar_strides=False):
    super().__init__()
    settings = [[1, 16, 1, 1], [6, 24, 2, 1 if cifar_strides else 2], [6, 32, 3, 2],
                [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    features = [conv_bn_act(3, 32, 3, 1 if cifar_strides else 2)]
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


NAMES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "cifar_mobilenet_v2",
         "cifar_resnet18", "cifar_resnet20", "jackpot_resnet32", "jackpot_vgg19")


def make_torch(name: str, num_classes: int) -> nn.Module:
  """The PyTorch twin of the registered model `name` (one of `NAMES`)."""
  if name == "resnet18":
    return TVResNet(TVBasicBlock, [2, 2, 2, 2], num_classes)
  if name == "cifar_resnet18":
    return TVResNet(TVBasicBlock, [2, 2, 2, 2], num_classes, cifar_stem=True)
  if name == "resnet34":
    return TVResNet(TVBasicBlock, [3, 4, 6, 3], num_classes)
  if name == "resnet50":
    return TVResNet(TVBottleneck, [3, 4, 6, 3], num_classes)
  if name == "mobilenet_v2":
    return TVMobileNetV2(num_classes, dropout=0.0)
  if name == "cifar_mobilenet_v2":
    return TVMobileNetV2(num_classes, dropout=0.0, cifar_strides=True)
  if name == "cifar_resnet20":
    return CifarResNetTorch(20, (16, 32, 64), num_classes, conv_fc=False)
  if name == "jackpot_resnet32":
    return CifarResNetTorch(32, (32, 64, 128), num_classes, conv_fc=True)
  if name == "jackpot_vgg19":
    return JackpotVGGTorch(num_classes)
  raise KeyError(f"no PyTorch twin for model {name!r}; twins exist for {', '.join(NAMES)}")


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
