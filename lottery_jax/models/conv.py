"""Selectable lowerings of 2-D convolutions for the CPU backend.

Every model conv goes through `conv_general_dilated` (plugged into
`flax.linen.Conv(conv_general_dilated=...)`, so parameter names and shapes,
`kernel` HWIO and `bias`, are exactly those of a plain `nn.Conv`). Lowerings:

* "xla": `lax.conv_general_dilated` (on this jaxlib the CPU convs run in
  YNNPACK fusions).
* "patches": im2col + one matmul, with a custom VJP whose backward is matmuls
  (`dW = patches^T @ dy`, input grad `dy @ W^T` then col2im by padded adds).
* "taps": XLA's forward and input gradient; the stride-1 weight gradient as
  kh*kw GEMMs over flat shifted views of the padded input (no im2col), and the
  residual input read through an optimisation barrier.
* "barrier": XLA's forward and both gradient convs, with only the residual input
  read through an optimisation barrier (stops the recomputation described below).

Profile of the wide ResNet-32 training step (batch 128, 2 shared cores, under
load; BENCHMARKS.md "Against PyTorch (CPU)"): convolutions (YNNPACK) ~47%, of
which weight-gradient convs ~20% and forward ~18%; `transpose_copy` fusions ~39%:
the NHWC -> batch-minor transposes feeding the weight-gradient convs, into which
XLA fuses (recomputes) the whole BN/ReLU/residual chain of earlier blocks.
Measured on a quiet machine (`benchmarks/vs_pytorch.py --impls xla,barrier,taps`,
one process, interleaved, medians of 5): search step xla 2,657 ms, barrier
2,564 ms, taps 2,825 ms; dense step 2,988 / 2,843 / 6,664 ms. "patches" is 2-4x
slower than "xla" per conv (XLA:CPU builds the im2col slowly). "barrier"'s 3-5%
is inside the run-to-run spread, so `DEFAULT_IMPL` stays "xla": "auto" picks
XLA's convolution everywhere until a lowering measures clearly faster.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Which lowering "auto" picks on the CPU backend; other backends always use XLA's.
DEFAULT_IMPL = "xla"

_NHWC = ("NHWC", "HWIO", "NHWC")


def _out_size(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


def _patches(x: jax.Array, kh: int, kw: int, strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """im2col: (N, H, W, C) -> (N, Ho, Wo, kh*kw*C), columns ordered (i, j, c) as
  an HWIO kernel reshaped to (kh*kw*C, O)."""
  (plo, phi), (qlo, qhi) = padding
  sh, sw = strides
  n, h, w, c = x.shape
  ho, wo = _out_size(h, kh, sh, plo, phi), _out_size(w, kw, sw, qlo, qhi)
  if kh == kw == 1 and padding == ((0, 0), (0, 0)):
    return x[:, ::sh, ::sw, :][:, :ho, :wo, :]
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (plo, phi, 0), (qlo, qhi, 0), (0, 0, 0)))
  cols = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _col2im(dp: jax.Array, x_shape, kh: int, kw: int, strides, padding) -> jax.Array:
  """Adjoint of `_patches`: (N, Ho, Wo, kh*kw*C) -> (N, H, W, C)."""
  (plo, phi), (qlo, qhi) = padding
  sh, sw = strides
  n, h, w, c = x_shape
  _, ho, wo, _ = dp.shape
  hp, wp = h + plo + phi, w + qlo + qhi
  zero = jnp.zeros((), dp.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      blk = dp[..., (i * kw + j) * c:(i * kw + j + 1) * c]
      # Place block (i, j) at rows i + ho*sh of the padded input, then crop the
      # padding: negative low/high pads do the crop in the same op.
      cfg = ((0, 0, 0),
             (i - plo, hp - i - ((ho - 1) * sh + 1) - phi, sh - 1),
             (j - qlo, wp - j - ((wo - 1) * sw + 1) - qhi, sw - 1),
             (0, 0, 0))
      placed = lax.pad(blk, zero, cfg)
      out = placed if out is None else out + placed
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_patches(x, w, strides, padding):
  return _conv_patches_fwd(x, w, strides, padding)[0]


def _conv_patches_fwd(x, w, strides, padding):
  kh, kw, c, o = w.shape
  p = _patches(x, kh, kw, strides, padding)
  y = jnp.dot(p.reshape(-1, kh * kw * c), w.reshape(kh * kw * c, o))
  return y.reshape(*p.shape[:3], o).astype(x.dtype), (x, w)


def _conv_patches_bwd(strides, padding, res, g):
  x, w = res
  kh, kw, c, o = w.shape
  gm = g.reshape(-1, o)
  p = _patches(x, kh, kw, strides, padding).reshape(-1, kh * kw * c)
  dw = jnp.dot(p.T, gm).reshape(w.shape).astype(w.dtype)
  dp = jnp.dot(gm, w.reshape(kh * kw * c, o).T).reshape(*g.shape[:3], kh * kw * c)
  if kh == kw == 1 and padding == ((0, 0), (0, 0)) and strides == (1, 1):
    dx = dp
  else:
    dx = _col2im(dp, x.shape, kh, kw, strides, padding)
  return dx.astype(x.dtype), dw


_conv_patches.defvjp(_conv_patches_fwd, _conv_patches_bwd)


def _weight_grad_taps(x, g, kh: int, kw: int, padding) -> jax.Array:
  """dW of a stride-1 conv as kh*kw matmuls over flat, shifted views (no im2col).

  With x padded to (N, Hp, Wp, C) and g zero-padded to (N, Hp, Wp, O), flattening
  both to rows makes tap (i, j) a row offset of i*Wp + j:
  `dW[i, j] = xf[off:off + L]^T @ gf[:L]`. The zero rows of g absorb the wrap-around
  between image rows and images, so each tap is one contiguous slice and one GEMM
  contracting over the N*Hp*Wp rows (no transposed copies, no concatenation).
  """
  (plo, phi), (qlo, qhi) = padding
  n, _, _, c = x.shape
  _, ho, wo, o = g.shape
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (plo, phi, 0), (qlo, qhi, 0), (0, 0, 0)))
  hp, wp = xp.shape[1:3]
  gp = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, hp - ho, 0), (0, wp - wo, 0), (0, 0, 0)))
  xf, gf = xp.reshape(-1, c), gp.reshape(-1, o)
  rows = xf.shape[0] - ((kh - 1) * wp + (kw - 1))
  taps = []
  for i in range(kh):
    for j in range(kw):
      off = i * wp + j
      taps.append(lax.dot_general(lax.slice_in_dim(xf, off, off + rows), gf[:rows],
                                  (((0,), (0,)), ((), ()))))
  return jnp.stack(taps).reshape(kh, kw, c, o)


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_taps(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding)


def _conv_save_inputs_fwd(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding), (x, w)


def _conv_taps_bwd(strides, padding, res, g):
  # The barrier makes the backward read the stored input: without it XLA fuses
  # the whole elementwise chain that produced x (BN, ReLU, the residual adds of
  # every earlier block) into the transposes feeding its weight-gradient conv.
  x, w = lax.optimization_barrier(res)
  _, vjp_x = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding), x)
  (dx,) = vjp_x(g)
  if strides == (1, 1):
    dw = _weight_grad_taps(x, g, w.shape[0], w.shape[1], padding).astype(w.dtype)
  else:
    _, vjp_w = jax.vjp(lambda w_: _xla_conv(x, w_, strides, padding), w)
    (dw,) = vjp_w(g)
  return dx, dw


_conv_taps.defvjp(_conv_save_inputs_fwd, _conv_taps_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_barrier(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding)


def _conv_barrier_bwd(strides, padding, res, g):
  # XLA's own gradient convs, but on the stored input read through a barrier, so
  # the transposes feeding the weight-gradient conv copy a buffer instead of
  # recomputing the BN/ReLU/residual chain that produced it.
  x, w = lax.optimization_barrier(res)
  _, vjp = jax.vjp(lambda x_, w_: _xla_conv(x_, w_, strides, padding), x, w)
  return vjp(g)


_conv_barrier.defvjp(_conv_save_inputs_fwd, _conv_barrier_bwd)


def conv2d_patches(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                   padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution as im2col + matmul, with a matmul VJP.

  Args:
    x: input (N, H, W, C).
    w: kernel (kh, kw, C, O).
    strides: (sh, sw).
    padding: ((lo, hi), (lo, hi)) or "SAME"/"VALID" (as `lax.conv_general_dilated`).

  Returns:
    (N, Ho, Wo, O), equal to `lax.conv_general_dilated` up to float rounding.
  """
  return _conv_patches(x, w, *_normalise(x, w, strides, padding))


