"""Selectable lowerings of 2-D convolutions for the CPU backend.

Every model conv goes through `conv_general_dilated` (plugged into
`flax.linen.Conv(conv_general_dilated=...)`, so parameter names and shapes,
`kernel` HWIO and `bias`, are exactly those of a plain `nn.Conv`). Lowerings:

* "xla": `lax.conv_general_dilated` (on this jaxlib the CPU convs run in
  YNNPACK fusions), except the convs XLA:CPU would run with swapped operands
  (`xla_cpu_swaps_operands`: a kernel window larger than the input's spatial extent,
  as VGG-19's 3x3 convs on 2x2 maps at 32x32 inputs), which are "im2col" on the CPU.
* "torch": PyTorch's convolution (oneDNN on x86), forward and both gradients, as
  XLA:CPU custom calls that read and write XLA's buffers in place (`conv2d_torch`).
* "im2col": the input's shifted slices concatenated on the channel axis + one matmul,
  in plain jnp (`conv_im2col`; any spatial rank, strides, padding, kernel dilation,
  feature groups), differentiated by JAX (`dW = patches^T @ dy`, `dpatches = dy @ W^T`
  scattered back by padded adds; the "patches" lowering, the same with a hand-written
  VJP, was folded into it, BENCHMARKS.md "VGG-19 on the CPU"). Under
  the siblings' vmap each per-copy kernel becomes a batched GEMM instead of a grouped
  convolution; measured slower than "unrolled" for siblings on the CPU and 2-4x slower
  than "xla" per ordinary conv (BENCHMARKS.md), so it is not a `config.model.conv` choice.
* "taps": XLA's forward and input gradient; the stride-1 weight gradient as
  kh*kw GEMMs over flat shifted views of the padded input (no im2col), and the
  residual input read through an optimisation barrier.
* "barrier": XLA's forward and both gradient convs, with only the residual input
  read through an optimisation barrier (stops the recomputation described below).
* "unrolled": XLA's convolution whose vmap is one ordinary conv per sibling.
"im2col", "taps", "barrier" and "unrolled" are reachable through `use_impl` / `impl=`,
not `config.model.conv`.

Swapped operands (why "xla" sends some convs to "im2col"). XLA's algebraic simplifier
(XLA's `ConvOperandSwapper`, `SwapConvolutionOperandsIfBeneficial`) rewrites a conv whose kernel window has more spatial positions
than its input into one that slides the input over the (reversed) kernel, with the batch
as the output feature dimension. XLA:CPU runs that form (`dim_labels=01fb_o01i->f01b`)
outside its fast conv kernels: a 3x3, 512 -> 512 conv on 2x2 maps at batch 128 took
~3.4 s of CPU time forward and as long for its input gradient (0.7 GFLOP/s), against
~18 ms as im2col (BENCHMARKS.md "VGG-19 on the CPU"). Which convs: exactly XLA's test,
on the forward conv and on the input-gradient conv JAX's autodiff would make of it.

"auto" (every model's default) is "xla" unless the conv is traced inside
`use_impl(impl)`: the engine traces its train and eval steps inside
`use_impl(config.model.conv)` (`config.model.conv` in {"xla", "torch"}, default "xla",
recorded in the run's config.json), so the lowering is part of the run's config and
nothing in the environment changes it. Inside `use_impl("torch")` dense convs with
fewer than `TORCH_MIN_ROWS` output rows (N * Ho * Wo) stay on XLA, where they are as
fast or faster (below); grouped convs always go to PyTorch. Explicit "torch" (per call,
or through `use_impl`) raises at trace time where it cannot run as asked: on a non-CPU
backend (ValueError), in a process with several devices (ValueError: XLA cannot
partition a custom call, so a sharded step would gather every conv's operands and run
the whole conv on every device), without PyTorch (ImportError).

"torch" and errors. The convolutions run as XLA:CPU typed-FFI custom calls (api_version
4) whose handler is a ctypes callback into Python. A failure to register them raises
`ConvolutionError` naming the conv being traced. An exception inside the callback is
recorded with the conv's description (kind, shapes, strides, padding, dilation, groups)
and the handler returns an XLA FFI error, so the computation fails (on jax 0.10.2 the
call raises a ValueError "INTERNAL: PyTorch convolution ... failed: <conv>: <error>") and
no output is ever a quiet NaN; `raise_pending_errors()` then raises `ConvolutionError` naming the
first failed conv with the original exception chained, and clears the record (meant
for every metrics fetch, before any non-finite-loss check). Legacy (api_version < 4) custom calls,
which this used before, cannot report an error from a Python callback (XLA's status
API is not exported by jaxlib) and XLA plans to remove them.

"torch" and precision. Float32 convs must be IEEE float32 on both sides, or the
lowerings disagree by bfloat16's precision, 2^-8 ~ 0.4% (what a two-step test run saw on
a Xeon with AMX: loss 1.01378 vs 1.01795). oneDNN, under PyTorch, computes float32
convolutions with bfloat16 (AMX, AVX512-BF16) or TF32 operands whenever its fp-math mode
allows: PyTorch sets that mode for a conv when `torch.backends.mkldnn.conv.fp32_precision`
(or the generic "all" setting it inherits) is "bf16"/"tf32" (aten/src/ATen/native/mkldnn/
Conv.cpp, `mkldnn_conv_enabled_fpmath_mode_bf16`), and otherwise leaves oneDNN's default,
which is read once from $ONEDNN_DEFAULT_FPMATH_MODE / $DNNL_DEFAULT_FPMATH_MODE (STRICT
unless set; BF16 or ANY allow bfloat16 on AMX). So before registering the custom calls
`force_ieee_float32()` sets PyTorch's conv precision to "ieee" and
ONEDNN_DEFAULT_FPMATH_MODE=STRICT, then measures a probe conv (forward and both
gradients, big enough for oneDNN's AMX/AVX-512 kernels) against float64 and refuses
(`ConvolutionError`, with the fix) unless its relative error is float32's. XLA's side:
this jaxlib's convolutions and dots run in YNNPACK fusions whose float32 dot kernels
take float32 operands (xla/backends/cpu/ynn_emitter.cc defines f32 dots, no precision
downcast; `--xla_cpu_enable_platform_dependent_math`, on by default, only allows
kernels whose rounding order differs between CPUs); `tests/test_conv.py` checks both
lowerings against float64 with a tolerance a bfloat16-precision conv fails, so a
reduced-precision XLA on some CPU would be caught too.

Why: XLA:CPU's convolutions, above all their backward pass, are 2-4x slower than
oneDNN's (profile of the wide ResNet-32 training step: convolutions ~47%, weight-
gradient convs ~20%; `transpose_copy` fusions ~39%, the NHWC -> batch-minor
transposes feeding the weight-gradient convs, into which XLA fuses (recomputes)
the BN/ReLU/residual chain). Measured (BENCHMARKS.md "Against PyTorch (CPU)",
`benchmarks/conv_lowering.py`): a training-mode gradient with "torch" takes 0.44x
the time of "xla" for the wide ResNet-32 (batch 128), 0.67x for ResNet-20, 0.25x for
MobileNetV2, but 1.04x for ResNet-50 at 128 px, batch 8, and 1.4-2.7x (three runs)
for the tiny digits CNN: small convs, above all few output rows with deep channels,
are faster in XLA, which is what `TORCH_MIN_ROWS` keeps there: `use_impl("torch")`,
with that size policy, measured at or under the better of the two for every model.
"im2col" is 2-4x slower than "xla" per ordinary conv (XLA:CPU builds the im2col
slowly); "taps" and "barrier" are within a few percent of "xla".
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

# The smallest dense conv (output rows N * Ho * Wo) `use_impl("torch")` hands to PyTorch:
# below this the custom call's fixed cost (~0.1-0.3 ms) and XLA's small-conv code are as
# fast or faster (`benchmarks/conv_lowering.py`). Grouped (depthwise) convs always go to
# PyTorch: XLA:CPU's are several times slower at every size measured.
TORCH_MIN_ROWS = 8192

_NHWC = ("NHWC", "HWIO", "NHWC")


def _window(kernel_hw, dilation) -> tuple[int, ...]:
  """Spatial extent of a kernel with dilation `dilation` (`(k - 1) * d + 1`)."""
  return tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation))


def _out_size(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


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


class ConvolutionError(RuntimeError):
  """A PyTorch convolution (conv impl "torch") could not be registered, would not run in
  IEEE float32, or failed inside its host callback. The message names the convolution
  (kind, shapes, strides, padding, dilation, groups)."""


@functools.lru_cache(maxsize=None)
def torch_available() -> bool:
  """Whether PyTorch can be imported (the "torch" lowering's one requirement)."""
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except (ImportError, OSError) as e:  # OSError: an installed wheel whose libraries fail to load
    if not isinstance(e, ModuleNotFoundError):
      logging.warning("PyTorch is installed but does not import (%s); conv impl 'torch' is "
                      "unavailable", e)
    return False
  return True


# The host side is an XLA:CPU typed-FFI handler (custom call api_version 4) whose C entry
# point is a ctypes callback into Python: XLA hands over its buffers' addresses, so
# PyTorch reads the operands and writes the results in place (NumPy/torch views, no
# copies). This is the cheap way in: `jax.pure_callback` first copies every operand into a
# new jax.Array (~8 ms per 16 MB activation here, ~0.4 s of a wide ResNet-32 step) and
# copies the results again. The static arguments travel in one string attribute, "cfg".
# The structs mirror xla/ffi/api/c_api.h (shipped in jaxlib/include), FFI API 0.x.
_TARGETS = {"fwd": "lottery_jax_torch_conv2d_fwd", "bwd": "lottery_jax_torch_conv2d_bwd"}
_FFI_API_MAJOR, _FFI_API_MINOR = 0, 1    # the oldest 0.x this handler's structs match
_FFI_EXTENSION_METADATA, _FFI_STAGE_EXECUTE, _FFI_ATTR_STRING = 1, 3, 4
_FFI_ERROR_INTERNAL = 13


class _FfiExtension(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
              ("next", ctypes.c_void_p)]


class _FfiApiVersion(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _FfiMetadata(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _FfiApiVersion),
              ("traits", ctypes.c_uint32)]


class _FfiMetadataExtension(ctypes.Structure):
  _fields_ = [("extension_base", _FfiExtension), ("metadata", ctypes.POINTER(_FfiMetadata))]


class _FfiBuffer(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("dtype", ctypes.c_int), ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
              ("dims", ctypes.POINTER(ctypes.c_int64))]


class _FfiByteSpan(ctypes.Structure):
  _fields_ = [("ptr", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _FfiArgs(ctypes.Structure):   # XLA_FFI_Args and XLA_FFI_Rets have the same layout
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("size", ctypes.c_int64), ("types", ctypes.POINTER(ctypes.c_int)),
              ("values", ctypes.POINTER(ctypes.c_void_p))]


class _FfiAttrs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("size", ctypes.c_int64), ("types", ctypes.POINTER(ctypes.c_int)),
              ("names", ctypes.POINTER(ctypes.POINTER(_FfiByteSpan))),
              ("values", ctypes.POINTER(ctypes.c_void_p))]


class _FfiCallFrame(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.POINTER(_FfiExtension)),
              ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
              ("args", _FfiArgs), ("rets", _FfiArgs), ("attrs", _FfiAttrs),
              ("future", ctypes.c_void_p)]


