"""Selectable lowerings of 2-D convolutions for the CPU backend.

Every model conv goes through `conv_general_dilated` (plugged into
`flax.linen.Conv(conv_general_dilated=...)`, so parameter names and shapes,
`kernel` HWIO and `bias`, are exactly those of a plain `nn.Conv`). Lowerings:

* "xla": `lax.conv_general_dilated` (on this jaxlib the CPU convs run in
  YNNPACK fusions).
* "torch": PyTorch's convolution (oneDNN on x86), forward and both gradients, as
  XLA:CPU custom calls that read and write XLA's buffers in place (`conv2d_torch`).
* "patches": im2col + one matmul, with a custom VJP whose backward is matmuls
  (`dW = patches^T @ dy`, input grad `dy @ W^T` then col2im by padded adds).
* "taps": XLA's forward and input gradient; the stride-1 weight gradient as
  kh*kw GEMMs over flat shifted views of the padded input (no im2col), and the
  residual input read through an optimisation barrier.
* "barrier": XLA's forward and both gradient convs, with only the residual input
  read through an optimisation barrier (stops the recomputation described below).

"auto" (the default of every model) means: on the CPU backend, in a one-device
process where PyTorch is installed, "torch" for grouped convolutions and for
those with at least `TORCH_MIN_ROWS` output rows (N * Ho * Wo), "xla" for smaller
ones; "xla" on every other backend and whenever PyTorch is missing or several
devices share the computation (the custom call would run on gathered operands).
The environment variable LOTTERY_JAX_CONV_IMPL=<impl> (or `use_impl`) overrides it.

Why: XLA:CPU's convolutions, above all their backward pass, are 2-4x slower than
oneDNN's (profile of the wide ResNet-32 training step: convolutions ~47%, weight-
gradient convs ~20%; `transpose_copy` fusions ~39%, the NHWC -> batch-minor
transposes feeding the weight-gradient convs, into which XLA fuses (recomputes)
the BN/ReLU/residual chain). Measured (BENCHMARKS.md "Against PyTorch (CPU)",
`benchmarks/conv_lowering.py`): a training-mode gradient with "torch" takes 0.44x
the time of "xla" for the wide ResNet-32 (batch 128), 0.67x for ResNet-20, 0.25x for
MobileNetV2, but 1.04x for ResNet-50 at 128 px, batch 8, and 1.4-2.7x (three runs)
for the tiny digits CNN: small convs, above all few output rows with deep channels,
are faster in XLA, which is what `TORCH_MIN_ROWS` keeps there. "auto" measured at
or under the better of the two for every model. "patches" is 2-4x slower than
"xla" per conv (XLA:CPU builds the im2col slowly); "taps" and "barrier" are within
a few percent of "xla".
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# What "auto" prefers on the CPU backend (other backends always use XLA's), and the
# smallest dense conv (output rows N * Ho * Wo) it hands to PyTorch: below this the
# custom call's fixed cost (~0.1-0.3 ms) and XLA's small-conv code are as fast or
# faster (`benchmarks/conv_lowering.py`). Grouped (depthwise) convs always go to
# PyTorch: XLA:CPU's are several times slower at every size measured.
DEFAULT_IMPL = "torch"
TORCH_MIN_ROWS = 8192
ENV_VAR = "LOTTERY_JAX_CONV_IMPL"

_NHWC = ("NHWC", "HWIO", "NHWC")


def _window(kernel_hw, dilation) -> tuple[int, ...]:
  """Spatial extent of a kernel with dilation `dilation` (`(k - 1) * d + 1`)."""
  return tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation))


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


# --- "torch": PyTorch's CPU convolution (oneDNN) behind a host callback -------------

_TORCH_DTYPES = ("float32", "float64")


@functools.lru_cache(maxsize=None)
def torch_available() -> bool:
  """Whether PyTorch can be imported (the "torch" lowering's one requirement)."""
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except (ImportError, OSError) as e:  # OSError: an installed wheel whose libraries fail to load
    if not isinstance(e, ModuleNotFoundError):
      logging.warning("PyTorch is installed but does not import (%s); conv 'auto' uses XLA's "
                      "convolution", e)
    return False
  return True


# The host side runs as a legacy XLA:CPU custom call whose C entry point is a ctypes
# callback into Python: XLA hands over raw pointers to its buffers, so PyTorch reads the
# operands and writes the results in place (NumPy/torch views, no copies). This is the
# cheap way in: `jax.pure_callback` first copies every operand into a new jax.Array
# (~8 ms per 16 MB activation here, ~0.4 s of a wide ResNet-32 step) and copies the
# results again. The static arguments travel in the custom call's opaque string.
_TARGETS = {"fwd": "lottery_jax_torch_conv2d_fwd", "bwd": "lottery_jax_torch_conv2d_bwd"}
_CUSTOM_CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
_callbacks: dict[str, object] = {}   # keeps the ctypes thunks alive for the process
_host_errors: list[BaseException] = []


def _buffer(ptr: int, shape, dtype: np.dtype) -> np.ndarray:
  n = int(np.prod(shape))
  raw = (ctypes.c_byte * (n * dtype.itemsize)).from_address(ptr)
  return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)


