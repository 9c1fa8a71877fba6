"""Search-step overhead: jackpot search step vs dense training step, same model and batch.

Run:  python benchmarks/search_step.py [--case r32|r50|all] [--repeats 5] [--warmup 3]

Both steps come from `lottery_jax.engine.loop.build` itself (the engine's search
layout, magnitude masks and 1.0/0.99 scores, optimiser, sharded `make_train_step`
with donation, one mesh over the visible devices) on configs that differ only
in what they train; weights are random (timings do not depend on them) and the
batch is synthetic data of the right shape from a benchmark-only data source.
Before timing, every step runs `--warmup` times (compile, then steps that make
the swap rule actually swap). Then the variants run interleaved, in rotating
order, `--repeats` times each, every call ended by `block_until_ready`; figures are
medians. Variants:

* dense:        mask program "dense" (weights train; what a pretrain config runs)
* search:       mask program "jackpot" (scores train, swap rule) at 90% sparsity
* search_fixed: the search step with update rule "fixed" (STE + score optimiser only)

and, on the same model's search state, two parts timed alone:

* update_masks: the swap rule over the searched leaves (jitted, as in the step)
* ste:          forward W * straight_through(S, M) and its VJP to S (jitted)

search - search_fixed is the swap rule's share inside the step; search_fixed -
dense is what the STE and the score optimiser add (or save: the search step has
no weight update). With `--hlo` it also prints XLA's cost analysis of the
compiled steps (flops, bytes accessed) and the largest extra ops.

`--conv` picks the convolution lowering the runs are built with, through
`config.model.conv` as any run: "xla" (default, the library's default) or "torch"
(PyTorch's convolutions, an opt-in for one-device CPU processes; custom calls that
`--hlo`'s cost analysis does not count). Before the lowering became a config field this
script ran with whatever the environment picked (PyTorch's convolutions on a one-device
CPU with PyTorch installed); pass `--conv torch` to reproduce those figures.
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax.data import registry  # noqa: E402
from lottery_jax.data.sources import ArrayRecords  # noqa: E402
from lottery_jax.engine import loop  # noqa: E402
from lottery_jax.engine.config import base_config  # noqa: E402
from lottery_jax.engine.state import effective_params  # noqa: E402
from lottery_jax import models  # noqa: E402
from lottery_jax.search import update_masks  # noqa: E402

CASES = {
    # name: (model, batch, num_classes, score weight decay)
    "r32": ("jackpot_resnet32", 128, 10, 5e-4),
    "r50": ("resnet50", 32, 1000, 1e-4),
    "smoke": ("cifar_resnet20", 8, 10, 5e-4),  # a quick check of the script itself
}

_SYNTHETIC = {"shape": (32, 32, 3), "classes": 10, "examples": 32}


@registry.register("_bench_synthetic", defaults=dict(
    train_split="train", eval_split="test", preprocess="none", mean=(0.0,), std=(1.0,),
    shuffle=False))
def _load_synthetic(cfg, split):
  """Random N(0, 1) images of `_SYNTHETIC["shape"]` with random labels."""
  del cfg
  rng = np.random.default_rng({"train": 0, "test": 1}[split])
  n, classes = _SYNTHETIC["examples"], _SYNTHETIC["classes"]
  x = rng.standard_normal((n, *_SYNTHETIC["shape"]), dtype=np.float32)
  return registry.Split(ArrayRecords(x, rng.integers(0, classes, n)), num_classes=classes,
                        native_shape=_SYNTHETIC["shape"])


class Case:
  """Dense and search runs for one model and batch, built by `loop.build`."""

  def __init__(self, model_name: str, batch_size: int, num_classes: int,
               weight_decay: float, sparsity: float = 0.9, seed: int = 0,
               total_steps: int = 10_000, conv: str = "xla"):
    spec = models.spec(model_name)
    _SYNTHETIC.update(shape=tuple(spec.input_shape), classes=num_classes,
                      examples=2 * batch_size)
    mesh = loop.make_mesh()

    def config(program, sparsity, update_rule):
      c = base_config()
      c.seed = seed
      c.model.name = model_name
      c.model.conv = conv   # the convolution lowering, as `--config.model.conv`
      c.data.name = "_bench_synthetic"
      c.data.batch_size = batch_size
      c.mask.program, c.sparsity, c.mask.update_rule = program, sparsity, update_rule
      c.optimizer.weight_decay = weight_decay
      c.num_steps = total_steps
      c.search_random_weights = True  # random weights: timings do not depend on them
      return c

    self.name, self.batch_size = model_name, batch_size
    with jax.transfer_guard("allow"):
      self.runs = {
          "dense": loop.build(config("dense", 0.0, ""), mesh),   # a pretrain config
          "search": loop.build(config("jackpot", sparsity, "swap"), mesh),
          "search_fixed": loop.build(config("jackpot", sparsity, "fixed"), mesh),
      }
      self.batch = next(self.runs["dense"].data.train_iter())
    search = self.runs["search"]
    self.layout = layout = search.layout
    self.params = params = search.starting_variables["params"]
    self.prune_total = sum(jax.tree.leaves(layout.prune_counts))
    self.searched_total = sum(int(np.size(w)) for w, s in zip(
        jax.tree.leaves(params), jax.tree.leaves(layout.masked)) if s)
    self.steps = {k: r.train_step for k, r in self.runs.items()}
    self.states = {k: r.state for k, r in self.runs.items()}  # each step donates its own
    self.swaps_seen: list[int] = []

    # Parts of the search step, alone.
    treedef = jax.tree.structure(layout.prune_counts)
    flags = treedef.flatten_up_to(layout.masked)
    counts = treedef.flatten_up_to(layout.prune_counts)
    idx = [i for i, f in enumerate(flags) if f]

    @jax.jit
    def swap_alone(scores, masks):
      s, m = treedef.flatten_up_to(scores), treedef.flatten_up_to(masks)
      return update_masks([s[i] for i in idx], [m[i] for i in idx],
                          [counts[i] for i in idx], 1.0)

    @jax.jit
    def ste_alone(scores, masks, cotangent):
      def f(s):
        return effective_params(params, s, masks, layout.masked, straight_through=True)
      eff, vjp = jax.vjp(f, scores)
      return eff, vjp(cotangent)[0]

    self.swap_alone, self.ste_alone = swap_alone, ste_alone

  def run(self, variant: str):
    state, metrics = self.steps[variant](self.states[variant], self.batch)
    jax.block_until_ready((state, metrics))
    self.states[variant] = state
    if variant == "search":
      self.swaps_seen.append(int(sum(jax.tree.leaves(jax.device_get(metrics["swaps"])))))
    return metrics

  def parts_inputs(self):
    """Copies of the search state's scores and masks (the step donates its own).

    Returns (scores, masks_before, masks_after, cotangent): `masks_before` is the mask the
    swap rule saw inside the last search step, with these scores (a realistic input);
    `masks_after` its output, already consistent with the scores (a converged input).
    """
    st = self.states["search"]
    masks_before = jax.tree.map(jnp.copy, st.masks)
    self.run("search")
    st = self.states["search"]
    scores = jax.tree.map(jnp.copy, st.scores)
    masks_after = jax.tree.map(jnp.copy, st.masks)
    cot = jax.tree.map(lambda w: jnp.ones_like(w), self.params)
    return scores, masks_before, masks_after, cot


def timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds over all threads) of one call."""
  t0, c0 = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


