"""Small networks: the quickstart CNN on 8x8 digits and the lottery-ticket literature's nets.

* `digits_cnn`: the quickstart model (8x8 digits).
* `lenet_300_100`: Frankle & Carbin's MNIST MLP, 784-300-100-C (`fc1`, `fc2`, `fc3`).
* `conv2`, `conv4`, `conv6`: Frankle & Carbin's CIFAR-10 conv nets (VGG-like pairs of
  3x3 convs with bias and 2x2 max-pools, then dense 256-256-C). Optional BatchNorm
  after each conv (`batch_norm=True`), off by default as in the paper.
* `mnist1d_cnn`: a small 1-D CNN for MNIST-1D (inputs (40, 1), NWC).

The flattened features of the MLP heads are in NHWC order; PyTorch flattens NCHW,
so a PyTorch `fc1` for these nets would need its input axis permuted.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery_jax.models.conv import conv_general_dilated
from lottery_jax.models.layers import BatchNorm, dense, pad2d, torch_bias_init, torch_default
from lottery_jax.models.registry import register

Dtype = Any


class DigitsCNN(nn.Module):
  """Three 3x3 convs with BatchNorm, global average pooling, a dense classifier."""

  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64, 128)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), use_bias=False,
                  conv_general_dilated=conv_general_dilated, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name=f"bn{i}")(x)
      x = nn.relu(x)
      if i == 0:
        x = nn.max_pool(x, (2, 2), (2, 2)) if x.shape[1] >= 8 else x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="classifier")(x)


@register("digits_cnn", input_shape=(8, 8, 1), classifier=("classifier",), family="small")
def digits_cnn(num_classes: int = 10, **kw):
  return DigitsCNN(num_classes=num_classes, **kw)


class LeNet300100(nn.Module):
  """Frankle & Carbin's LeNet-300-100: dense 300 -> 100 -> C with ReLU on flat inputs.

  Attributes:
    num_classes: outputs.
    hidden: hidden widths.
    dtype: computation dtype.
  """

  num_classes: int = 10
  hidden: tuple[int, ...] = (300, 100)
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout; accepted for the common signature
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(dense(width, x.shape[-1], dtype=self.dtype, name=f"fc{i + 1}")(x))
    return dense(self.num_classes, x.shape[-1], dtype=self.dtype,
                 name=f"fc{len(self.hidden) + 1}")(x)


class ConvNet(nn.Module):
  """Frankle & Carbin's Conv-2/4/6: `convs` blocks of two 3x3 convs and a 2x2 max-pool.

  Attributes:
    widths: channels of each conv block (two convs per block).
    num_classes: outputs.
    hidden: widths of the dense layers before the classifier.
    batch_norm: BatchNorm (PyTorch conventions) after each conv; off in the paper.
    bn_affine: learnable BatchNorm scale/bias.
    dtype: computation dtype.
  """

  widths: tuple[int, ...] = (64,)
  num_classes: int = 10
  hidden: tuple[int, ...] = (256, 256)
  batch_norm: bool = False
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = 0
    for width in self.widths:
      for _ in range(2):
        k += 1
        fan_in = x.shape[-1] * 9
        x = nn.Conv(width, (3, 3), padding=pad2d(1), dtype=self.dtype,
                    kernel_init=torch_default, bias_init=torch_bias_init(fan_in),
                    conv_general_dilated=conv_general_dilated, name=f"conv{k}")(x)
        if self.batch_norm:
          x = BatchNorm(use_running_average=not train, affine=self.bn_affine,
                        dtype=self.dtype, name=f"bn{k}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(dense(width, x.shape[-1], dtype=self.dtype, name=f"fc{i + 1}")(x))
    return dense(self.num_classes, x.shape[-1], dtype=self.dtype,
                 name=f"fc{len(self.hidden) + 1}")(x)


class MNIST1DCNN(nn.Module):
  """Three strided 1-D convs (kernel 5/3/3, stride 2) with BatchNorm, mean-pool, dense.

  On (40, 1) inputs the feature lengths are 20, 10, 5.

  Attributes:
    num_classes: outputs.
    widths: channels of the three convs.
    bn_affine: learnable BatchNorm scale/bias.
    dtype: computation dtype.
  """

  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64, 64)
  bn_affine: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.widths):
      kernel = 5 if i == 0 else 3
      x = nn.Conv(width, (kernel,), strides=(2,), padding=((kernel // 2, kernel // 2),),
                  use_bias=False, dtype=self.dtype, kernel_init=torch_default,
                  conv_general_dilated=conv_general_dilated, name=f"conv{i + 1}")(x)
      x = BatchNorm(use_running_average=not train, affine=self.bn_affine, dtype=self.dtype,
                    name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=1)
    return dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)


@register("lenet_300_100", input_shape=(28, 28, 1), classifier=("fc3",), family="small")
def lenet_300_100(num_classes: int = 10, **kw) -> LeNet300100:
  """LeNet-300-100 (266,610 params at 10 classes)."""
  return LeNet300100(num_classes=num_classes, **kw)


@register("conv2", input_shape=(32, 32, 3), classifier=("fc3",), family="small")
def conv2(num_classes: int = 10, **kw) -> ConvNet:
  """Conv-2 (4,301,642 params at 10 classes). kw: `batch_norm`, `bn_affine`, `dtype`."""
  return ConvNet(widths=(64,), num_classes=num_classes, **kw)


@register("conv4", input_shape=(32, 32, 3), classifier=("fc3",), family="small")
def conv4(num_classes: int = 10, **kw) -> ConvNet:
  """Conv-4 (2,425,930 params at 10 classes). kw: `batch_norm`, `bn_affine`, `dtype`."""
  return ConvNet(widths=(64, 128), num_classes=num_classes, **kw)


@register("conv6", input_shape=(32, 32, 3), classifier=("fc3",), family="small")
def conv6(num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256), **kw) -> ConvNet:
  """Conv-6 (2,262,602 params at 10 classes). kw: `widths` (the three blocks' channels,
  e.g. (16, 32, 64) for a quarter-width Conv-6 that a CPU can train), `hidden`,
  `batch_norm`, `bn_affine`, `dtype`."""
  return ConvNet(widths=tuple(widths), num_classes=num_classes, **kw)


@register("mnist1d_cnn", input_shape=(40, 1), classifier=("fc",), family="small")
def mnist1d_cnn(num_classes: int = 10, **kw) -> MNIST1DCNN:
  """Small 1-D CNN for MNIST-1D, NWC inputs (40, 1). kw: `widths`, `bn_affine`, `dtype`."""
  return MNIST1DCNN(num_classes=num_classes, **kw)