class _FfiErrorCreateArgs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


_FfiErrorCreate = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_FfiErrorCreateArgs))


class _FfiApi(ctypes.Structure):   # the leading fields of XLA_FFI_Api
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("api_version", _FfiApiVersion), ("internal_api", ctypes.c_void_p),
              ("error_create", _FfiErrorCreate)]


_FFI_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_FfiCallFrame))
_callbacks: dict[str, object] = {}   # keeps the ctypes thunks alive for the process
# Failures inside the host callback, oldest first: (description of the conv, exception).
_host_errors: list[tuple[str, BaseException]] = []


def raise_pending_errors() -> None:
  """Raises `ConvolutionError` for the first PyTorch convolution that failed inside its
  host callback since the last call (naming the conv and chaining the original
  exception), and clears the record; returns None when none failed.

  The failing call itself already made XLA fail the computation (the FFI handler returns
  an error, so its outputs are never used); this is for callers that want the original
  Python exception rather than XLA's message, e.g. at every metrics fetch."""
  if not _host_errors:
    return
  desc, err = _host_errors[0]
  more = len(_host_errors) - 1
  _host_errors.clear()
  raise ConvolutionError(f"PyTorch convolution (conv impl 'torch') failed: {desc}: "
                         f"{type(err).__name__}: {err}"
                         + (f" ({more} later failure(s) not shown)" if more else "")) from err


