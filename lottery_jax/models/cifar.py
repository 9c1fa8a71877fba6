"""CIFAR networks: He et al. ResNet-20/32/56 and the lottery-jackpots reference models.

* `cifar_resnet20/32/56`: stage widths 16/32/64, option-A shortcuts (stride-2
  subsampling and zero-padded channels, no parameters), `fc` a dense layer on the
  globally pooled features. State-dict names: `conv1`, `bn1`,
  `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`, `fc`.
* `jackpot_resnet32`: the jackpot reference's `models/resnet_cifar.py`: the same
  network with widths 32/64/128 and `fc` a 1x1 conv (with bias) on the pooled
  features, kernel (1, 1, 128, C), so the original checkpoints load one to one.
* `jackpot_vgg19`: the reference's `models/vgg_cifar.py`: VGG-19 (16 bias-free 3x3
  convs, each followed by BN and ReLU, five 2x2 max-pools) whose classifier is a
  single 1x1 conv 512 -> C with bias on the 1x1 feature map. State-dict names are
  the `nn.Sequential` indices, `features.{i}` (conv at i, BN at i + 1), and
  `classifier`.

Flax paths mirror those names with `.` as `_`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery_jax.models.layers import BatchNorm, conv2d, dense, kaiming_fan_in
from lottery_jax.models.registry import register

Dtype = Any


def option_a_shortcut(x: jax.Array, planes: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: subsample by `stride`, zero-pad channels to `planes`.

  Pads `(planes - c) // 2` channels before and the rest after, as the reference's
  `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, lo, hi))`.
  """
  if stride != 1:
    x = x[:, ::stride, ::stride, :]
  extra = planes - x.shape[-1]
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class CifarBasicBlock(nn.Module):
  """Two 3x3 convs with BN; option-A identity shortcut."""

  planes: int
  stride: int = 1
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: BatchNorm(use_running_average=not train, affine=self.bn_affine,
                                dtype=self.dtype, name=name)
    out = conv2d(self.planes, 3, stride=self.stride, dtype=self.dtype,
                 kernel_init=kaiming_fan_in, name="conv1")(x)
    out = nn.relu(bn("bn1")(out))
    out = conv2d(self.planes, 3, dtype=self.dtype, kernel_init=kaiming_fan_in,
                 name="conv2")(out)
    out = bn("bn2")(out)
    return nn.relu(out + option_a_shortcut(x, self.planes, self.stride))


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs with option-A shortcuts.

  Attributes:
    depth: 6n + 2 (20, 32, 56, ...).
    widths: channels of the stem/stage 1, stage 2, stage 3.
    num_classes: outputs.
    conv_classifier: `fc` is a 1x1 conv with bias on the pooled features (the
      jackpot reference) instead of a dense layer. Same function, kernel shape
      (1, 1, width, C) instead of (width, C).
    bn_affine: learnable BatchNorm scale/bias.
    dtype: computation dtype.
  """

  depth: int = 20
  widths: tuple[int, int, int] = (16, 32, 64)
  num_classes: int = 10
  conv_classifier: bool = False
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = conv2d(self.widths[0], 3, dtype=self.dtype, kernel_init=kaiming_fan_in,
               name="conv1")(x)
    x = BatchNorm(use_running_average=not train, affine=self.bn_affine, dtype=self.dtype,
                  name="bn1")(x)
    x = nn.relu(x)
    for stage, planes in enumerate(self.widths):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        x = CifarBasicBlock(planes, stride, bn_affine=self.bn_affine, dtype=self.dtype,
                            name=f"layer{stage + 1}_{i}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if self.conv_classifier:
      x = conv2d(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                 in_features=self.widths[-1], kernel_init=kaiming_fan_in,
                 name="fc")(x[:, None, None, :])
      return x.reshape(x.shape[0], -1)
    return dense(self.num_classes, self.widths[-1], dtype=self.dtype, name="fc")(x)


_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class JackpotVGG(nn.Module):
  """The jackpot reference's CIFAR VGG with BN and a 1x1-conv classifier.

  Attributes:
    cfg: channels per conv, "M" for a 2x2 max-pool (VGG-19 by default).
    num_classes: outputs.
    bn_affine: learnable BatchNorm scale/bias.
    dtype: computation dtype.
  """

  cfg: tuple[int | str, ...] = _VGG19
  num_classes: int = 10
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    idx, channels = 0, x.shape[-1]
    for v in self.cfg:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        idx += 1
        continue
      x = conv2d(v, 3, dtype=self.dtype, kernel_init=kaiming_fan_in, name=f"features_{idx}")(x)
      x = BatchNorm(use_running_average=not train, affine=self.bn_affine, dtype=self.dtype,
                    name=f"features_{idx + 1}")(x)
      x = nn.relu(x)
      idx, channels = idx + 3, v
    if x.shape[1:3] != (1, 1):
      raise ValueError(
          f"jackpot_vgg19 expects 32x32 inputs (a 1x1 map before the classifier); "
          f"got a {x.shape[1]}x{x.shape[2]} map")
    x = conv2d(self.num_classes, 1, use_bias=True, dtype=self.dtype, in_features=channels,
               kernel_init=kaiming_fan_in, name="classifier")(x)
    return x.reshape(x.shape[0], -1)


@register("cifar_resnet20", input_shape=(32, 32, 3), classifier=("fc",), family="cifar")
def cifar_resnet20(num_classes: int = 10, **kw) -> CifarResNet:
  """ResNet-20, widths 16/32/64 (269,722 params at 10 classes). kw: `bn_affine`, `dtype`."""
  return CifarResNet(depth=20, num_classes=num_classes, **kw)


@register("cifar_resnet32", input_shape=(32, 32, 3), classifier=("fc",), family="cifar")
def cifar_resnet32(num_classes: int = 10, **kw) -> CifarResNet:
  """ResNet-32, widths 16/32/64. kw: `bn_affine`, `dtype`."""
  return CifarResNet(depth=32, num_classes=num_classes, **kw)


@register("cifar_resnet56", input_shape=(32, 32, 3), classifier=("fc",), family="cifar")
def cifar_resnet56(num_classes: int = 10, **kw) -> CifarResNet:
  """ResNet-56, widths 16/32/64. kw: `bn_affine`, `dtype`."""
  return CifarResNet(depth=56, num_classes=num_classes, **kw)


@register("jackpot_resnet32", input_shape=(32, 32, 3), classifier=("fc",), family="cifar")
def jackpot_resnet32(num_classes: int = 10, **kw) -> CifarResNet:
  """The jackpot reference's ResNet-32: widths 32/64/128, 1x1-conv `fc`."""
  return CifarResNet(depth=32, widths=(32, 64, 128), conv_classifier=True,
                     num_classes=num_classes, **kw)


@register("jackpot_vgg19", input_shape=(32, 32, 3), classifier=("classifier",),
          family="cifar")
def jackpot_vgg19(num_classes: int = 10, **kw) -> JackpotVGG:
  """The jackpot reference's VGG-19 with BN, single 1x1-conv 512 -> C classifier."""
  return JackpotVGG(num_classes=num_classes, **kw)
