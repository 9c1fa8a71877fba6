"""The CPU conv lowerings equal `lax.conv_general_dilated` (forward and both gradients)."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lottery_jax import models
from lottery_jax.models import conv

jax.config.update("jax_default_matmul_precision", "highest")

CASES = [
    # (n, h, w, c, o, k, stride, padding)
    (2, 7, 9, 3, 5, 3, 1, ((1, 1), (1, 1))),
    (2, 9, 7, 4, 6, 3, 2, ((1, 1), (1, 1))),
    (3, 8, 8, 5, 4, 3, 1, "SAME"),
    (2, 9, 9, 4, 3, 3, 2, "SAME"),   # asymmetric padding (0, 1)
    (2, 6, 7, 3, 4, 3, 1, ((2, 0), (0, 1))),
    (2, 5, 5, 6, 7, 1, 1, ((0, 0), (0, 0))),
    (1, 11, 10, 2, 3, 5, 2, ((2, 2), (2, 2))),
]


_NHWC = ("NHWC", "HWIO", "NHWC")


def _reference(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("impl", ["im2col", "taps", "barrier"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_match_lax(impl, case):
  n, h, w_, c, o, k, stride, padding = case
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, w_, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c, o), jnp.float32)
  fn = {"im2col": functools.partial(conv.conv_im2col, dimension_numbers=_NHWC),
        "taps": conv.conv2d_taps, "barrier": conv.conv2d_barrier}[impl]

  y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, stride, padding), x, w)
  y, vjp = jax.vjp(lambda x, w: fn(x, w, (stride, stride), padding), x, w)
  g = jax.random.normal(kg, y_ref.shape, jnp.float32)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["im2col", "taps", "barrier"])
def test_jitted_grad_matches_lax(impl):
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))

  def loss(f):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w))), argnums=(0, 1)))

  ref = loss(lambda x, w: _reference(x, w, 1, ((1, 1), (1, 1))))(x, w)
  got = loss(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      impl=impl))(x, w)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unsupported_cases_fall_back_to_xla():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))  # depthwise
  dn = ("NHWC", "HWIO", "NHWC")
  got = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=4, impl="taps")
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=4)
  np.testing.assert_array_equal(got, want)
  x1 = jax.random.normal(jax.random.key(0), (2, 10, 3))  # 1-D
  w1 = jax.random.normal(jax.random.key(1), (3, 3, 5))
  got = conv.conv_general_dilated(x1, w1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
                                  impl="taps")
  want = lax.conv_general_dilated(x1, w1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
  np.testing.assert_array_equal(got, want)


def test_auto_is_xla_unless_use_impl_says_otherwise(monkeypatch):
  assert conv.resolve_impl() == "xla"
  assert conv.resolve_impl(rows=10**6, groups=4) == "xla"
  # The environment variable that used to pick the lowering is not read any more.
  monkeypatch.setenv("LOTTERY_JAX_CONV_IMPL", "torch")
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)   # even where torch could run
  assert conv.resolve_impl(rows=10**6) == "xla"
  assert not hasattr(conv, "ENV_VAR")
  assert conv.resolve_impl("xla") == "xla"
  with pytest.raises(ValueError, match="conv impl"):
    conv.resolve_impl("winograd")


def test_use_impl_scope():
  with conv.use_impl("im2col"):
    assert conv.resolve_impl() == "im2col"
    assert conv.resolve_impl("xla") == "xla"           # an explicit impl wins
    with conv.use_impl("taps"):
      assert conv.resolve_impl() == "taps"
    with conv.use_impl("auto"):                         # a no-op
      assert conv.resolve_impl() == "im2col"
    assert conv.resolve_impl() == "im2col"
  assert conv.resolve_impl() == "xla"
  with pytest.raises(KeyError):
    with conv.use_impl("barrier"):
      raise KeyError("inside the block")
  assert conv.resolve_impl() == "xla"                   # restored after an exception
  with pytest.raises(ValueError, match="conv impl"):
    with conv.use_impl("winograd"):
      pass
  # The lowering is fixed when a function is traced, not when it runs: jit's trace cache
  # keeps it (so trace inside the block, as the engine's `_traced_with` does).
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  f = lambda x, w: conv.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = lambda x, w: f(x, w)  # noqa: E731
  with conv.use_impl("im2col"):
    assert "convolution(" not in jax.jit(f).lower(x, w).as_text()
  assert "convolution(" not in jax.jit(f).lower(x, w).as_text()   # cached trace
  assert "convolution(" in jax.jit(g).lower(x, w).as_text()       # fresh trace: XLA's


@pytest.mark.parametrize("impl", ["im2col", "taps", "barrier"])
def test_model_param_tree_and_output_do_not_depend_on_impl(impl):
  model = models.get("digits_cnn", num_classes=10)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  plain = nn.Conv(16, (3, 3), use_bias=False)
  ref_vars = model.init(jax.random.key(1), x, train=False)
  with conv.use_impl(impl):
    variables = model.init(jax.random.key(1), x, train=False)
    out = model.apply(variables, x, train=False)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, ref_vars)
  first = "conv0"
  np.testing.assert_array_equal(variables["params"][first]["kernel"],
                                ref_vars["params"][first]["kernel"])
  assert set(variables["params"][first]) == set(
      plain.init(jax.random.key(0), x)["params"])
  with conv.use_impl("xla"):
    ref_out = model.apply(variables, x, train=False)
  np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)


# --- "torch": PyTorch's convolution as XLA:CPU custom calls ---------------------------

def test_explicit_torch_refuses_to_run_where_it_cannot(monkeypatch):
  # Never a silent fallback to XLA: a clear error at trace time, with the fix.
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  f = jax.jit(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="torch"))
  # The test session has 8 (simulated) devices: a sharded step would gather operands.
  assert jax.device_count() > 1
  with pytest.raises(ValueError, match="one-device process.*--config.model.conv=xla"):
    f.lower(x, w)
  with pytest.raises(ValueError, match="one-device process"):
    with conv.use_impl("torch"):
      pass
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="CPU backend only.*--config.model.conv=xla"):
    conv.resolve_impl("torch")
  with pytest.raises(ValueError, match="CPU backend only"):
    with conv.use_impl("torch"):
      pass
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  monkeypatch.setattr(conv, "torch_available", lambda: False)   # PyTorch not installed
  with pytest.raises(ImportError, match="pip install torch"):
    conv.resolve_impl("torch")
  with pytest.raises(ImportError, match="pip install torch"):
    f.lower(x + 1, w)


torch = pytest.importorskip("torch")


@pytest.fixture
def one_device(monkeypatch):
  """The "torch" lowering refuses processes with several devices. These tests run
  unsharded jits on the first of the session's 8 simulated devices, exactly as a
  one-device process does, so they present a device count of 1."""
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  yield
  conv._host_errors.clear()


TORCH_CASES = CASES + [
    # (n, h, w, c, o, k, stride, padding, dilation, groups)
    (2, 6, 6, 4, 4, 3, 1, "SAME", 1, 4),           # depthwise
    (2, 8, 7, 6, 4, 3, 2, ((1, 1), (1, 1)), 1, 2),  # grouped, strided
    (2, 9, 9, 3, 4, 3, 1, "SAME", 2, 1),           # dilated
]


def _case(case):
  n, h, w_, c, o, k, stride, padding, *rest = case
  dilation, groups = rest if rest else (1, 1)
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (n, h, w_, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c // groups, o), jnp.float32)
  kwargs = dict(window_strides=(stride, stride), padding=padding,
                rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups)
  return x, w, kwargs


@pytest.mark.usefixtures("one_device")
@pytest.mark.parametrize("case", TORCH_CASES, ids=[f"case{i}" for i in range(len(TORCH_CASES))])
def test_torch_forward_and_gradients_match_lax(case):
  x, w, kwargs = _case(case)
  y_ref, vjp_ref = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, **kwargs), x, w)
  f = jax.jit(lambda x, w: conv.conv_general_dilated(x, w, impl="torch", **kwargs))
  y, vjp = jax.vjp(f, x, w)
  g = jax.random.normal(jax.random.key(3), y_ref.shape, jnp.float32)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The compiled step really calls PyTorch (no XLA convolution left in it).
  hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w)), argnums=(0, 1))).lower(x, w).as_text()
  assert "lottery_jax_torch_conv2d_bwd" in hlo and "convolution(" not in hlo


# --- precision: both lowerings must compute float32 convs in IEEE float32 -------------
#
# Normwise relative error against float64 of a float32 conv whose dot products have
# length K: rounding each partial sum (relative 2^-24 each, random signs) gives
# ~ 2^-24 * sqrt(K / 2) for recursive summation, less for blocked or pairwise sums:
# 1.0e-6 for the forward and input gradient (K = 3*3*64 = 576), 1.9e-6 for the weight
# gradient (K = N*Ho*Wo = 2048); measured 2e-7 to 4e-7 for both lowerings on an
# AVX-512 Xeon. FLOAT32_CONV_RTOL = 2e-5 leaves a decade over the estimate. Operands
# rounded to bfloat16 (8 significand bits: relative error up to 2^-9 each) give ~2e-3
# whatever the summation (measured 2.3e-3), TF32 (11 bits) ~3e-4: both an order of
# magnitude or more outside (test_float32_tolerance_rejects_bfloat16_operands).
FLOAT32_CONV_RTOL = 2e-5
PREC_CASE = dict(x=(8, 16, 16, 64), w=(3, 3, 64, 64))   # K = 576, 2048 output rows


def _prec_operands():
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, PREC_CASE["x"], jnp.float32)
  w = jax.random.normal(kw, PREC_CASE["w"], jnp.float32) / 24.0
  g = jax.random.normal(kg, PREC_CASE["x"][:3] + PREC_CASE["w"][3:], jnp.float32)
  return x, w, g


def _conv_vjp(fn, x, w, g):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(g))


def _lax_conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _float64_reference(x, w, g):
  with jax.enable_x64(True):
    return [np.asarray(a) for a in _conv_vjp(
        _lax_conv, *(jnp.asarray(np.asarray(a), jnp.float64) for a in (x, w, g)))]


def _normwise_errors(got, want):
  return [float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
          for a, b in zip(got, want)]


def _bf16(a):
  return jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.usefixtures("one_device")
@pytest.mark.parametrize("impl", ["xla", "torch"])
def test_float32_convs_are_ieee_float32(impl):
  # Either side in reduced precision (oneDNN with AMX/bf16 fp-math under PyTorch, or
  # an XLA:CPU kernel that downcasts) would fail this, on whatever CPU it runs.
  x, w, g = _prec_operands()
  fn = jax.jit(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl=impl))
  errs = _normwise_errors(_conv_vjp(fn, x, w, g), _float64_reference(x, w, g))
  assert max(errs) < FLOAT32_CONV_RTOL, errs


@pytest.mark.usefixtures("one_device")
def test_float32_tolerance_rejects_bfloat16_operands(monkeypatch):
  np.asarray(_failing_conv_fn()(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))))  # registered
  x, w, g = _prec_operands()
  want = _float64_reference(x, w, g)
  # A conv that rounds its operands to bfloat16 and accumulates exactly (float64).
  simulated = _normwise_errors(_float64_reference(_bf16(x), _bf16(w), _bf16(g)), want)
  assert min(simulated) > 20 * FLOAT32_CONV_RTOL, simulated
  # The same through the real torch lowering, with PyTorch's convs made to round their
  # operands to bfloat16 (what oneDNN's BF16 fp-math mode does on AMX): caught too.
  conv_, conv_bwd = torch.ops.aten.convolution, torch.ops.aten.convolution_backward
  def r(t):   # like oneDNN's fp-math mode: float32 operands only
    return t.to(torch.bfloat16).to(t.dtype) if t.dtype == torch.float32 else t
  monkeypatch.setattr(torch.ops.aten, "convolution",
                      lambda x, w, *a: conv_(r(x), r(w), *a))
  monkeypatch.setattr(torch.ops.aten, "convolution_backward",
                      lambda g, x, w, *a: conv_bwd(r(g), r(x), r(w), *a))
  fn = jax.jit(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="torch"))
  errs = _normwise_errors(_conv_vjp(fn, x, w, g), want)
  assert min(errs) > 20 * FLOAT32_CONV_RTOL, errs
  # ...and by the probe that guards registration, which then refuses.
  assert conv._probe_error(torch) > conv._IEEE_PROBE_TOL
  monkeypatch.setattr(conv, "_ieee_checked", [])
  with pytest.raises(conv.ConvolutionError, match="not IEEE float32"):
    conv.force_ieee_float32()


def test_torch_precision_is_forced_and_checked(monkeypatch):
  err = conv.force_ieee_float32()
  assert err < conv._IEEE_PROBE_TOL
  assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
  assert os.environ["ONEDNN_DEFAULT_FPMATH_MODE"] == "STRICT"
  # Where the probe still sees reduced precision, registration refuses with the fix.
  monkeypatch.setattr(conv, "_ieee_checked", [])
  monkeypatch.setattr(conv, "_probe_error", lambda torch: 3.1e-3)
  with pytest.raises(conv.ConvolutionError, match="not IEEE float32.*ONEDNN_DEFAULT_FPMATH_MODE"):
    conv.force_ieee_float32()
  monkeypatch.setattr(conv, "_callbacks", {})
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  with pytest.raises(conv.ConvolutionError, match=r"forward conv x\(1, 5, 5, 2\).*not IEEE"):
    jax.jit(lambda x, w: conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="torch")
            ).lower(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)))


@pytest.mark.usefixtures("one_device")
def test_torch_lowering_is_exact_in_float64_on_a_whole_model():
  # float32 rounding differs between oneDNN and XLA; in float64 the two must agree
  # to rounding: a training-mode gradient of a CIFAR ResNet through BN.
  with jax.enable_x64(True):
    model = models.get("cifar_resnet20", num_classes=10)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3), jnp.float64)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64),
                             model.init(jax.random.key(1), x.astype(jnp.float32), train=False))

    def grad(impl):
      def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out))
      with conv.use_impl(impl, min_rows=0):   # every conv, however small
        fn = jax.jit(jax.grad(loss)).lower(variables["params"])
      assert ("lottery_jax_torch_conv2d_bwd" in fn.as_text()) == (impl == "torch")
      return fn.compile()(variables["params"])

    got, want = grad("torch"), grad("xla")
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale)


@pytest.mark.usefixtures("one_device")
def test_torch_lowering_under_vmap():
  xs = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
  ws = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))
  dn = ("NHWC", "HWIO", "NHWC")

  def f(impl):
    return jax.vmap(lambda x, w: conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=dn, impl=impl))

  np.testing.assert_allclose(jax.jit(f("torch"))(xs, ws), f("xla")(xs, ws), rtol=1e-5, atol=1e-5)
  got = jax.grad(lambda x, w: jnp.sum(jnp.sin(f("torch")(x, w))), argnums=(0, 1))(xs, ws)
  want = jax.grad(lambda x, w: jnp.sum(jnp.sin(f("xla")(x, w))), argnums=(0, 1))(xs, ws)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("one_device")
def test_use_impl_torch_keeps_small_convs_on_xla():
  big, small = conv.TORCH_MIN_ROWS, conv.TORCH_MIN_ROWS - 1
  with conv.use_impl("torch"):
    assert conv.resolve_impl(rows=big) == "torch"
    assert conv.resolve_impl(rows=None) == "torch"           # size unknown: counted large
    assert conv.resolve_impl(rows=small) == "xla"
    assert conv.resolve_impl(rows=small, groups=4) == "torch"   # depthwise
    assert conv.resolve_impl("torch", rows=small) == "torch"    # explicit: every conv
  with conv.use_impl("torch", min_rows=0):
    assert conv.resolve_impl(rows=1) == "torch"
  with conv.use_impl("im2col"):
    assert conv.resolve_impl(rows=1) == "im2col"             # the policy is torch's only
  assert conv.resolve_impl(rows=big) == "xla"


@pytest.mark.usefixtures("one_device")
def test_use_impl_torch_resolves_per_conv_inside_a_model():
  # The 32x32 convs of a CIFAR ResNet at batch 8 have 8192 output rows (PyTorch), the
  # 8x8 ones of the last stage 512 (XLA); outside use_impl everything is XLA's.
  model = models.get("cifar_resnet20", num_classes=10)
  x = jnp.zeros((8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  with conv.use_impl("torch"):
    hlo = jax.jit(apply).lower(variables, x).as_text()
  assert "lottery_jax_torch_conv2d_fwd" in hlo and "convolution(" in hlo
  outside = lambda v, x: apply(v, x)  # noqa: E731  (a fresh trace: jit caches by function)
  assert "lottery_jax_torch_conv2d" not in jax.jit(outside).lower(variables, x).as_text()


def _failing_conv_fn():
  return jax.jit(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="torch"))


@pytest.mark.usefixtures("one_device")
def test_a_failing_torch_call_fails_the_computation_and_is_raised(monkeypatch, caplog):
  # An exception inside the host callback makes the FFI handler return an error: the
  # jitted call raises with the conv's description, no (NaN) output ever comes back;
  # raise_pending_errors() then raises ConvolutionError with the original exception.
  def broken(*args, **kwargs):
    raise RuntimeError("simulated oneDNN failure")
  monkeypatch.setattr(torch.ops.aten, "convolution", broken)
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(Exception, match=r"forward conv x\(1, 4, 4, 2\).*simulated oneDNN") as info:
    np.asarray(_failing_conv_fn()(x, w))
  assert not isinstance(info.value, conv.ConvolutionError)   # XLA's own runtime error
  assert "simulated oneDNN failure" in caplog.text
  with pytest.raises(conv.ConvolutionError,
                     match=r"forward conv x\(1, 4, 4, 2\) w\(3, 3, 2, 2\).*strides \(1, 1\), "
                           r"padding \(1, 1\).*RuntimeError: simulated oneDNN failure") as info:
    conv.raise_pending_errors()
  assert isinstance(info.value, RuntimeError)
  assert isinstance(info.value.__cause__, RuntimeError)
  conv.raise_pending_errors()   # the record is cleared: nothing left to raise
  monkeypatch.undo()
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  np.testing.assert_allclose(_failing_conv_fn()(x, w), _lax_conv(x, w), rtol=1e-6)  # recovers


@pytest.mark.usefixtures("one_device")
def test_a_failing_torch_gradient_is_raised(monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("simulated backward failure")
  monkeypatch.setattr(torch.ops.aten, "convolution_backward", broken)
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 3))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(_failing_conv_fn()(x, w)), argnums=1))
  with pytest.raises(Exception, match=r"backward conv x\(1, 6, 6, 2\).*simulated backward"):
    np.asarray(grad(x, w))
  with pytest.raises(conv.ConvolutionError, match="backward conv.*simulated backward failure"):
    conv.raise_pending_errors()


@pytest.mark.usefixtures("one_device")
def test_a_failing_registration_names_the_conv(monkeypatch):
  def refuse(*args, **kwargs):
    raise RuntimeError("no FFI here")
  monkeypatch.setattr(conv, "_callbacks", {})
  monkeypatch.setattr(jax.ffi, "register_ffi_target", refuse)
  with pytest.raises(conv.ConvolutionError,
                     match=r"could not register.*forward conv x\(1, 7, 7, 2\).*no FFI here"):
    _failing_conv_fn().lower(jnp.ones((1, 7, 7, 2)), jnp.ones((3, 3, 2, 2)))


# ------------------------------------------------------------------------- "im2col"
_U32 = 2.0 ** -24   # float32 unit roundoff


def _zoo_convs():
  """Every distinct convolution of the registered models, as traced (abstractly) by
  `model.init` under `use_impl("im2col")`: (input shape without batch, kernel shape,
  strides, padding, kernel dilation, dimension numbers, feature groups)."""
  seen = {}
  real = conv.conv_im2col

  def record(lhs, rhs, strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, *rest):
    pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    seen[(lhs.shape[1:], rhs.shape, tuple(strides), pad, tuple(rhs_dilation or ()), dn,
          feature_group_count)] = None
    return real(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, *rest)

  conv.conv_im2col = record
  try:
    for name in models.names():
      spec = models.spec(name)
      model = models.get(name, num_classes=10)
      with conv.use_impl("im2col"):
        jax.eval_shape(lambda m=model, s=spec: m.init(
            jax.random.key(0), jnp.zeros((1, *s.input_shape)), train=False))
  finally:
    conv.conv_im2col = real
  return list(seen)


def _shrink(in_shape, w_shape, dn, groups, most=8):
  """The same conv with at most `most` input/output channels (depthwise stays
  depthwise) and spatial sizes over 9 cut to 8 or 9 (keeping the parity, which with
  strides of 1-2 decides "SAME" padding and the last window): the structure (taps,
  strides, padding, groups, layout) is what differs between the zoo's convs; the sum
  lengths enter the tolerance."""
  ins, ws = list(in_shape), list(w_shape)
  for d in dn.lhs_spec[2:]:
    ins[d - 1] = ins[d - 1] if ins[d - 1] <= 9 else 8 + ins[d - 1] % 2
  ci, wi, wo = dn.lhs_spec[1] - 1, dn.rhs_spec[1], dn.rhs_spec[0]
  if groups > 1:
    assert groups == ins[ci] == ws[wo] and ws[wi] == 1, (in_shape, w_shape, groups)
    groups = ins[ci] = ws[wo] = min(groups, most)
  else:
    ins[ci], ws[wi], ws[wo] = min(ins[ci], most), min(ws[wi], most), min(ws[wo], most)
  return tuple(ins), tuple(ws), groups


def _gamma(n):
  return n * _U32 / (1 - n * _U32)


def test_im2col_matches_lax_on_every_zoo_conv_under_vmap():
  """`conv_im2col` = `lax.conv_general_dilated`, forward and both gradients, under
  vmap over a sibling axis (per-copy inputs and kernels), for every distinct conv of
  the model zoo (channels capped at 8).

  Tolerance from float32 rounding, elementwise: each output element is a sum of n
  products (n = taps * C_in / groups for y, taps * C_out / groups for dx, N * Ho * Wo
  for dw); any evaluation order in float32 is within gamma_n * sum|products| of the
  exact sum (Higham, Accuracy and Stability, 2nd ed., eqs. 3.4-3.5, with
  gamma_n = n u / (1 - n u), u = 2^-24), whatever the order or blocking; two orders
  are within twice that of each other. sum|products| is the same conv (and vjp) on
  |x|, |w|, |g|. A wrong tap, stride, pad or group gives errors of the size of the
  values themselves, orders of magnitude above this bound."""
  zoo = _zoo_convs()
  assert len(zoo) > 40   # 88 on 2026-12-03: 1-D, 1x1/3x3/5/7x7, strides 1-2, depthwise
  kinds = {(len(w), w[0], s[0], g > 1) for _, w, s, _, _, _, g in zoo}
  assert {(3, 5, 2, False), (4, 7, 2, False), (4, 3, 2, True), (4, 1, 2, False)} <= kinds
  configs = sorted({(*_shrink(i, w, dn, g), s, p, d, dn) for i, w, s, p, d, dn, g in zoo},
                   key=str)
  S, N = 2, 2
  for i, (in_shape, w_shape, groups, strides, padding, dil, dn) in enumerate(configs):
    ks = jax.random.split(jax.random.key(i), 3)
    x = jax.random.normal(ks[0], (S, N, *in_shape), jnp.float32)
    w = jax.random.normal(ks[1], (S, *w_shape), jnp.float32)

    def fwd_bwd(fn):
      def run(x, w, g):
        y, vjp = jax.vjp(lambda x, w: fn(x, w, strides, padding, None, dil or None, dn,
                                         groups), x, w)
        return (y, *vjp(g))
      return jax.jit(jax.vmap(run))

    ref, new = fwd_bwd(lax.conv_general_dilated), fwd_bwd(conv.conv_im2col)
    y_shape = jax.eval_shape(jax.vmap(lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, None, dil or None, dn, groups)), x, w).shape
    g = jax.random.normal(ks[2], y_shape, jnp.float32)
    got, want = new(x, w, g), ref(x, w, g)
    bounds = ref(jnp.abs(x), jnp.abs(w), jnp.abs(g))
    taps = int(np.prod([w_shape[d] for d in dn.rhs_spec[2:]]))
    c_in, c_out = w_shape[dn.rhs_spec[1]] * groups, w_shape[dn.rhs_spec[0]]
    out_pixels = int(np.prod([y_shape[1 + d] for d in dn.out_spec[2:]]))
    terms = (taps * c_in // groups, taps * c_out // groups, N * out_pixels)
    for what, a, b, bound, n in zip(("y", "dx", "dw"), got, want, bounds, terms):
      assert a.shape == b.shape, (what, a.shape, b.shape)
      err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
      tol = 2 * _gamma(n) * np.asarray(bound, np.float64)
      assert np.all(err <= tol), (what, in_shape, w_shape, strides, padding, groups,
                                  float(np.max(err - tol)))


def test_im2col_under_vmap_is_batched_gemm():
  """Under vmap with per-copy kernels no convolution is left (forward and both
  gradients): dots with a batch dimension, not a grouped conv."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))

  def loss(x, w):
    y = conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="im2col")
    return jnp.sum(y ** 2)

  text = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)))).lower(x, w).compile().as_text()
  assert " convolution(" not in text
  assert "lhs_batch_dims={0}" in text