def _describe(kind: str, cfg: dict) -> str:
  return (f"{'forward' if kind == 'fwd' else 'backward'} conv x{tuple(cfg['x'])} "
          f"w{tuple(cfg['w'])} (HWIO) -> y{tuple(cfg['y'])}, strides {tuple(cfg['strides'])}, "
          f"padding {tuple(cfg['padding'])}, dilation {tuple(cfg['dilation'])}, "
          f"groups {cfg['groups']}, {cfg['dtype']}")


def _buffer(ptr: int, shape, dtype: np.dtype) -> np.ndarray:
  n = int(np.prod(shape))
  raw = (ctypes.c_byte * (n * dtype.itemsize)).from_address(ptr)
  return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)


def _nchw(t):
  return t.permute(0, 3, 1, 2)   # NHWC buffer -> NCHW tensor with channels-last strides


@functools.lru_cache(maxsize=4096)
def _parse_cfg(cfg: bytes) -> tuple[dict, np.dtype, tuple[int, ...]]:
  parsed = json.loads(cfg)
  kh, kw, i, o = parsed["w"]
  return parsed, np.dtype(parsed["dtype"]), (o, kh, kw, i)


def _torch_conv(kind: str, cfg: dict, dtype: np.dtype, w_ohwi, ins, outs) -> None:
  """The convolution itself, on XLA's buffers (addresses `ins`, `outs`)."""
  import torch  # pylint: disable=import-outside-toplevel
  x = _nchw(torch.from_numpy(_buffer(ins[0], cfg["x"], dtype)))
  # The kernel arrives (and its gradient leaves) in OHWI memory order (the custom call
  # asks XLA for that layout): an OIHW tensor with channels-last strides, oneDNN's
  # preferred weight layout, without a copy.
  w = _nchw(torch.from_numpy(_buffer(ins[1], w_ohwi, dtype)))
  args = (cfg["strides"], cfg["padding"], cfg["dilation"], False, [0, 0], cfg["groups"])
  with torch.no_grad():
    if kind == "fwd":
      y = _nchw(torch.from_numpy(_buffer(outs[0], cfg["y"], dtype)))
      y.copy_(torch.ops.aten.convolution(x, w, None, *args))
    else:
      g = _nchw(torch.from_numpy(_buffer(ins[2], cfg["y"], dtype)))
      dx, dw, _ = torch.ops.aten.convolution_backward(g, x, w, None, *args,
                                                      [True, True, False])
      _nchw(torch.from_numpy(_buffer(outs[0], cfg["x"], dtype))).copy_(dx)
      _nchw(torch.from_numpy(_buffer(outs[1], w_ohwi, dtype))).copy_(dw)


