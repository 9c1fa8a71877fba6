"""S siblings in one vmapped program against S sequential runs (issue 14.5).

Run:  python benchmarks/siblings.py [--models digits_cnn,cifar_resnet20] [--counts 1,2,4,8]
                                    [--steps 20] [--repeats 3]

For each model and S, two ways to train S copies that differ only in data order, both
built by the engine (`loop.build`, dense program, one mesh over the visible devices,
synthetic data of the model's input shape):

* vmapped: one state with a leading sibling axis, `siblings.count=S`, one jitted
  step per training step (what `experiment="siblings"` with `siblings.vmap=True` runs),
  with `model.conv` "xla" (vmap turns each conv into one grouped conv) or "unrolled"
  (one ordinary conv per sibling inside the same program);
* sequential: the single-copy step of `siblings.count=0`, run S times per training
  step on S states (what `siblings.vmap=False` amounts to, minus the per-stage
  start-up, which it pays S times in addition: reported as `compile s`).

Each timing is `--steps` training steps of all S copies, ended by
`block_until_ready`; the two ways alternate `--repeats` times and the medians are
reported. Memory: XLA's own estimate for the compiled step (arguments + outputs +
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
from lottery_jax.engine.config import base_config  # noqa: E402

BATCH = {"digits_cnn": 64, "cifar_resnet20": 128}


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


def measure(model: str, S: int, steps: int, repeats: int, conv: str = "xla") -> dict:
  with jax.transfer_guard("allow"):
    t0 = time.time()
    vm = loop.build(config(model, S, conv))
    vm_iter = vm.train_iter()
    vm_batch = next(vm_iter)
    vm_state, _ = vm.train_step(vm.state, vm_batch)   # compile
    jax.block_until_ready(vm_state)
    vm_compile = time.time() - t0
    t0 = time.time()
    one = loop.build(config(model, 0))
    batch = next(one.train_iter())
    states = [jax.tree.map(lambda x: x.copy(), one.state) for _ in range(S)]
    states[0], _ = one.train_step(states[0], batch)
    jax.block_until_ready(states[0])
    seq_compile = time.time() - t0
    vm_mem, vm_flops = _mem_flops(vm, vm_state, vm_batch)
    one_mem, one_flops = _mem_flops(one, states[0], batch)

  times = {"vmapped": [], "sequential": []}
  for r in range(repeats):
    for way in (("vmapped", "sequential") if r % 2 == 0 else ("sequential", "vmapped")):
      t0 = time.perf_counter()
      if way == "vmapped":
        for _ in range(steps):
          vm_state, _ = vm.train_step(vm_state, vm_batch)
        jax.block_until_ready(vm_state)
      else:
        for _ in range(steps):
          for i in range(S):
            states[i], _ = one.train_step(states[i], batch)
        jax.block_until_ready(states)
      times[way].append((time.perf_counter() - t0) / steps)
  vm_iter.close()
  v, s = statistics.median(times["vmapped"]), statistics.median(times["sequential"])
  return {"model": model, "S": S, "vmapped_ms": 1e3 * v, "sequential_ms": 1e3 * s,
          "ratio": v / s, "vmapped_MB": vm_mem, "sequential_MB": S * one_mem,
          "one_copy_MB": one_mem, "vmapped_GFLOP": vm_flops / 1e9,
          "sequential_GFLOP": S * one_flops / 1e9, "vmapped_compile_s": vm_compile,
          "sequential_compile_s": seq_compile}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default="digits_cnn,cifar_resnet20")
  ap.add_argument("--counts", default="1,2,4,8")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--convs", default="xla,unrolled",
                  help="config.model.conv of the vmapped program: 'xla' (vmap's grouped "
                       "convolutions) and/or 'unrolled' (one convolution per sibling)")
  a = ap.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPUs visible; steps {a.steps}, repeats {a.repeats} (interleaved)")
  print("| model | batch | S | vmapped conv | vmapped ms/step | sequential ms/step | vmapped / sequential | "
        "XLA memory MB vmapped | sequential (S states + S x temps) | GFLOP/step vmapped | "
        "sequential | compile s vmapped | one copy |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for model in a.models.split(","):
    for S in (int(x) for x in a.counts.split(",")):
      for conv in a.convs.split(","):
        r = measure(model, S, a.steps, a.repeats, conv)
        print(f"| {model} | {BATCH[model]} | {S} | {conv} | {r['vmapped_ms']:.1f} | "
              f"{r['sequential_ms']:.1f} | {r['ratio']:.2f} | {r['vmapped_MB']:.1f} | "
              f"{r['sequential_MB']:.1f} | {r['vmapped_GFLOP']:.2f} | "
              f"{r['sequential_GFLOP']:.2f} | {r['vmapped_compile_s']:.1f} | "
              f"{r['sequential_compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