def conv2d_taps(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution: XLA's forward and input gradient, the weight
  gradient of stride-1 convs as per-tap GEMMs (`_weight_grad_taps`). Arguments as
  `conv2d_patches`."""
  return _conv_taps(x, w, *_normalise(x, w, strides, padding))


def conv2d_barrier(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                   padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution: XLA's forward and gradients, the backward reading
  its stored input through an optimisation barrier. Arguments as `conv2d_patches`."""
  return _conv_barrier(x, w, *_normalise(x, w, strides, padding))


def _normalise(x, w, strides, padding):
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(v < 0 for pair in padding for v in pair):
    raise ValueError(f"negative padding is not supported here, got {padding}")
  return strides, padding


def _patches_applicable(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  if dimension_numbers is None:
    return False
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == nhwc and jnp.issubdtype(lhs.dtype, jnp.floating)


IMPLS = ("xla", "patches", "taps", "barrier")
_override: list[str] = []


@contextlib.contextmanager
def use_impl(impl: str):
  """Within the block, "auto" resolves to `impl` on every backend (benchmarks and
  tests; jitted functions keep the lowering they were traced with)."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  _override.append(impl)
  try:
    yield
  finally:
    _override.pop()


def resolve_impl(impl: str = "auto") -> str:
  """The lowering `impl` stands for at trace time ("auto": `use_impl`'s, else
  `DEFAULT_IMPL` on the CPU backend and "xla" elsewhere)."""
  if impl == "auto":
    if _override:
      return _override[-1]
    return DEFAULT_IMPL if jax.default_backend() == "cpu" else "xla"
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be 'auto' or one of {IMPLS}, got {impl!r}")
  return impl


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, impl: str = "auto"):
  """`lax.conv_general_dilated` with a selectable CPU lowering.

  Same arguments and result as `lax.conv_general_dilated`. `impl`: "auto" (see
  `resolve_impl`), "xla", "patches" (im2col + matmul, matmul VJP) or "taps" (XLA's
  forward and input gradient, weight gradient as per-tap GEMMs, residual read
  through an optimisation barrier). Cases the alternatives do not implement
  (not 2-D NHWC/HWIO, dilation, feature groups, `preferred_element_type`) always
  use XLA's convolution.
  """
  impl = resolve_impl(impl)
  if impl != "xla" and preferred_element_type is None and _patches_applicable(
      lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count):
    strides, pads = _normalise(lhs, rhs, window_strides, padding)
    if impl == "patches":
      return _conv_patches(lhs, rhs, strides, pads)
    if impl == "barrier":
      return _conv_barrier(lhs, rhs, strides, pads)
    return _conv_taps(lhs, rhs, strides, pads)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