def _ffi_error(frame, message: str) -> int | None:
  api = ctypes.cast(frame.api, ctypes.POINTER(_FfiApi)).contents
  args = _FfiErrorCreateArgs(ctypes.sizeof(_FfiErrorCreateArgs), None,
                             message.encode("utf-8", "replace"), _FFI_ERROR_INTERNAL)
  return api.error_create(ctypes.byref(args))   # XLA copies the message and owns the error


def _torch_conv_handler(kind: str, frame_ptr) -> int | None:
  """XLA_FFI_Handler: NULL on success, an XLA_FFI_Error* (XLA then fails the whole
  computation with its message) on any failure. Never raises: an exception escaping a
  ctypes callback would be printed and read as success."""
  desc = f"{kind} (arguments not decoded)"
  try:
    frame = frame_ptr.contents
    ext = frame.extension_start
    if ext and ext.contents.type == _FFI_EXTENSION_METADATA:
      # XLA asks which FFI API version the handler was built against (no traits).
      meta = ctypes.cast(ext, ctypes.POINTER(_FfiMetadataExtension)).contents.metadata.contents
      meta.api_version = _FfiApiVersion(ctypes.sizeof(_FfiApiVersion), None,
                                        _FFI_API_MAJOR, _FFI_API_MINOR)
      meta.traits = 0
      return None
    if frame.stage != _FFI_STAGE_EXECUTE:
      return None
    attrs = frame.attrs
    if attrs.size != 1 or attrs.types[0] != _FFI_ATTR_STRING:
      return _ffi_error(frame, f"PyTorch convolution ({kind}): expected one string "
                        f"attribute 'cfg', got {attrs.size} attribute(s)")
    span = ctypes.cast(attrs.values[0], ctypes.POINTER(_FfiByteSpan)).contents
    cfg, dtype, w_ohwi = _parse_cfg(ctypes.string_at(span.ptr, span.len))
    desc = _describe(kind, cfg)
    ins = [ctypes.cast(frame.args.values[i], ctypes.POINTER(_FfiBuffer)).contents.data
           for i in range(frame.args.size)]
    outs = [ctypes.cast(frame.rets.values[i], ctypes.POINTER(_FfiBuffer)).contents.data
            for i in range(frame.rets.size)]
    _torch_conv(kind, cfg, dtype, w_ohwi, ins, outs)
    return None
  except BaseException as e:  # pylint: disable=broad-except
    _host_errors.append((desc, e))
    logging.exception("PyTorch convolution (conv impl 'torch') failed: %s", desc)
    try:
      return _ffi_error(frame_ptr.contents,
                        f"PyTorch convolution (conv impl 'torch') failed: {desc}: "
                        f"{type(e).__name__}: {e} (lottery_jax.models.conv."
                        "raise_pending_errors() re-raises the original exception)")
    except BaseException:  # pylint: disable=broad-except
      logging.exception("could not hand the failure to XLA; conv.raise_pending_errors() has it")
      return None


# A float32 conv computed in IEEE float32 has a normwise relative error of a few 2^-24
# times sqrt(K) at most (K = kh*kw*C products per output, here 576: ~1e-6); with either
# operand rounded to bfloat16 (8 significand bits) or TF32 (11) it is ~2^-9 or ~2^-12
# (1e-3, 2e-4). The probe's limit sits between, two decades from both.
_IEEE_PROBE_TOL = 3e-5


def _probe_error(torch) -> float:
  """Normwise relative error of PyTorch's float32 conv, forward and both gradients,
  against float64, on a conv big enough for oneDNN's AMX/AVX-512 kernels (batch 8,
  16x16, 64 -> 64 channels, 3x3, channels-last)."""
  gen = torch.Generator().manual_seed(0)
  x64 = torch.randn(8, 64, 16, 16, generator=gen, dtype=torch.float64)
  w64 = torch.randn(64, 64, 3, 3, generator=gen, dtype=torch.float64)
  g64 = torch.randn(8, 64, 16, 16, generator=gen, dtype=torch.float64)
  args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
  cl = torch.channels_last

  def run(x, w, g):
    y = torch.ops.aten.convolution(x, w, None, *args)
    dx, dw, _ = torch.ops.aten.convolution_backward(g, x, w, None, *args, [True, True, False])
    return y, dx, dw

  with torch.no_grad():
    got = run(*(t.float().contiguous(memory_format=cl) for t in (x64, w64, g64)))
    want = run(x64, w64, g64)
  return max(float(torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b))
             for a, b in zip(got, want))


_ieee_checked: list[float] = []


