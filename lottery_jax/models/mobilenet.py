"""MobileNetV2 in the torchvision layout (width 1.0), and its CIFAR variant.

`cifar_mobilenet_v2` is the same network with the strides of the common CIFAR variant
(kuangliu/pytorch-cifar's): stride 1 in the stem and in the second stage, so a 32x32
image leaves 4x4 maps before the pooling instead of torchvision's 1x1. It keeps
torchvision's names and blocks (the projection shortcut kuangliu adds to stride-1 blocks
that change width is not used), so its state dicts are torchvision-layout ones, e.g.
those of the PyTorch twin `convert.torch_twins.TVMobileNetV2(cifar_strides=True)`.

Flax paths mirror torchvision keys with `.` as `_`: `features.2.conv.1.0.weight`
is `params["features_2"]["conv_1_0"]["kernel"]`, the classifier is
`params["classifier_1"]` (torchvision's `classifier = Sequential(Dropout, Linear)`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery_jax.models.layers import BatchNorm, conv2d, dense
from lottery_jax.models.registry import register

Dtype = Any

# (expand ratio t, output channels c, repeats n, first stride s), torchvision's table.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# The CIFAR strides: the second stage does not downsample (nor does the stem).
_CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1)) + _SETTINGS[2:]


class InvertedResidual(nn.Module):
  """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection."""

  in_planes: int
  out_planes: int
  stride: int
  expand_ratio: int
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: BatchNorm(use_running_average=not train, affine=self.bn_affine,
                                dtype=self.dtype, name=name)
    hidden = self.in_planes * self.expand_ratio
    out, i = x, 0
    if self.expand_ratio != 1:
      out = conv2d(hidden, 1, dtype=self.dtype, name="conv_0_0")(out)
      out = nn.relu6(bn("conv_0_1")(out))
      i = 1
    out = conv2d(hidden, 3, stride=self.stride, groups=hidden, dtype=self.dtype,
                 name=f"conv_{i}_0")(out)
    out = nn.relu6(bn(f"conv_{i}_1")(out))
    out = conv2d(self.out_planes, 1, dtype=self.dtype, name=f"conv_{i + 1}")(out)
    out = bn(f"conv_{i + 2}")(out)
    if self.stride == 1 and self.in_planes == self.out_planes:
      out = out + x
    return out


class MobileNetV2(nn.Module):
  """torchvision MobileNetV2.

  Attributes:
    num_classes: outputs.
    dropout_rate: dropout before the classifier. torchvision trains with 0.2; the
      default here is 0 so that `apply(..., train=True)` needs no dropout RNG (the
      library's convention). With a rate > 0 pass `rngs={"dropout": key}`.
    bn_affine: learnable BatchNorm scale/bias.
    cifar_strides: stride 1 in the stem and the second stage (`cifar_mobilenet_v2`).
    dtype: computation dtype.
  """

  num_classes: int = 1000
  dropout_rate: float = 0.0
  bn_affine: bool = True
  cifar_strides: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = lambda name: BatchNorm(use_running_average=not train, affine=self.bn_affine,
                                dtype=self.dtype, name=name)
    x = conv2d(32, 3, stride=1 if self.cifar_strides else 2, dtype=self.dtype,
               name="features_0_0")(x)
    x = nn.relu6(bn("features_0_1")(x))
    in_planes, idx = 32, 1
    for t, c, n, s in _CIFAR_SETTINGS if self.cifar_strides else _SETTINGS:
      for i in range(n):
        x = InvertedResidual(in_planes, c, s if i == 0 else 1, t, bn_affine=self.bn_affine,
                             dtype=self.dtype, name=f"features_{idx}")(x, train)
        in_planes, idx = c, idx + 1
    x = conv2d(1280, 1, dtype=self.dtype, name=f"features_{idx}_0")(x)
    x = nn.relu6(bn(f"features_{idx}_1")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, 1280, dtype=self.dtype, name="classifier_1")(x)


@register("mobilenet_v2", input_shape=(224, 224, 3), classifier=("classifier_1",),
          family="imagenet")
def mobilenet_v2(num_classes: int = 1000, **kw) -> MobileNetV2:
  """MobileNetV2 (3,504,872 params at 1000 classes). kw: `dropout_rate`, `bn_affine`, `dtype`."""
  return MobileNetV2(num_classes=num_classes, **kw)


@register("cifar_mobilenet_v2", input_shape=(32, 32, 3), classifier=("classifier_1",),
          family="cifar")
def cifar_mobilenet_v2(num_classes: int = 10, **kw) -> MobileNetV2:
  """MobileNetV2 with CIFAR strides (2,236,682 params at 10 classes, as `mobilenet_v2`'s:
  strides change no shapes of weights).

  kw: `dropout_rate`, `bn_affine`, `dtype`.
  """
  return MobileNetV2(num_classes=num_classes, cifar_strides=True, **kw)
