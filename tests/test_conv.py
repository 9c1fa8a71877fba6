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
  expected = conv.DEFAULT_IMPL if jax.default_backend() == "cpu" else "xla"
  assert conv.resolve_impl() == expected
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