def force_ieee_float32() -> float:
  """Makes PyTorch's CPU convolutions compute float32 in IEEE float32 and checks that they
  do; returns the probe's relative error. Raises `ConvolutionError` where they do not.

  oneDNN may compute float32 convolutions with bfloat16 or TF32 operands (AMX / AVX-512
  BF16 instructions) when its floating-point math mode allows it: PyTorch asks for that
  when `torch.backends.mkldnn.conv.fp32_precision` (or the "all"/generic setting it
  inherits) is "bf16" or "tf32", and oneDNN's own default mode comes from
  $ONEDNN_DEFAULT_FPMATH_MODE (or $DNNL_DEFAULT_FPMATH_MODE), read once, when oneDNN
  creates its first primitive. So: set PyTorch's conv precision to "ieee", set
  ONEDNN_DEFAULT_FPMATH_MODE=STRICT (effective if oneDNN has not initialised yet), then
  measure a probe conv against float64 (`_IEEE_PROBE_TOL`)."""
  if _ieee_checked:
    return _ieee_checked[0]
  import torch  # pylint: disable=import-outside-toplevel
  env = {k: os.environ.get(k) for k in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")}
  os.environ["ONEDNN_DEFAULT_FPMATH_MODE"] = "STRICT"   # the ONEDNN_ name takes precedence
  settings = "unknown"
  try:
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    settings = (f"torch.backends.mkldnn.conv.fp32_precision="
                f"{torch.backends.mkldnn.conv.fp32_precision!r}")
    if torch.backends.mkldnn.conv.fp32_precision != "ieee":
      raise ConvolutionError(f"could not force IEEE float32 PyTorch convolutions: {settings} "
                             "after setting it to 'ieee'")
  except AttributeError:   # an older PyTorch: the legacy TF32 switch is its only knob
    torch.backends.mkldnn.allow_tf32 = False
    settings = f"torch.backends.mkldnn.allow_tf32={torch.backends.mkldnn.allow_tf32!r}"
  err = _probe_error(torch)
  if not err < _IEEE_PROBE_TOL:
    raise ConvolutionError(
        f"PyTorch's float32 convolution is not IEEE float32 here: relative error {err:.2e} "
        f"against float64 (limit {_IEEE_PROBE_TOL:.0e}; bfloat16 operands give ~1e-3), "
        f"with {settings} and $ONEDNN_DEFAULT_FPMATH_MODE / $DNNL_DEFAULT_FPMATH_MODE "
        f"{env['ONEDNN_DEFAULT_FPMATH_MODE']!r} / {env['DNNL_DEFAULT_FPMATH_MODE']!r} before "
        "this process forced STRICT (oneDNN reads it once, at its first primitive). Export "
        "ONEDNN_DEFAULT_FPMATH_MODE=STRICT before starting Python, or use XLA's convolutions "
        "(--config.model.conv=xla)")
  _ieee_checked.append(err)
  return err


def _register_targets(what: str) -> None:
  """Registers the FFI targets once per process, after checking PyTorch computes IEEE
  float32; `what` names the convolution being traced, for the error."""
  if _callbacks:
    return
  try:
    force_ieee_float32()
    thunks = {kind: _FFI_HANDLER(functools.partial(_torch_conv_handler, kind))
              for kind in _TARGETS}
    for kind, name in _TARGETS.items():
      jax.ffi.register_ffi_target(
          name, jax.ffi.pycapsule(ctypes.cast(thunks[kind], ctypes.c_void_p).value),
          platform="cpu", api_version=1)
  except ConvolutionError as e:
    raise ConvolutionError(f"conv impl 'torch' unavailable for {what}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ConvolutionError(f"could not register PyTorch's convolution (conv impl 'torch') "
                           f"as an XLA:CPU FFI target for {what}: {type(e).__name__}: {e}; "
                           "use --config.model.conv=xla") from e
  _callbacks.update(thunks)


# Memory orders (major to minor) the custom calls ask XLA for: activations NHWC as they
# are, HWIO kernels (and their gradients) as OHWI.
_ROW_MAJOR, _OHWI = (0, 1, 2, 3), (3, 0, 1, 2)


def _torch_call(kind, out_shapes, dtype, *args, **cfg):
  cfg = {"dtype": np.dtype(dtype).name, **cfg}
  _register_targets(_describe(kind, cfg))
  # Operands are (x, w[, g]) and results (y) or (dx, dw): only the kernel is OHWI.
  in_layouts = [_OHWI if i == 1 else _ROW_MAJOR for i in range(len(args))]
  out_layouts = [_OHWI if i == 1 else _ROW_MAJOR for i in range(len(out_shapes))]
  results = [jax.ShapeDtypeStruct(s, dtype) for s in out_shapes]
  call = jax.ffi.ffi_call(_TARGETS[kind], results, vmap_method="sequential",
                          input_layouts=in_layouts, output_layouts=out_layouts)
  out = call(*args, cfg=json.dumps(cfg))
  return out if kind == "bwd" else out[0]


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

  CPU backend and one-device processes only (`_require`; the custom calls are
  registered for "cpu" and XLA cannot partition them). PyTorch is checked to compute
  IEEE float32 before the first call is registered (`force_ieee_float32`); a failure
  inside a call fails the computation and is kept for `raise_pending_errors`. Asymmetric padding is applied in JAX first (PyTorch pads
  symmetrically). Not differentiable twice; vmap runs one call per element.
  Arguments as `conv2d_taps`, plus `dilation` (kernel dilation) and `groups`
  (feature groups: the kernel is (kh, kw, C / groups, O)).
  """
  strides, pads = _normalise(x, w, strides, padding, dilation)
  if any(lo != hi for lo, hi in pads):
    x = lax.pad(x, jnp.zeros((), x.dtype),
                ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)))
    pads = ((0, 0), (0, 0))
  return _conv_torch(x, w, strides, tuple(lo for lo, _ in pads),
                     tuple(int(d) for d in dilation), int(groups))


def conv2d_taps(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution: XLA's forward and input gradient, the weight
  gradient of stride-1 convs as per-tap GEMMs (`_weight_grad_taps`).

  Args:
    x: input (N, H, W, C).
    w: kernel (kh, kw, C, O).
    strides: (sh, sw).
    padding: ((lo, hi), (lo, hi)) or "SAME"/"VALID" (as `lax.conv_general_dilated`).

  Returns:
    (N, Ho, Wo, O), equal to `lax.conv_general_dilated` up to float rounding.
  """
  return _conv_taps(x, w, *_normalise(x, w, strides, padding))


def conv2d_barrier(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
                   padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution: XLA's forward and gradients, the backward reading
  its stored input through an optimisation barrier. Arguments as `conv2d_taps`."""
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


def _taps_applicable(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
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


def xla_cpu_swaps_operands(in_sizes, kernel_sizes, strides, padding, lhs_dilation,
                           rhs_dilation) -> bool:
  """Whether XLA's `ConvOperandSwapper` (`SwapConvolutionOperandsIfBeneficial`, run by
  the CPU compiler) swaps the input and the kernel of a non-grouped conv with these
  spatial sizes, strides, (lo, hi) padding and input/kernel dilations, one entry per
  spatial dim: when the kernel window has more positions than the input over the dims
  that are not pure contractions. A transcription of that function's test."""
  kernel_product = swapped_product = 1
  for n, k, s, (lo, hi), base, win in zip(in_sizes, kernel_sizes, strides, padding,
                                          lhs_dilation, rhs_dilation):
    unpadded = lo == 0 and hi == 0 and win == 1
    if unpadded and ((base == k and s == k - 1) or (k == n and base == 1 and s == 1)):
      continue                                         # a group or contraction dim
    kernel_product *= k
    swapped_product *= (k if n == 1 and s == 1 and win == 1 and lo == hi == k - 1 else n)
  return kernel_product > swapped_product


def swapped_on_cpu(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1,
                   batch_group_count=1) -> bool:
  """Whether, on the CPU backend, XLA would run this `lax.conv_general_dilated`, or the
  input-gradient conv JAX's autodiff makes of it, with swapped operands (the slow form,
  module docstring), so that "xla" computes it as "im2col" instead. False for grouped
  convs (XLA does not swap them) and input dilation (not implemented by "im2col")."""
  if (jax.default_backend() != "cpu" or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in (lhs_dilation or ())) or lhs.ndim != rhs.ndim or lhs.ndim < 3):
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  sizes = [lhs.shape[d] for d in dn.lhs_spec[2:]]
  ksizes = [rhs.shape[d] for d in dn.rhs_spec[2:]]
  nd = len(sizes)
  strides = tuple(int(v) for v in window_strides)
  dil = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
  window = _window(ksizes, dil)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(sizes, window, strides, padding)
  pads = [(int(lo), int(hi)) for lo, hi in padding]
  out = [_out_size(n, w, s, lo, hi) for n, w, s, (lo, hi) in zip(sizes, window, strides, pads)]
  # The input gradient (jax's _conv_general_vjp_lhs_padding): dy dilated by the strides,
  # padded, against the reversed kernel with the same kernel dilation, stride 1.
  pads_dx = []
  for n, w, s, o, (lo, _) in zip(sizes, window, strides, out, pads):
    before = w - lo - 1
    pads_dx.append((before, n + w - 1 - ((o - 1) * s + 1) - before))
  return (xla_cpu_swaps_operands(sizes, ksizes, strides, pads, (1,) * nd, dil)
          or xla_cpu_swaps_operands(out, ksizes, (1,) * nd, pads_dx, strides, dil))