def test_im2col_refuses_what_it_does_not_implement():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  dn = ("NHWC", "HWIO", "NHWC")
  with pytest.raises(ValueError, match="im2col.*lhs.*dilation"):
    conv.conv_im2col(x, w, (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=dn)
  with pytest.raises(ValueError, match="im2col.*batch_group_count"):
    conv.conv_im2col(x, jnp.ones((3, 3, 2, 2)), (1, 1), "SAME", dimension_numbers=dn,
                     batch_group_count=2)
  with pytest.raises(ValueError, match="im2col.*feature_group_count=3"):
    conv.conv_im2col(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=3)


# ------------------------------------------- "xla": convs XLA:CPU would run swapped
_SWAP_CASES = [
    # (input spatial, kernel, strides, padding): VGG-19's 3x3 convs on 2x2 maps swap, ...
    ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    # ... those on 4x4 maps do not, nor 1x1 kernels, nor a VALID conv over the whole map;
    # a stride-2 conv down to 2x2 maps does not, but its input gradient does
    ((1, 4), (1, 3), (1, 1), ((0, 0), (1, 1))),
    ((4, 4), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 2), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ((3, 3), (3, 3), (1, 1), ((0, 0), (0, 0))),
    ((4, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((7, 7), (7, 7), (2, 2), ((3, 3), (3, 3))),
]


def _runs_swapped(fn, *args) -> bool:
  """Whether XLA's compiled program holds a conv with swapped operands (the kernel
  slid over as the input: batch and feature swapped in the output, `->f01b`)."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  return "->f01b" in text or "->f0b" in text


@pytest.mark.parametrize("case", _SWAP_CASES, ids=[str(c[:3]) for c in _SWAP_CASES])
def test_swap_predicate_matches_what_xla_cpu_compiles(case):
  """`xla_cpu_swaps_operands` (a transcription of XLA's test) says what this jaxlib's
  CPU compiler does, for the forward conv and for the input-gradient conv of autodiff."""
  size, ksize, strides, padding = case
  x = jnp.ones((2, *size, 4))
  w = jnp.ones((*ksize, 4, 4))
  f = lambda x, w: _reference_nd(x, w, strides, padding)  # noqa: E731
  y = jax.eval_shape(f, x, w)
  dx = lambda x, w, g: jax.vjp(lambda x_: f(x_, w), x)[1](g)[0]  # noqa: E731
  fwd_swapped = _runs_swapped(f, x, w)
  dx_swapped = _runs_swapped(dx, x, w, jnp.ones(y.shape))
  assert conv.xla_cpu_swaps_operands(size, ksize, strides, padding, (1, 1), (1, 1)) \
      == fwd_swapped
  assert conv.swapped_on_cpu(x, w, strides, padding, dimension_numbers=_NHWC) \
      == (fwd_swapped or dx_swapped)


def _reference_nd(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def test_default_lowering_runs_swapped_convs_as_im2col():
  """Under the default "xla", a conv XLA:CPU would swap (VGG-19's 3x3 convs on 2x2 maps)
  is im2col + matmul, forward and both gradients: no convolution left, values equal to
  XLA's convolution; an ordinary conv stays XLA's."""
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 2, 2, 16))
  w = jax.random.normal(kw, (3, 3, 16, 8))
  g = jax.random.normal(kg, (3, 2, 2, 8))

  def fwd_bwd(conv_fn):
    def run(x, w, g):
      y, vjp = jax.vjp(lambda x, w: conv_fn(x, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=_NHWC), x, w)
      return (y, *vjp(g))
    return jax.jit(run)

  ours = fwd_bwd(conv.conv_general_dilated)
  assert " convolution(" not in ours.lower(x, w, g).compile().as_text()
  for got, want in zip(ours(x, w, g), fwd_bwd(lax.conv_general_dilated)(x, w, g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with conv.use_impl("xla"):
    assert conv.swapped_on_cpu(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)
  x4 = jnp.ones((3, 4, 4, 16))
  assert not conv.swapped_on_cpu(x4, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)
  assert " convolution(" in fwd_bwd(conv.conv_general_dilated).lower(
      x4, w, jnp.ones((3, 4, 4, 8))).compile().as_text()


def test_vgg19_training_gradient_has_no_swapped_conv():
  """jackpot_vgg19 (3x3 convs on 2x2 maps at 32x32 inputs): its compiled training-mode
  gradient, under the default lowering, holds no conv with swapped operands (each took
  ~200x a GEMM's time on the CPU, BENCHMARKS.md "VGG-19 on the CPU")."""
  model = models.get("jackpot_vgg19", num_classes=10)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.sum(out)

  assert not _runs_swapped(jax.grad(loss), variables["params"])
