"""Model zoo: registry entries, published parameter counts, both modes, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_jax import models
from lottery_jax.models import BatchNorm

# Published counts (torchvision for ImageNet models; He et al. / Frankle & Carbin for the
# rest). The CIFAR ResNet-20 number is the usual "0.27M" exactly.
PARAM_COUNTS = {
    ("resnet18", 1000): 11_689_512,
    ("resnet34", 1000): 21_797_672,
    ("resnet50", 1000): 25_557_032,
    ("mobilenet_v2", 1000): 3_504_872,
    ("cifar_mobilenet_v2", 10): 2_236_682,
    ("cifar_resnet18", 10): 11_173_962,
    ("cifar_resnet20", 10): 269_722,
    ("cifar_resnet32", 10): 464_154,
    ("cifar_resnet56", 10): 853_018,
    ("jackpot_resnet32", 10): 1_849_898,
    ("jackpot_vgg19", 10): 20_035_018,
    ("lenet_300_100", 10): 266_610,
    ("conv2", 10): 4_301_642,
    ("conv4", 10): 2_425_930,
    ("conv6", 10): 2_262_602,
    ("mnist1d_cnn", 10): 19_562,
    ("digits_cnn", 10): 94_186,
}

# Forward inputs: small spatial sizes keep the CPU run short; models whose head
# needs an exact size keep it.
FORWARD_SHAPES = {
    "resnet18": (32, 32, 3),
    "cifar_resnet18": (16, 16, 3),
    "mobilenet_v2": (32, 32, 3),
    "cifar_mobilenet_v2": (16, 16, 3),
}
# Compiling these on a shared 2-core CPU is slow; they share their code with
# resnet18, and resnet50 runs forward in both modes in tests/test_convert.py.
NO_FORWARD = {"resnet34", "resnet50"}


def random_variables(model, x, seed=0):
  """Variables of `model` filled from numpy (fan-in scaled normals, random BN stats).

  Cheaper than `model.init` on CPU, where compiling the per-leaf random
  initialisers dominates the run time of these tests.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    if name.endswith("['var']"):
      return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,num_classes", sorted(PARAM_COUNTS))
def test_param_count(name, num_classes):
  model = models.get(name, num_classes=num_classes)
  shape = (1,) + models.spec(name).input_shape
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  assert _count(variables["params"]) == PARAM_COUNTS[(name, num_classes)]
  # The classifier path names a real sub-tree holding a kernel.
  sub = variables["params"]
  for key in models.spec(name).classifier:
    sub = sub[key]
  assert "kernel" in sub


def test_every_registered_model_has_a_count():
  assert {n for n, _ in PARAM_COUNTS} == set(models.names())


@pytest.mark.parametrize("name", [n for n in models.names() if n not in NO_FORWARD])
def test_forward_both_modes(name):
  model = models.get(name, num_classes=7)
  shape = FORWARD_SHAPES.get(name, models.spec(name).input_shape)
  x = jax.random.normal(jax.random.key(1), (4,) + shape)

  variables = random_variables(model, x)
  y_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  y_train, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert y_eval.shape == (4, 7) and y_train.shape == (4, 7)
  assert np.all(np.isfinite(y_eval)) and np.all(np.isfinite(y_train))
  if "batch_stats" in variables:
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(updates["batch_stats"])
    assert len(old) == len(new) and any(not np.allclose(a, b) for a, b in zip(old, new))
    assert not np.allclose(y_eval, y_train)


@pytest.mark.parametrize("name", ["cifar_resnet20", "jackpot_vgg19", "mnist1d_cnn"])
def test_non_affine_bn(name):
  model = models.get(name, num_classes=10, bn_affine=False)
  shape = (2,) + models.spec(name).input_shape
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])]
  assert all("kernel" in p or "fc" in p or "classifier" in p for p in paths), paths
  assert variables["batch_stats"]


def test_init_runs():
  model = models.get("mnist1d_cnn", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.ones((2, 40, 1)))
  assert _count(variables["params"]) == PARAM_COUNTS[("mnist1d_cnn", 10)]
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], np.ones(32))


def test_bf16_dtype():
  model = models.get("cifar_resnet20", num_classes=10, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = random_variables(model, x)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(variables))
  assert jax.jit(model.apply)(variables, x).dtype == jnp.bfloat16


def test_unknown_model_lists_names():
  with pytest.raises(ValueError, match="resnet50"):
    models.get("resnet51", num_classes=10)


def test_batchnorm_matches_pytorch_formulas():
  """Train mode: biased variance normalises, unbiased variance feeds the running var."""
  x = np.random.default_rng(0).normal(2.0, 3.0, (6, 3, 5)).astype(np.float32)
  bn = BatchNorm()
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  # init leaves the running averages alone
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(5))
  y, upd = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  flat = x.reshape(-1, 5)
  mean, var = flat.mean(0), flat.var(0)
  n = flat.shape[0]
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1),
                             rtol=1e-6)
  y_eval = bn.apply({**variables, **upd}, x, use_running_average=True)
  np.testing.assert_allclose(
      y_eval, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5), rtol=1e-5,
      atol=1e-5)