IMPLS = ("xla", "taps", "barrier", "torch", "unrolled", "im2col")
# `use_impl`'s stack: (impl, the smallest dense conv in output rows it applies to).
_override: list[tuple[str, int]] = []


@contextlib.contextmanager
def use_impl(impl: str, *, min_rows: int | None = None):
  """Within the block, "auto" (every model's default) resolves to `impl` at trace time
  (jitted functions keep the lowering they were traced with: trace inside the block).

  `use_impl("torch")` (what `config.model.conv="torch"` does around the train and eval
  steps) keeps XLA's convolution for dense convs with fewer than `min_rows` output rows
  (N * Ho * Wo; default `TORCH_MIN_ROWS`): there the custom call's fixed cost makes
  PyTorch slower (`benchmarks/conv_lowering.py`); grouped convs always go to PyTorch.
  `min_rows=0` sends every conv to PyTorch. Other lowerings apply to every conv.
  `use_impl("auto")` changes nothing. "torch" is checked on entry (`resolve_impl`)."""
  if impl == "auto":
    yield
    return
  _check_impl(impl, "conv impl")
  rows = (TORCH_MIN_ROWS if min_rows is None else int(min_rows)) if impl == "torch" else 0
  _override.append((impl, rows))
  try:
    yield
  finally:
    _override.pop()