def _nchw(t):
  return t.permute(0, 3, 1, 2)   # NHWC buffer -> NCHW tensor with channels-last strides


@functools.lru_cache(maxsize=4096)
def _parse_opaque(opaque: bytes) -> tuple[dict, np.dtype, tuple[int, ...]]:
  cfg = json.loads(opaque)
  kh, kw, i, o = cfg["w"]
  return cfg, np.dtype(cfg["dtype"]), (o, kh, kw, i)


def _torch_conv_host(kind: str, out, ins, opaque, opaque_len, _status) -> None:
  cfg, dtype, w_ohwi = _parse_opaque(ctypes.string_at(opaque, opaque_len))
  try:
    import torch  # pylint: disable=import-outside-toplevel
    x = _nchw(torch.from_numpy(_buffer(ins[0], cfg["x"], dtype)))
    # The kernel arrives (and its gradient leaves) in OHWI memory order (the custom
    # call asks XLA for that layout): an OIHW tensor with channels-last strides,
    # oneDNN's preferred weight layout, without a copy.
    w = _nchw(torch.from_numpy(_buffer(ins[1], w_ohwi, dtype)))
    args = (cfg["strides"], cfg["padding"], cfg["dilation"], False, [0, 0], cfg["groups"])
    with torch.no_grad():
      if kind == "fwd":
        y = _nchw(torch.from_numpy(_buffer(out, cfg["y"], dtype)))
        y.copy_(torch.ops.aten.convolution(x, w, None, *args))
      else:
        outs = ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))
        g = _nchw(torch.from_numpy(_buffer(ins[2], cfg["y"], dtype)))
        dx, dw, _ = torch.ops.aten.convolution_backward(g, x, w, None, *args,
                                                        [True, True, False])
        _nchw(torch.from_numpy(_buffer(outs[0], cfg["x"], dtype))).copy_(dx)
        _nchw(torch.from_numpy(_buffer(outs[1], w_ohwi, dtype))).copy_(dw)
  except BaseException as e:  # pylint: disable=broad-except
    # A C callback cannot raise into XLA: record, log, and poison the results with NaN,
    # which the training loop's finiteness check stops on.
    _host_errors.append(e)
    logging.exception("PyTorch convolution (conv impl 'torch') failed; its outputs are NaN")
    if kind == "fwd":
      _buffer(out, cfg["y"], dtype)[...] = np.nan
    else:
      outs = ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))
      _buffer(outs[0], cfg["x"], dtype)[...] = np.nan
      _buffer(outs[1], w_ohwi, dtype)[...] = np.nan


def _register_targets() -> None:
  if _callbacks:
    return
  for kind, name in _TARGETS.items():
    thunk = _CUSTOM_CALL(functools.partial(_torch_conv_host, kind))
    _callbacks[kind] = thunk
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(ctypes.cast(thunk, ctypes.c_void_p).value),
                                platform="cpu", api_version=0)


# Memory orders (major to minor) the custom calls ask XLA for: activations NHWC as they
# are, HWIO kernels (and their gradients) as OHWI.
_ROW_MAJOR, _OHWI = (0, 1, 2, 3), (3, 0, 1, 2)