def test_batchnorm_against_torch():
  torch = pytest.importorskip("torch", reason="torch is the optional extra: pip install 'lottery-jax[torch]'")
  rng = np.random.default_rng(1)
  x = rng.normal(1.0, 2.0, (4, 6, 6, 8)).astype(np.float32)
  ref = torch.nn.BatchNorm2d(8)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(rng.normal(size=8).astype(np.float32)))
    ref.bias.copy_(torch.from_numpy(rng.normal(size=8).astype(np.float32)))
    ref.running_mean.copy_(torch.from_numpy(rng.normal(size=8).astype(np.float32)))
    ref.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, size=8).astype(np.float32)))
  variables = {
      "params": {"scale": ref.weight.detach().numpy().copy(),
                 "bias": ref.bias.detach().numpy().copy()},
      "batch_stats": {"mean": ref.running_mean.numpy().copy(),
                      "var": ref.running_var.numpy().copy()},
  }
  ref.train()
  with torch.no_grad():
    y_ref = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  y, upd = BatchNorm().apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], ref.running_mean.numpy(), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], ref.running_var.numpy(), rtol=1e-6,
                             atol=1e-6)


def test_batchnorm_gradients_match_autodiff_and_torch():
  # The hand-written backward of `batch_norm_train` against autodiff of the plain
  # formula (float64, with cotangents on every output, including the statistics) ...
  from lottery_jax.models.layers import batch_norm_train

  def plain(x, scale, bias, eps):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var

  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(k[0], (4, 5, 3, 7), jnp.float64) * 3 + 1
    scale = jax.random.normal(k[1], (7,), jnp.float64)
    bias = jax.random.normal(k[2], (7,), jnp.float64)
    cts = (jax.random.normal(k[3], x.shape, jnp.float64),
           jax.random.normal(k[4], (7,), jnp.float64), jax.random.normal(k[5], (7,), jnp.float64))
    out, vjp = jax.vjp(lambda *a: batch_norm_train(*a, 1e-5), x, scale, bias)
    out_ref, vjp_ref = jax.vjp(lambda *a: plain(*a, 1e-5), x, scale, bias)
    for a, b in zip(out, out_ref):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(vjp(cts), vjp_ref(cts)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # Only y differentiated (the statistics' cotangents are symbolic zeros), under jit.
    f = lambda fn: jax.jit(jax.grad(  # noqa: E731
        lambda x, s: jnp.sum(jnp.sin(fn(x, s, bias, 1e-5)[0])), argnums=(0, 1)))
    for a, b in zip(f(batch_norm_train)(x, scale), f(plain)(x, scale)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)

  # ... and against PyTorch's BatchNorm2d backward, through the Flax module.
  torch = pytest.importorskip("torch", reason="torch is the optional extra")
  rng = np.random.default_rng(2)
  xn = rng.normal(1.0, 2.0, (4, 6, 6, 8)).astype(np.float32)
  gn = rng.normal(size=xn.shape).astype(np.float32)
  ref = torch.nn.BatchNorm2d(8)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(rng.normal(size=8).astype(np.float32)))
  xt = torch.from_numpy(xn).permute(0, 3, 1, 2).requires_grad_()
  ref.train()
  ref(xt).backward(torch.from_numpy(gn).permute(0, 3, 1, 2))
  variables = {"params": {"scale": ref.weight.detach().numpy().copy(),
                          "bias": ref.bias.detach().numpy().copy()},
               "batch_stats": {"mean": np.zeros(8, np.float32), "var": np.ones(8, np.float32)}}

  def loss(params, x):
    y, _ = BatchNorm().apply({**variables, "params": params}, x, use_running_average=False,
                             mutable=["batch_stats"])
    return jnp.sum(y * gn)

  dparams, dx = jax.grad(loss, argnums=(0, 1))(variables["params"], jnp.asarray(xn))
  np.testing.assert_allclose(dx, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dparams["scale"], ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dparams["bias"], ref.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_batch_stats_under_sharded_jit_are_global():
  """A batch sharded over 8 devices gives the same statistics as on one device."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = np.array(jax.devices())
  if devices.size < 2:
    pytest.skip("needs several (simulated) devices")
  mesh = Mesh(devices, ("data",))
  x = jax.random.normal(jax.random.key(0), (devices.size * 2, 4, 4, 3)) * 3 + 1
  bn = BatchNorm()
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  step = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False, mutable=["batch_stats"]))
  y1, u1 = step(variables, x)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  y2, u2 = step(variables, xs)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(u1["batch_stats"]["var"], u2["batch_stats"]["var"], rtol=1e-5)


def test_conv6_widths():
  # The quarter-width Conv-6 of the strong-ticket evidence runs (RESULTS.md): the three
  # blocks' channels follow `widths`, the dense layers stay 256-256.
  m = models.get("conv6", 10, widths=(16, 32, 64))
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  p = v["params"]
  assert [p[f"conv{i}"]["kernel"].shape[-1] for i in range(1, 7)] == [16, 16, 32, 32, 64, 64]
  assert p["fc1"]["kernel"].shape == (4 * 4 * 64, 256)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p)) == 402_842


@pytest.mark.parametrize("name,side", [("cifar_mobilenet_v2", 4), ("mobilenet_v2", 1)])
def test_mobilenet_v2_maps_before_pooling_on_cifar_inputs(name, side):
  """The CIFAR strides keep 4x4 maps before the pooling on 32x32 images (stem and second
  stage at stride 1: 32 / 8); torchvision's strides leave 1x1 (32 / 32)."""
  model = models.get(name, num_classes=10)
  x = jnp.zeros((1, 32, 32, 3))

  def last_features():
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    return state["intermediates"]["features_18_0"]["__call__"][0]

  assert jax.eval_shape(last_features).shape == (1, side, side, 1280)
