"""Which CPU convolution lowering is faster, per model of the zoo: XLA's or PyTorch's.

  python benchmarks/conv_lowering.py [--repeats 5] [--models digits_cnn,cifar_resnet20,...]

For each model, one jitted training-mode gradient of the cross-entropy (forward,
backward, BN statistics: the work of a training or search step without the optimizer)
is compiled three times: "xla" (`conv.use_impl("xla")`, the library's default), "torch"
(`conv.use_impl("torch", min_rows=0)`: every conv in PyTorch) and "conv=torch"
(`conv.use_impl("torch")`, what `--config.model.conv=torch` runs: PyTorch for convs with
>= conv.TORCH_MIN_ROWS output rows and grouped convs, XLA for the others), and the three
are timed interleaved in one process (medians of --repeats, after one warm-up call
each). Needs a one-device process (the "torch" lowering refuses several devices). The gradients of "torch" and "xla" are compared too: max |difference| over the
gradient tree / max |xla gradient|. These differences are float32 rounding, which
grows with depth in training mode (BN); in float64 the two lowerings agree to 1e-12
(tests/test_conv.py::test_torch_lowering_is_exact_in_float64_on_a_whole_model). This
is the evidence behind `conv.TORCH_MIN_ROWS` (the size policy of the "torch" opt-in).
Before the lowering became the config field `model.conv`, the third column was the
library default "auto" on a one-device CPU; it is the same policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax import models  # noqa: E402
from lottery_jax.models import conv  # noqa: E402

# model -> (batch, input shape without batch, classes)
CASES = {
    "digits_cnn": (64, (8, 8, 1), 10),
    "conv4": (64, (32, 32, 3), 10),
    "cifar_resnet20": (128, (32, 32, 3), 10),
    "jackpot_resnet32": (128, (32, 32, 3), 10),
    "mobilenet_v2": (16, (96, 96, 3), 100),
    "resnet50": (8, (128, 128, 3), 100),
}


def build(name: str, impl: str, batch: int, shape, classes: int):
  model = models.get(name, num_classes=classes)
  x = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
  y = jax.random.randint(jax.random.key(1), (batch,), 0, classes)
  variables = model.init(jax.random.key(2), x, train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})

  def loss(params, batch_stats):
    logits, new = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                              mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

  scope = {"xla": conv.use_impl("xla"), "torch": conv.use_impl("torch", min_rows=0),
           "conv=torch": conv.use_impl("torch")}[impl]
  with scope:   # use_impl acts at trace time: compile inside the block
    fn = jax.jit(jax.grad(loss, has_aux=True)).lower(params, batch_stats).compile()
  return lambda: fn(params, batch_stats)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--models", default=",".join(CASES))
  a = ap.parse_args(argv)
  if not conv.torch_available():
    sys.exit("error: this benchmark compares against PyTorch's convolution: pip install torch")
  print(f"jax {jax.__version__}, devices {jax.device_count()} ({jax.default_backend()}), "
        f"cores {os.cpu_count()}, repeats {a.repeats} interleaved, TORCH_MIN_ROWS "
        f"{conv.TORCH_MIN_ROWS}")
  print("| model | batch | input | xla ms | torch ms | conv=torch ms | torch / xla "
        "| conv=torch / xla | grad max diff / max grad |")
  print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
  for name in a.models.split(","):
    batch, shape, classes = CASES[name]
    fns = {impl: build(name, impl, batch, shape, classes) for impl in ("xla", "torch", "conv=torch")}
    outs = {impl: jax.block_until_ready(fn()) for impl, fn in fns.items()}
    # Over the whole gradient tree: max |torch - xla| / max |xla| (per-leaf ratios are
    # noise for leaves whose gradient is zero in exact arithmetic, e.g. a conv bias
    # followed by BatchNorm).
    pairs = list(zip(jax.tree.leaves(outs["torch"][0]), jax.tree.leaves(outs["xla"][0])))
    diff = (max(float(jnp.max(jnp.abs(g - r))) for g, r in pairs)
            / max(float(jnp.max(jnp.abs(r))) for _, r in pairs))
    times = {impl: [] for impl in fns}
    for _ in range(a.repeats):
      for impl, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[impl].append(time.perf_counter() - t0)
    med = {impl: 1e3 * statistics.median(ts) for impl, ts in times.items()}
    print(f"| {name} | {batch} | {'x'.join(map(str, shape))} | {med['xla']:.1f} | "
          f"{med['torch']:.1f} | {med['conv=torch']:.1f} | {med['torch'] / med['xla']:.2f} | "
          f"{med['conv=torch'] / med['xla']:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
