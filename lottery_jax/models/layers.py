"""Layers shared by the model zoo: PyTorch-exact BatchNorm and conv helpers.

Weights arrive from PyTorch (torchvision, the lottery-jackpots checkpoints), so
normalisation and padding follow PyTorch, not Flax defaults. Module names in the
models mirror PyTorch state-dict keys with `.` written as `_` (`layer1.0.conv1`
is the Flax path `("layer1_0", "conv1")`), which lets `lottery_jax.convert` map
weights one to one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from lottery_jax.models import conv as conv_lowering

Dtype = Any

# torchvision's conv init (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# He et al. CIFAR ResNets and the jackpot reference (`kaiming_normal_`, fan_in).
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default for nn.Linear / nn.Conv2d: kaiming_uniform_(a=sqrt(5)),
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's exact conventions.

  What it does (all of it as `torch.nn.BatchNorm1d/2d` in float32):

  * Normalisation: `y = (x - mean) / sqrt(var + eps) * scale + bias` with
    `eps = 1e-5`. In training mode `mean`/`var` are the batch statistics over all
    axes but the last (batch and spatial), and `var` is the *biased* variance
    (divide by n), computed in two passes (`mean((x - mean)**2)`). The backward
    pass is written out (`batch_norm_train`), not left to autodiff.
  * Running averages, training mode only (never during `init`):
    `running = (1 - momentum) * running + momentum * batch_stat` with PyTorch's
    `momentum = 0.1`. The running variance is fed the *unbiased* batch variance
    `var * n / (n - 1)`, n = number of reduced elements per channel, as PyTorch
    does. (PyTorch raises for n == 1; here n - 1 is clamped to 1.)
  * Eval mode normalises with the running averages.
  * `affine=False` drops `scale` and `bias` (strong tickets use non-affine BN;
    PyTorch's `affine=False`).
  * Names match `flax.linen.BatchNorm`: params `scale`, `bias`; batch_stats `mean`,
    `var` (PyTorch's `weight`, `bias`, `running_mean`, `running_var`).
    `num_batches_tracked` is not kept (it only matters for `momentum=None`).

  How `flax.linen.BatchNorm` differs: its `momentum` is the *decay* of the running
  average (PyTorch 0.1 is Flax 0.9; Flax's default 0.99 is PyTorch 0.01), its
  default epsilon is 1e-5 as here, it updates the running variance with the
  *biased* batch variance, and by default computes the variance as
  `E[x^2] - E[x]^2` (`use_fast_variance=True`). After one training step from the
  same state the two give the same outputs but different `var` by a factor
  n/(n-1) on the update term; this layer matches PyTorch checkpoints exactly.

  Data parallelism: under `jax.jit` with the batch sharded over a `Mesh` axis, the
  `jnp.mean` over the batch axis is already the *global* mean (XLA inserts the
  all-reduce), so the statistics are those of the whole global batch and no
  `axis_name` is needed (that argument only matters under `pmap`/`shard_map`,
  which this library does not use). This is PyTorch's SyncBatchNorm behaviour,
  not per-device DataParallel statistics.

  Attributes:
    use_running_average: eval mode if True; may also be passed at call time.
    momentum: PyTorch momentum (weight of the new batch statistic).
    epsilon: added to the variance.
    affine: learn `scale` and `bias`.
    dtype: dtype of the output (statistics are always computed in float32).
    param_dtype: dtype of `scale`, `bias`.
  """

  use_running_average: bool | None = None
  momentum: float = 0.1
  epsilon: float = 1e-5
  affine: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalises `x` over all axes but the last.

    Args:
      x: input, channels last.
      use_running_average: overrides the attribute of the same name.

    Returns:
      The normalised input, in `dtype` (or `x.dtype`).
    """
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean",
                                 lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var",
                                lambda: jnp.ones((features,), jnp.float32))

    x32 = x.astype(jnp.float32)
    if self.affine:
      scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
      bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
      scale32, bias32 = scale.astype(jnp.float32), bias.astype(jnp.float32)
    else:
      scale32 = bias32 = None
    if use_running_average:
      mean, var = running_mean.value, running_var.value
      y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
      if self.affine:
        y = y * scale32 + bias32
      return y.astype(self.dtype or x.dtype)

    ones, zeros = jnp.ones((features,), jnp.float32), jnp.zeros((features,), jnp.float32)
    y, mean, var = batch_norm_train(x32, ones if scale32 is None else scale32,
                                    zeros if bias32 is None else bias32, self.epsilon)
    if not self.is_initializing():
      n = math.prod(x.shape[:-1])
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      running_mean.value = (1.0 - m) * running_mean.value + m * mean
      running_var.value = (1.0 - m) * running_var.value + m * unbiased
    return y.astype(self.dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
  """Training-mode batch normalisation over all axes but the last, with a hand-written
  backward pass.

  Returns `(y, mean, var)`: `y = (x - mean) / sqrt(var + eps) * scale + bias` with the
  batch mean and the biased two-pass variance `mean((x - mean)**2)`.

  Why a custom VJP: differentiated automatically, the normalisation leaves XLA five
  or six activation-sized elementwise passes per layer in the backward step (measured
  on XLA:CPU, wide ResNet-32: ~0.4 s of non-convolution work per step against
  PyTorch's ~0.27 s). The textbook backward needs two: one fused reduction
  (`sum(g)`, `sum(g * xhat)`) and one elementwise pass,
  `dx = rstd * (g*scale - mean(g*scale) - xhat * mean(g*scale*xhat))`
  (plus the terms of any cotangents on `mean`/`var`). `xhat` is recomputed from the
  saved `x`, `mean` and `rstd`; nothing activation-sized is saved beyond `x`.
  """
  return _bn_train_forward(x, scale, bias, eps)[0]


def _bn_train_fwd_symbolic(x, scale, bias, eps):
  # `symbolic_zeros=True`: the primals arrive wrapped (value, perturbed).
  return _bn_train_forward(x.value, scale.value, bias.value, eps)


def _bn_train_forward(x, scale, bias, eps):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  rstd = jax.lax.rsqrt(var + eps)
  y = (x - mean) * rstd * scale + bias
  return (y, mean, var), (x, mean, rstd, scale)


def _bn_train_bwd(eps, res, cotangents):
  del eps
  x, mean, rstd, scale = res
  gy, gmean, gvar = cotangents
  if isinstance(gy, SymbolicZero):
    gy = jnp.zeros(x.shape, x.dtype)
  axes = tuple(range(x.ndim - 1))
  n = math.prod(x.shape[:-1])
  xhat = (x - mean) * rstd
  dbias = jnp.sum(gy, axis=axes)
  dscale = jnp.sum(gy * xhat, axis=axes)
  # d/dx of y through xhat, with mean(g*scale) = scale*dbias/n and
  # mean(g*scale*xhat) = scale*dscale/n; then the direct paths of mean and var
  # (d mean/dx = 1/n, d var/dx = 2 (x - mean)/n).
  dx = (scale * rstd) * (gy - (dbias + xhat * dscale) / n)
  # The statistics usually only feed the running averages, so their cotangents are
  # symbolic zeros: skipping them saves two activation-sized passes per layer.
  if not isinstance(gmean, SymbolicZero):
    dx = dx + gmean / n
  if not isinstance(gvar, SymbolicZero):
    dx = dx + (2.0 / n) * gvar * (x - mean)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_bn_train_fwd_symbolic, _bn_train_bwd, symbolic_zeros=True)


def pad2d(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's symmetric `padding=p` for 2-D convs and pools (never Flax's SAME,
  which pads stride-2 convs asymmetrically)."""
  return ((p, p), (p, p))


def conv2d(features: int, kernel: int, *, stride: int = 1, padding: int | None = None,
           groups: int = 1, use_bias: bool = False, dtype: Dtype | None = None,
           kernel_init=kaiming_fan_out, name: str | None = None,
           in_features: int | None = None) -> nn.Conv:
  """A `nn.Conv` laid out like `torch.nn.Conv2d(…, padding=(kernel - 1) // 2)`.

  Args:
    features: output channels.
    kernel: square kernel size.
    stride: stride.
    padding: symmetric padding; default `(kernel - 1) // 2`.
    groups: `feature_group_count` (depthwise when equal to the input channels).
    use_bias: add a bias.
    dtype: computation dtype.
    kernel_init: kernel initialiser.
    name: module name.
    in_features: input channels, only needed for PyTorch's bias init.

  Returns:
    The conv module (kernel HWIO, a plain `kernel` param leaf), lowered through
    `lottery_jax.models.conv.conv_general_dilated` (XLA's convolution unless a
    faster CPU lowering is selected there; parameters are those of `nn.Conv`).
  """
  if padding is None:
    padding = (kernel - 1) // 2
  bias_init = nn.initializers.zeros
  if use_bias and in_features is not None:
    bias_init = torch_bias_init(in_features // groups * kernel * kernel)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad2d(padding),
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype,
                 kernel_init=kernel_init, bias_init=bias_init,
                 conv_general_dilated=conv_lowering.conv_general_dilated, name=name)


def dense(features: int, in_features: int, *, dtype: Dtype | None = None,
          name: str | None = None) -> nn.Dense:
  """A `nn.Dense` initialised like `torch.nn.Linear(in_features, features)`."""
  return nn.Dense(features, dtype=dtype, kernel_init=torch_default,
                  bias_init=torch_bias_init(in_features), name=name)
