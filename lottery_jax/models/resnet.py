"""ResNets in the torchvision layout (ResNet v1.5: stride on the 3x3 conv).

`resnet18/34/50` have the ImageNet stem (7x7/2 conv, 3x3/2 max-pool). `cifar_resnet18`
is the CIFAR ResNet-18 of edge-popup (Ramanujan et al., `cResNet18`) and of most CIFAR
pruning papers: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs reach the first
stage at 32x32 (the ImageNet stem cuts them to 8x8), with torchvision's key names.

Flax paths mirror torchvision's state-dict keys with `.` as `_`
(`layer2.0.downsample.0.weight` is `params["layer2_0"]["downsample_0"]["kernel"]`),
so torchvision weights, and the lottery-jackpots ResNet-50 (whose `fc` is a 1x1
conv), load one to one through `lottery_jax.convert`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery_jax.models.layers import BatchNorm, conv2d, dense, pad2d
from lottery_jax.models.registry import register

Dtype = Any


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  bn_affine: bool = True
  dtype: Dtype | None = None

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: BatchNorm(use_running_average=not train, affine=self.bn_affine,
                                dtype=self.dtype, name=name)
    out = conv2d(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(bn("bn1")(out))
    out = conv2d(self.planes, 3, dtype=self.dtype, name="conv2")(out)
    out = bn("bn2")(out)
    if self.downsample:
      x = conv2d(self.planes, 1, stride=self.stride, dtype=self.dtype, name="downsample_0")(x)
      x = bn("downsample_1")(x)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  bn_affine: bool = True
  dtype: Dtype | None = None

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: BatchNorm(use_running_average=not train, affine=self.bn_affine,
                                dtype=self.dtype, name=name)
    out = conv2d(self.planes, 1, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(bn("bn1")(out))
    out = conv2d(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv2")(out)
    out = nn.relu(bn("bn2")(out))
    out = conv2d(self.planes * 4, 1, dtype=self.dtype, name="conv3")(out)
    out = bn("bn3")(out)
    if self.downsample:
      x = conv2d(self.planes * 4, 1, stride=self.stride, dtype=self.dtype,
                 name="downsample_0")(x)
      x = bn("downsample_1")(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """torchvision ResNet: stem, four stages, global pool, `fc`.

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    layers: blocks per stage.
    num_classes: outputs of `fc`.
    bn_affine: learnable BatchNorm scale/bias (False for strong tickets).
    stem: "imagenet" (7x7/2 conv `conv1`, then a 3x3/2 max-pool) or "cifar" (3x3/1
      conv `conv1`, no max-pool).
    dtype: computation dtype (params stay float32).
  """

  block: type[nn.Module]
  layers: tuple[int, ...]
  num_classes: int = 1000
  bn_affine: bool = True
  stem: str = "imagenet"
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"ResNet stem={self.stem!r} is not one of 'imagenet', 'cifar'")
    if self.stem == "imagenet":
      x = conv2d(64, 7, stride=2, dtype=self.dtype, name="conv1")(x)
    else:
      x = conv2d(64, 3, stride=1, dtype=self.dtype, name="conv1")(x)
    x = BatchNorm(use_running_average=not train, affine=self.bn_affine, dtype=self.dtype,
                  name="bn1")(x)
    x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad2d(1))
    in_planes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers)):
      for i in range(blocks):
        stride = 2 if (stage > 0 and i == 0) else 1
        out_planes = planes * self.block.expansion
        x = self.block(planes, stride=stride,
                       downsample=(stride != 1 or in_planes != out_planes),
                       bn_affine=self.bn_affine, dtype=self.dtype,
                       name=f"layer{stage + 1}_{i}")(x, train)
        in_planes = out_planes
    x = jnp.mean(x, axis=(1, 2))
    return dense(self.num_classes, in_planes, dtype=self.dtype, name="fc")(x)


def _resnet(block, layers, num_classes: int, **kw) -> ResNet:
  return ResNet(block=block, layers=layers, num_classes=num_classes, **kw)


@register("resnet18", input_shape=(224, 224, 3), classifier=("fc",), family="imagenet")
def resnet18(num_classes: int = 1000, **kw) -> ResNet:
  """ResNet-18 (11,689,512 params at 1000 classes). kw: `bn_affine`, `dtype`."""
  return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, **kw)


@register("resnet34", input_shape=(224, 224, 3), classifier=("fc",), family="imagenet")
def resnet34(num_classes: int = 1000, **kw) -> ResNet:
  """ResNet-34 (21,797,672 params at 1000 classes). kw: `bn_affine`, `dtype`."""
  return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, **kw)


@register("resnet50", input_shape=(224, 224, 3), classifier=("fc",), family="imagenet")
def resnet50(num_classes: int = 1000, **kw) -> ResNet:
  """ResNet-50 (25,557,032 params at 1000 classes). kw: `bn_affine`, `dtype`."""
  return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, **kw)


@register("cifar_resnet18", input_shape=(32, 32, 3), classifier=("fc",), family="cifar")
def cifar_resnet18(num_classes: int = 10, **kw) -> ResNet:
  """CIFAR ResNet-18 (3x3/1 stem, no max-pool; 11,173,962 params at 10 classes, the
  figure of edge-popup's and kuangliu's cResNet18). kw: `bn_affine`, `dtype`."""
  return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, stem="cifar", **kw)