def _torch_call(kind, out_shapes, dtype, *args, **cfg):
  _register_targets()
  opaque = json.dumps({"dtype": np.dtype(dtype).name, **cfg})
  # Operands are (x, w[, g]) and results (y) or (dx, dw): only the kernel is OHWI.
  in_layouts = [_OHWI if i == 1 else _ROW_MAJOR for i in range(len(args))]
  out_layouts = [_OHWI if i == 1 else _ROW_MAJOR for i in range(len(out_shapes))]
  results = [jax.ShapeDtypeStruct(s, dtype) for s in out_shapes]
  call = jax.ffi.ffi_call(_TARGETS[kind], results, custom_call_api_version=3,
                          legacy_backend_config=opaque, vmap_method="sequential",
                          input_layouts=in_layouts, output_layouts=out_layouts)
  return call(*args) if kind == "bwd" else call(*args)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_torch(x, w, strides, padding, dilation, groups):
  return _conv_torch_fwd(x, w, strides, padding, dilation, groups)[0]


def _torch_cfg(x, w, strides, padding, dilation, groups):
  n, h, wd, _ = x.shape
  wh, ww = _window(w.shape[:2], dilation)
  ho = _out_size(h, wh, strides[0], padding[0], padding[0])
  wo = _out_size(wd, ww, strides[1], padding[1], padding[1])
  o = w.shape[3]
  return dict(x=list(x.shape), w=list(w.shape), y=[n, ho, wo, o], strides=list(strides),
              padding=list(padding), dilation=list(dilation), groups=groups)


def _conv_torch_fwd(x, w, strides, padding, dilation, groups):
  # `padding` is symmetric here, one int per spatial dim (see `conv2d_torch`).
  cfg = _torch_cfg(x, w, strides, padding, dilation, groups)
  y = _torch_call("fwd", [tuple(cfg["y"])], x.dtype, x, w, **cfg)
  return y, (x, w)


def _conv_torch_bwd(strides, padding, dilation, groups, res, g):
  x, w = res
  cfg = _torch_cfg(x, w, strides, padding, dilation, groups)
  dx, dw = _torch_call("bwd", [x.shape, w.shape], x.dtype, x, w, g.astype(x.dtype), **cfg)
  return dx, dw


_conv_torch.defvjp(_conv_torch_fwd, _conv_torch_bwd)