def resolve_impl(impl: str = "auto", rows: int | None = None, groups: int = 1) -> str:
  """The lowering `impl` stands for at trace time, for a conv with `rows` output rows
  (None: unknown, counted as large) and `groups` feature groups.

  "auto": XLA's convolution ("xla"), unless inside `use_impl(...)`, which picks the
  lowering (for "torch", subject to its `min_rows`). Nothing else (no environment
  variable, no installed package) changes it. "torch", asked for explicitly or through
  `use_impl`, raises where it cannot run as asked (`_require`): never a silent fallback.
  """
  if impl == "auto":
    if not _override:
      return "xla"
    impl, min_rows = _override[-1]
    if impl == "torch" and rows is not None and rows < min_rows and groups == 1:
      return "xla"
  return _check_impl(impl, "conv impl")


def _check_impl(impl: str, what: str) -> str:
  """`impl` if it names a lowering usable here, else a ValueError/ImportError naming
  `what` was set to what, and the fix."""
  if impl not in IMPLS:
    raise ValueError(f"{what} must be 'auto' or one of {IMPLS}, got {impl!r}")
  _require(impl)
  return impl


_TORCH_FIX = "or use XLA's convolution: --config.model.conv=xla / conv.use_impl('xla')"


def _require(impl: str) -> None:
  if impl != "torch":
    return
  if jax.default_backend() != "cpu":
    raise ValueError(f"conv impl 'torch' runs on the CPU backend only (the default backend is "
                     f"{jax.default_backend()!r}); {_TORCH_FIX}")
  if jax.device_count() > 1:
    raise ValueError(
        f"conv impl 'torch' needs a one-device process, this one has {jax.device_count()} "
        "devices: XLA cannot partition a custom call, so a sharded step would gather every "
        "conv's operands and run the whole PyTorch conv on each device. Run with one device "
        "(e.g. drop --xla_force_host_platform_device_count from $XLA_FLAGS), " + _TORCH_FIX)
  if not torch_available():
    raise ImportError("conv impl 'torch' runs PyTorch's CPU convolution and needs PyTorch: "
                      "pip install torch --index-url https://download.pytorch.org/whl/cpu "
                      "(or pip install -e '.[torch]'), " + _TORCH_FIX)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, impl: str = "auto"):
  """`lax.conv_general_dilated` with a selectable CPU lowering.

  Same arguments and result as `lax.conv_general_dilated`. `impl`: "auto" (see
  `resolve_impl`), "xla", "torch" (PyTorch's convolution as XLA:CPU custom calls),
  "im2col" (`conv_im2col`: raises ValueError for what it does not implement), "taps"
  (XLA's forward and input gradient, weight gradient as per-tap GEMMs, residual read
  through an optimisation barrier), "barrier" or "unrolled". Cases the other lowerings
  do not implement use XLA's convolution: for "torch", anything but 2-D NHWC/HWIO
  float32/float64 without input dilation or batch groups; for "taps" and "barrier" also
  kernel dilation and feature groups; `preferred_element_type` for all. On the CPU,
  wherever XLA's convolution would run (also for "unrolled" and the fallbacks), a conv
  that XLA would run with swapped operands is "im2col" (`swapped_on_cpu`).
  """
  # Only "auto" inside `use_impl("torch")` looks at the conv's size (`resolve_impl`).
  rows = (_output_rows(lhs, rhs, window_strides, padding, rhs_dilation, dimension_numbers)
          if impl == "auto" and _override and _override[-1][0] == "torch" else None)
  impl = resolve_impl(impl, rows=rows, groups=feature_group_count)
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count)
  if impl in ("xla", "unrolled") and swapped_on_cpu(*args):
    impl = "im2col"
  if impl == "torch":
    if preferred_element_type is None and _torch_applicable(
        lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count):
      return conv2d_torch(lhs, rhs, window_strides, padding,
                          tuple(rhs_dilation or (1, 1)), feature_group_count)
  elif impl == "unrolled":
    if preferred_element_type is None:
      return _unrolled_conv(_hashable(window_strides), _hashable(padding),
                            _hashable(lhs_dilation), _hashable(rhs_dilation),
                            _hashable(dimension_numbers), feature_group_count,
                            batch_group_count, _hashable(precision))(lhs, rhs)
  elif impl == "im2col":
    return conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, batch_group_count, precision,
                       preferred_element_type)
  elif impl in ("taps", "barrier") and preferred_element_type is None and _taps_applicable(
      lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count):
    strides, pads = _normalise(lhs, rhs, window_strides, padding)
    if impl == "barrier":
      return _conv_barrier(lhs, rhs, strides, pads)
    return _conv_taps(lhs, rhs, strides, pads)
  if impl != "xla" and swapped_on_cpu(*args):   # a fallback of "torch", "taps", ...
    return conv_im2col(*args[:-2], feature_group_count, batch_group_count, precision,
                       preferred_element_type)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)


# --------------------------------------------------------------- "unrolled" (siblings)
def _hashable(x):
  """Lists (and plain tuples holding lists) as tuples, so conv arguments can key a
  cache; named tuples (lax.ConvDimensionNumbers) are hashable already."""
  if isinstance(x, list) or type(x) is tuple:  # pylint: disable=unidiomatic-typecheck
    return tuple(_hashable(v) for v in x)
  return x


