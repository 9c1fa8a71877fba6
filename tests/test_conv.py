"""The CPU conv lowerings equal `lax.conv_general_dilated` (forward and both gradients)."""

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


def _reference(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("impl", ["patches", "taps", "barrier"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_match_lax(impl, case):
  n, h, w_, c, o, k, stride, padding = case
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, w_, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c, o), jnp.float32)
  fn = {"patches": conv.conv2d_patches, "taps": conv.conv2d_taps,
        "barrier": conv.conv2d_barrier}[impl]

  y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, stride, padding), x, w)
  y, vjp = jax.vjp(lambda x, w: fn(x, w, (stride, stride), padding), x, w)
  g = jax.random.normal(kg, y_ref.shape, jnp.float32)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["patches", "taps", "barrier"])
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
                                  feature_group_count=4, impl="patches")
  want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                  feature_group_count=4)
  np.testing.assert_array_equal(got, want)
  x1 = jax.random.normal(jax.random.key(0), (2, 10, 3))  # 1-D
  w1 = jax.random.normal(jax.random.key(1), (3, 3, 5))
  got = conv.conv_general_dilated(x1, w1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
                                  impl="taps")
  want = lax.conv_general_dilated(x1, w1, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
  np.testing.assert_array_equal(got, want)


def test_impl_resolution():
  assert conv.resolve_impl("xla") == "xla"
  with conv.use_impl("patches"):
    assert conv.resolve_impl() == "patches"
  # The test session has 8 simulated devices: "auto" is XLA's convolution there
  # (test_auto_picks_torch_only_where_it_measured_faster covers one device).
  assert conv.resolve_impl() == "xla"
  with pytest.raises(ValueError, match="conv impl"):
    conv.resolve_impl("im2col")


@pytest.mark.parametrize("impl", ["patches", "taps", "barrier"])
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

torch = pytest.importorskip("torch")

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
      with conv.use_impl(impl):
        fn = jax.jit(jax.grad(loss)).lower(variables["params"])
      assert ("lottery_jax_torch_conv2d_bwd" in fn.as_text()) == (impl == "torch")
      return fn.compile()(variables["params"])

    got, want = grad("torch"), grad("xla")
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale)


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


def test_torch_lowering_on_sharded_operands():
  # Explicit "torch" with a batch sharded over the 8 simulated devices: XLA runs the
  # custom call on the gathered operands; the result must still be right.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = jax.device_put(jax.random.normal(jax.random.key(0), (len(jax.devices()), 6, 6, 3)),
                     NamedSharding(mesh, P("data")))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  dn = ("NHWC", "HWIO", "NHWC")
  loss = lambda impl: jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(  # noqa: E731
      conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, impl=impl))),
      argnums=(0, 1)))
  (v1, g1), (v0, g0) = loss("torch")(x, w), loss("xla")(x, w)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_auto_picks_torch_only_where_it_measured_faster(monkeypatch):
  monkeypatch.delenv(conv.ENV_VAR, raising=False)
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  big, small = conv.TORCH_MIN_ROWS, conv.TORCH_MIN_ROWS - 1
  assert conv.resolve_impl(rows=big) == "torch"
  assert conv.resolve_impl(rows=small) == "xla"
  assert conv.resolve_impl(rows=small, groups=4) == "torch"   # depthwise
  monkeypatch.setattr(jax, "device_count", lambda *a: 8)
  assert conv.resolve_impl(rows=big) == "xla"                 # sharded processes
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  monkeypatch.setenv(conv.ENV_VAR, "xla")
  assert conv.resolve_impl(rows=big) == "xla"
  monkeypatch.setenv(conv.ENV_VAR, "im2col")
  with pytest.raises(ValueError, match=conv.ENV_VAR):
    conv.resolve_impl()
  monkeypatch.delenv(conv.ENV_VAR)
  monkeypatch.setattr(conv, "torch_available", lambda: False)
  assert conv.resolve_impl(rows=big) == "xla"                 # PyTorch not installed
  with pytest.raises(ImportError, match="pip install torch"):
    conv.resolve_impl("torch")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert conv.resolve_impl(rows=big) == "xla"
  with pytest.raises(ValueError, match="CPU backend only"):
    conv.resolve_impl("torch")


def test_auto_resolves_per_conv_inside_a_model(monkeypatch):
  # A one-device process: the 32x32 convs of a CIFAR ResNet at batch 8 have 8192
  # output rows (PyTorch), the 8x8 ones of the last stage 512 (XLA).
  monkeypatch.delenv(conv.ENV_VAR, raising=False)
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  model = models.get("cifar_resnet20", num_classes=10)
  x = jnp.zeros((8, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
  assert "lottery_jax_torch_conv2d_fwd" in hlo and "convolution(" in hlo


def test_a_failing_torch_call_poisons_its_outputs_with_nan(monkeypatch, caplog):
  # A C callback cannot raise into XLA: the failure is logged and the outputs are NaN,
  # which the training loop's finiteness check stops on.
  def broken(*args, **kwargs):
    raise RuntimeError("simulated oneDNN failure")
  monkeypatch.setattr(torch.ops.aten, "convolution", broken)
  x = jnp.ones((1, 4, 4, 2))
  w = jnp.ones((3, 3, 2, 2))
  y = conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                impl="torch")
  assert np.isnan(np.asarray(y)).all()
  assert "simulated oneDNN failure" in caplog.text
  assert isinstance(conv._host_errors[-1], RuntimeError)
