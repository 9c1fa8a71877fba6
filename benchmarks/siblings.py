"""S siblings in one vmapped program against S sequential runs (issue 14.5).

Run:  python benchmarks/siblings.py [--models digits_cnn,cifar_resnet20] [--counts 1,2,4,8]
                                    [--steps 20] [--repeats 3]
      (models: digits_cnn, mnist1d_cnn, lenet_300_100, cifar_resnet20; BENCHMARKS.md
      "Siblings" has the measured tables)

For each model and S, two ways to train S copies that differ only in data order, both
built by the engine (`loop.build`, dense program, one mesh over the visible devices,
synthetic data of the model's input shape):

* vmapped: one state with a leading sibling axis, `siblings.count=S`, one jitted
  step per training step (what `experiment="siblings"` with `siblings.vmap=True` runs),
  with `model.conv` "xla" (vmap turns each conv into one grouped conv), "unrolled"
  (one ordinary conv per sibling inside the same program) or "im2col" (patches +
  one matmul in plain jnp, `conv.conv_im2col`: under vmap a batched GEMM; a lowering
  measured here only, which this script alone lets the config name);
* sequential: the single-copy step of `siblings.count=0`, run S times per training
  step on S states (what `siblings.vmap=False` amounts to, minus the per-stage
  start-up, which it pays S times in addition: reported as `compile s`).

Each timing is `--steps` training steps of all S copies, ended by
`block_until_ready`; every way (sequential and each `--convs` lowering, all built in
one process against one sequential baseline) runs once per repeat, in an order that
rotates from repeat to repeat, and the medians over `--repeats` are reported. Memory: XLA's own estimate for the compiled step (arguments + outputs +
temporaries - aliased; `compiled.memory_analysis()`), the vmapped step against S
times the single step's temporaries plus S states. FLOPs: `compiled.cost_analysis()`.
The accelerator projection at the end is arithmetic from those FLOPs and bytes, not a
measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step  # noqa: E402  (registers the synthetic data source)
from lottery_jax import models  # noqa: E402
from lottery_jax.engine import loop  # noqa: E402
from lottery_jax.engine import config as config_lib  # noqa: E402
from lottery_jax.engine.config import base_config  # noqa: E402

# "im2col" (`lottery_jax.models.conv.conv_im2col`) is a measured lowering that the
# library does not offer as `model.conv` (slower than "unrolled" here, BENCHMARKS.md);
# this process alone lets the config name it.
if "im2col" not in config_lib.CONV_IMPLS:
  config_lib.CONV_IMPLS = (*config_lib.CONV_IMPLS, "im2col")

# The batch each model's own configs train with: digits 64 (configs/siblings_quick.py),
# MNIST-1D 128 (configs/siblings_sweep.py:mnist1d), LeNet-300-100 60 (open_lth's MNIST),
# CIFAR-10 128.
BATCH = {"digits_cnn": 64, "mnist1d_cnn": 128, "lenet_300_100": 60, "cifar_resnet20": 128}


def config(model: str, siblings: int, conv: str = "xla"):
  spec = models.spec(model)
  search_step._SYNTHETIC.update(shape=tuple(spec.input_shape), classes=10,
                                examples=2 * BATCH[model])
  c = base_config()
  c.model.name = model
  c.data.name = "_bench_synthetic"
  c.data.batch_size = BATCH[model]
  c.mask.program = "dense"
  c.num_steps = 10_000
  c.siblings.count = siblings
  c.model.conv = conv
  return c


def _mem_flops(run, state, batch) -> tuple[float, float]:
  compiled = run.train_step.lower(state, batch).compile()
  m = compiled.memory_analysis()
  mem = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
         - m.alias_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return mem / 1e6, float(cost.get("flops", float("nan")))


def measure(model: str, S: int, steps: int, repeats: int,
            convs: tuple[str, ...] = ("xla",)) -> list[dict]:
  """One row per conv lowering of the vmapped program, all timed in the same process
  against the same sequential baseline: each repeat runs every way once, in an order
  that rotates from repeat to repeat (so slow phases of a busy machine hit every way),
  and the medians over repeats are compared."""
  with jax.transfer_guard("allow"):
    t0 = time.time()
    one = loop.build(config(model, 0))
    batch = next(one.train_iter())
    states = [jax.tree.map(lambda x: x.copy(), one.state) for _ in range(S)]
    states[0], _ = one.train_step(states[0], batch)
    jax.block_until_ready(states[0])
    seq_compile = time.time() - t0
    one_mem, one_flops = _mem_flops(one, states[0], batch)
    vms = {}
    for conv in convs:
      t0 = time.time()
      vm = loop.build(config(model, S, conv))
      vm_iter = vm.train_iter()
      vm_batch = next(vm_iter)
      vm_iter.close()
      vm_state, _ = vm.train_step(vm.state, vm_batch)   # compile
      jax.block_until_ready(vm_state)
      compile_s = time.time() - t0
      vms[conv] = dict(run=vm, state=vm_state, batch=vm_batch, compile_s=compile_s,
                       mem_flops=_mem_flops(vm, vm_state, vm_batch))

  ways = ["sequential", *convs]
  times = {w: [] for w in ways}
  for r in range(repeats):
    for way in ways[r % len(ways):] + ways[:r % len(ways)]:
      t0 = time.perf_counter()
      if way == "sequential":
        for _ in range(steps):
          for i in range(S):
            states[i], _ = one.train_step(states[i], batch)
        jax.block_until_ready(states)
      else:
        v = vms[way]
        for _ in range(steps):
          v["state"], _ = v["run"].train_step(v["state"], v["batch"])
        jax.block_until_ready(v["state"])
      times[way].append((time.perf_counter() - t0) / steps)
  s = statistics.median(times["sequential"])
  rows = []
  for conv in convs:
    v = statistics.median(times[conv])
    vm_mem, vm_flops = vms[conv]["mem_flops"]
    rows.append({"model": model, "S": S, "conv": conv, "vmapped_ms": 1e3 * v,
                 "sequential_ms": 1e3 * s, "ratio": v / s, "vmapped_MB": vm_mem,
                 "sequential_MB": S * one_mem, "one_copy_MB": one_mem,
                 "vmapped_GFLOP": vm_flops / 1e9, "sequential_GFLOP": S * one_flops / 1e9,
                 "vmapped_compile_s": vms[conv]["compile_s"],
                 "sequential_compile_s": seq_compile})
  return rows


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default="digits_cnn,cifar_resnet20")
  ap.add_argument("--counts", default="1,2,4,8")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--convs", default="xla,unrolled",
                  help="config.model.conv of the vmapped program: 'xla' (vmap's grouped "
                       "convolutions), 'unrolled' (one convolution per sibling) and/or "
                       "'im2col' (patches + matmul: batched GEMMs under vmap)")
  a = ap.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPUs visible; steps {a.steps}, repeats {a.repeats} (interleaved)")
  print("| model | batch | S | vmapped conv | vmapped ms/step | sequential ms/step | vmapped / sequential | "
        "XLA memory MB vmapped | sequential (S states + S x temps) | GFLOP/step vmapped | "
        "sequential | compile s vmapped | one copy |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for model in a.models.split(","):
    for S in (int(x) for x in a.counts.split(",")):
      for r in measure(model, S, a.steps, a.repeats, tuple(a.convs.split(","))):
        print(f"| {model} | {BATCH[model]} | {S} | {r['conv']} | {r['vmapped_ms']:.1f} | "
              f"{r['sequential_ms']:.1f} | {r['ratio']:.2f} | {r['vmapped_MB']:.1f} | "
              f"{r['sequential_MB']:.1f} | {r['vmapped_GFLOP']:.2f} | "
              f"{r['sequential_GFLOP']:.2f} | {r['vmapped_compile_s']:.1f} | "
              f"{r['sequential_compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