def _stack_rule(prim, n_out):
  """A `custom_vmap` rule that runs `prim` once per index of the batched axis on the
  un-batched slices and stacks the results (one ordinary conv per copy)."""
  def rule(axis_size, in_batched, *args):
    outs = [prim(*(a[i] if b else a for a, b in zip(args, in_batched)))
            for i in range(axis_size)]
    if n_out == 1:
      return jnp.stack(outs), True
    return tuple(jnp.stack([o[k] for o in outs]) for k in range(n_out)), (True,) * n_out
  return rule


@functools.lru_cache(maxsize=None)
def _unrolled_conv(strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count, precision):
  """XLA's convolution whose `jax.vmap` is one ordinary convolution per mapped index
  (forward and both gradients), instead of the single grouped convolution JAX's own
  batching rule makes of a vmapped (input, kernel) pair (XLA:CPU's grouped convs are
  slow, see the module docstring; `benchmarks/siblings.py` measures both ways; on
  GPU/TPU the grouped form is expected to be the fast one). Without vmap it is
  `lax.conv_general_dilated`, forward and gradients the same ops."""
  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision)

  fwd = jax.custom_batching.custom_vmap(conv)
  fwd.def_vmap(_stack_rule(fwd, 1))

  def grads(x, w, g):
    _, vjp = jax.vjp(conv, x, w)
    return vjp(g)

  bwd = jax.custom_batching.custom_vmap(grads)
  bwd.def_vmap(_stack_rule(bwd, 2))

  @jax.custom_vjp
  def f(x, w):
    return fwd(x, w)

  f.defvjp(lambda x, w: (fwd(x, w), (x, w)), lambda res, g: bwd(*res, g))
  return f


# ------------------------------------------------------------ "im2col" (siblings, CPU)
def conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` as im2col + one matmul in plain jnp, differentiated by
  JAX (no custom VJP), for any number of spatial dims, strides, padding (explicit or
  "SAME"/"VALID"), kernel dilation and feature groups.

  The input is padded, the prod(kernel) shifted (strided, dilated) slices are
  concatenated on the channel axis, and one `dot_general` with the kernel reshaped to
  (prod(kernel) * C_in, C_out) (with groups: a `dot_general` batched over the groups)
  gives the output. Under `jax.vmap` with a per-copy kernel (siblings) that `dot_general`
  gains a batch dimension, a batched GEMM, where `lax.conv_general_dilated`'s batching
  rule makes one grouped convolution (slow on XLA:CPU). Raises ValueError for input
  dilation and batch groups (only the transposes of convolutions use them).
  """
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    raise ValueError(f"conv impl 'im2col' does not implement input (lhs) dilation, got "
                     f"{tuple(lhs_dilation)}; use model.conv='xla'")
  if batch_group_count != 1:
    raise ValueError(f"conv impl 'im2col' does not implement batch_group_count="
                     f"{batch_group_count}; use model.conv='xla'")
  nd = lhs.ndim - 2
  if nd < 1 or rhs.ndim != lhs.ndim:
    raise ValueError(f"conv impl 'im2col' needs lhs and rhs of the same rank >= 3, got "
                     f"{lhs.shape} and {rhs.shape}")
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  # To channels-last: lhs (N, *spatial, C), rhs (*spatial, I, O); no-ops for NHWC/HWIO.
  x = lax.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
  w = lax.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
  strides = tuple(int(s) for s in window_strides)
  dil = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
  ksize = w.shape[:nd]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:-1], _window(ksize, dil), strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  g = int(feature_group_count)
  c, o = x.shape[-1], w.shape[-1]
  if w.shape[-2] * g != c or o % g:
    raise ValueError(f"conv impl 'im2col': kernel {rhs.shape} does not fit input {lhs.shape} "
                     f"with feature_group_count={g}")
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                           (0, 0, 0)))
  out = tuple(_out_size(size, k, s, 0, 0) for size, k, s
              in zip(xp.shape[1:-1], _window(ksize, dil), strides))
  if any(v <= 0 for v in out):
    raise ValueError(f"conv impl 'im2col': empty output {out} for input {lhs.shape}")
  n = x.shape[0]
  cols = []
  for tap in np.ndindex(*ksize):
    start = tuple(t * d for t, d in zip(tap, dil))
    cols.append(lax.slice(xp, (0, *start, 0),
                          (n, *(st + (m - 1) * s + 1 for st, m, s in zip(start, out, strides)),
                           c),
                          (1, *strides, 1)))
  p = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  taps = len(cols)
  if g == 1:
    y = lax.dot_general(p, w.reshape(taps * c, o), (((p.ndim - 1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
  else:
    cg, og = c // g, o // g
    p = p.reshape(*p.shape[:-1], taps, g, cg)                 # (..., taps, g, cg)
    wk = w.reshape(taps, cg, g, og)
    # dot_general puts the batch dim (g) first: (g, N, *out, og).
    y = lax.dot_general(p, wk, (((p.ndim - 3, p.ndim - 1), (0, 1)), ((p.ndim - 2,), (2,))),
                        precision=precision, preferred_element_type=preferred_element_type)
    y = jnp.moveaxis(y, 0, -2).reshape(*y.shape[1:-1], o)
  # Back to the requested output layout.
  inv = np.argsort((dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1]))
  return lax.transpose(y, tuple(int(i) for i in inv))