def measure(case: Case, repeats: int, warmup: int, parts: bool = True,
            variants=None) -> dict:
  variants = list(variants or case.steps)
  compile_s = {}
  for v in variants:
    print(f"  compiling and warming up {v} ...", flush=True)
    compile_s[v] = timed(lambda: case.run(v))[0]
    for _ in range(warmup - 1):
      case.run(v)
  times = {v: [] for v in variants}
  part_fns = {}
  if parts:
    scores, before, after, cot = case.parts_inputs()
    part_fns = {
        "ste": lambda: case.ste_alone(scores, after, cot),
        "swap_realistic": lambda: case.swap_alone(scores, before),
        "swap_converged": lambda: case.swap_alone(scores, after),
    }
    for k, f in part_fns.items():
      jax.block_until_ready(f())
      times[k] = []
    realistic = case.swap_alone(scores, before)[1]
    layers = [int(x) for x in realistic]
    part_swaps = {"realistic_total": sum(layers),
                  "realistic_layers_swapping": sum(x > 0 for x in layers),
                  "layers": len(layers)}
  case.swaps_seen.clear()
  for r in range(repeats):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      times[v].append(timed(lambda: case.run(v)))
    for k, f in part_fns.items():
      times[k].append(timed(lambda: jax.block_until_ready(f())))
  out = {"median_s": {k: statistics.median(w for w, _ in v) for k, v in times.items()},
         "median_cpu_s": {k: statistics.median(c for _, c in v) for k, v in times.items()},
         "all_s": times, "compile_plus_first_s": compile_s,
         "swaps_per_step": list(case.swaps_seen)}
  if parts:
    out["part_swaps"] = part_swaps
  return out