def conv2d_torch(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                 padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0)),
                 dilation: Sequence[int] = (1, 1), groups: int = 1) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution computed by PyTorch (oneDNN on x86), forward and
  both gradients, as XLA:CPU custom calls with a custom VJP.

  CPU backend only (the custom calls are registered for "cpu"; XLA reads and writes
  its own buffers in place). Under automatic SPMD partitioning over several devices
  XLA runs the call on whole (gathered) operands, so "auto" picks it for one-device
  processes only. Asymmetric padding is applied in JAX first (PyTorch pads
  symmetrically). Not differentiable twice; vmap runs one call per element.
  Arguments as `conv2d_patches`, plus `dilation` (kernel dilation) and `groups`
  (feature groups: the kernel is (kh, kw, C / groups, O)).
  """
  strides, pads = _normalise(x, w, strides, padding, dilation)
  if any(lo != hi for lo, hi in pads):
    x = lax.pad(x, jnp.zeros((), x.dtype),
                ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)))
    pads = ((0, 0), (0, 0))
  return _conv_torch(x, w, strides, tuple(lo for lo, _ in pads),
                     tuple(int(d) for d in dilation), int(groups))


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


def _normalise(x, w, strides, padding, dilation=(1, 1)):
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], _window(w.shape[:2], dilation), strides,
                                  padding)
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
  return _is_nhwc(lhs, rhs, dimension_numbers) and jnp.issubdtype(lhs.dtype, jnp.floating)


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  """Whether a conv's operands are 2-D NHWC x HWIO -> NHWC (the layout every non-XLA
  lowering implements)."""
  if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
    return False
  return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _torch_applicable(lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count) -> bool:
  if batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or ())):
    return False
  return (_is_nhwc(lhs, rhs, dimension_numbers) and str(lhs.dtype) in _TORCH_DTYPES
          and lhs.dtype == rhs.dtype)


def _output_rows(lhs, rhs, strides, padding, rhs_dilation, dimension_numbers) -> int | None:
  """N * Ho * Wo of an NHWC/HWIO conv (None for other layouts)."""
  if not _is_nhwc(lhs, rhs, dimension_numbers):
    return None
  window = _window(rhs.shape[:2], rhs_dilation or (1, 1))
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
  ho, wo = (_out_size(size, k, s, lo, hi) for size, k, s, (lo, hi)
            in zip(lhs.shape[1:3], window, strides, padding))
  return lhs.shape[0] * ho * wo


IMPLS = ("xla", "patches", "taps", "barrier", "torch")
_override: list[str] = []


@contextlib.contextmanager
def use_impl(impl: str):
  """Within the block, "auto" resolves to `impl` on every backend (benchmarks and
  tests; jitted functions keep the lowering they were traced with). `use_impl("auto")`
  changes nothing (the default's own resolution applies)."""
  if impl == "auto":
    yield
    return
  _check_impl(impl, "conv impl")
  _override.append(impl)
  try:
    yield
  finally:
    _override.pop()


def resolve_impl(impl: str = "auto", rows: int | None = None, groups: int = 1) -> str:
  """The lowering `impl` stands for at trace time.

  "auto": `use_impl`'s, else $LOTTERY_JAX_CONV_IMPL's, else on the CPU backend
  `DEFAULT_IMPL` ("torch" only where PyTorch imports and the process has one device,
  and, when `rows` is given, for convs with >= TORCH_MIN_ROWS output rows or
  `groups` > 1), "xla" elsewhere.
  """
  if impl == "auto":
    if _override:
      return _override[-1]
    env = os.environ.get(ENV_VAR, "auto").strip() or "auto"
    if env != "auto":
      return _check_impl(env, f"${ENV_VAR}")
    if jax.default_backend() != "cpu":
      return "xla"
    if DEFAULT_IMPL == "torch" and (not torch_available() or jax.device_count() > 1
                                    or (rows is not None and rows < TORCH_MIN_ROWS
                                        and groups == 1)):
      return "xla"
    return DEFAULT_IMPL
  return _check_impl(impl, "conv impl")


def _check_impl(impl: str, what: str) -> str:
  """`impl` if it names a lowering usable here, else a ValueError/ImportError naming
  `what` was set to what, and the fix."""
  if impl not in IMPLS:
    raise ValueError(f"{what} must be 'auto' or one of {IMPLS}, got {impl!r}")
  _require(impl)
  return impl


def _require(impl: str) -> None:
  if impl == "torch" and jax.default_backend() != "cpu":
    raise ValueError(f"conv impl 'torch' runs on the CPU backend only (the default backend is "
                     f"{jax.default_backend()!r}); use 'auto' or 'xla' there")
  if impl == "torch" and not torch_available():
    raise ImportError("conv impl 'torch' runs PyTorch's CPU convolution and needs PyTorch: "
                      "pip install torch --index-url https://download.pytorch.org/whl/cpu "
                      "(or pick another impl: " + ", ".join(i for i in IMPLS if i != "torch")
                      + ")")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, impl: str = "auto"):
  """`lax.conv_general_dilated` with a selectable CPU lowering.

  Same arguments and result as `lax.conv_general_dilated`. `impl`: "auto" (see
  `resolve_impl`), "xla", "torch" (PyTorch's convolution as XLA:CPU custom calls),
  "patches" (im2col + matmul, matmul VJP), "taps" (XLA's forward and input
  gradient, weight gradient as per-tap GEMMs, residual read through an
  optimisation barrier) or "barrier". Cases a lowering does not implement use
  XLA's convolution: for "torch", anything but 2-D NHWC/HWIO float32/float64
  without input dilation or batch groups; for the others also kernel dilation and
  feature groups; `preferred_element_type` for all.
  """
  # Only "auto" looks at the conv's size (`resolve_impl`).
  rows = (_output_rows(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers)
          if impl == "auto" else None)
  impl = resolve_impl(impl, rows=rows, groups=feature_group_count)
  if impl == "torch":
    if preferred_element_type is None and _torch_applicable(
        lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count):
      return conv2d_torch(lhs, rhs, window_strides, padding,
                          tuple(rhs_dilation or (1, 1)), feature_group_count)
  elif impl != "xla" and preferred_element_type is None and _patches_applicable(
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