def hlo_report(case: Case, top: int = 12):
  """Cost analysis of the compiled steps and the ops only the search step has."""
  import collections
  import re
  out = {}
  for v in ("dense", "search_fixed", "search"):
    lowered = case.steps[v].lower(case.states[v], case.batch)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", text))
    out[v] = {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed"),
              "ops": ops}
  for v in ("dense", "search_fixed", "search"):
    print(f"  {v:13s} flops {out[v]['flops']:.4g}  bytes accessed "
          f"{out[v]['bytes_accessed']:.4g}")
  for a, b in (("dense", "search_fixed"), ("search_fixed", "search")):
    diff = out[b]["ops"] - out[a]["ops"]
    print(f"  ops in {b} beyond {a}: " +
          ", ".join(f"{k} x{n}" for k, n in diff.most_common(top)))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--case", default="all", choices=["all", *CASES])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--hlo", action="store_true")
  p.add_argument("--conv", default="xla", choices=["xla", "torch"],
                 help="convolution lowering (config.model.conv); torch needs one device")
  p.add_argument("--no-parts", action="store_true")
  p.add_argument("--variants", default="dense,search,search_fixed",
                 help="comma-separated subset of dense,search,search_fixed")
  args = p.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs visible, conv lowering {args.conv!r} (config.model.conv)")
  if args.hlo and args.conv == "torch":
    print("  note: --hlo's cost analysis does not see PyTorch's convolutions (custom calls); "
          "use --conv xla for XLA's full count")
  for name in (CASES if args.case == "all" else [args.case]):
    model, batch, classes, wd = CASES[name]
    case = Case(model, batch, classes, wd, conv=args.conv)
    print(f"\n{model}, batch {batch}: {case.searched_total / 1e6:.2f}M searched weights, "
          f"{case.prune_total / 1e6:.2f}M pruned")
    if args.hlo:
      hlo_report(case)
    res = measure(case, args.repeats, args.warmup, parts=not args.no_parts,
                  variants=args.variants.split(","))
    med, cpu = res["median_s"], res["median_cpu_s"]
    print("  (wall ms median, CPU ms median over all threads; runs wall/cpu)")
    for k, v in med.items():
      runs = " ".join(f"{w * 1e3:.0f}/{c * 1e3:.0f}" for w, c in res["all_s"][k])
      print(f"  {k:22s} wall {v * 1e3:8.1f}  cpu {cpu[k] * 1e3:8.1f}   [{runs}]")
    print(f"  compile + first call (s): " +
          ", ".join(f"{k} {v:.1f}" for k, v in res["compile_plus_first_s"].items()))
    print(f"  swaps per timed search step: {res['swaps_per_step']}")
    if "part_swaps" in res:
      print(f"  swap parts, realistic input: {res['part_swaps']}")
    for base in [v for v in med if v.startswith("search")]:
      print(f"  {base} / dense: wall {med[base] / med['dense']:.3f}, "
            f"cpu {cpu[base] / cpu['dense']:.3f}")


if __name__ == "__main__":
  main()
