"""Memory and FLOPs of a ResNet-50 jackpot search step vs a dense training step.

Run:  python benchmarks/memory_flops.py [--batch 32] [--flops-batch 256] [--no-rss]

(a) Memory at `--batch` (default 32): XLA's compiled memory analysis of each step
    (argument, output, alias, temp sizes; peak estimate = argument + output - alias
    + temp, the live set of a donated step), the state's bytes per prunable weight by
    role, and, unless `--no-rss`, the RSS the step adds when it runs (measured in a
    child process per step: compile first, reset the kernel's high-water mark with
    /proc/self/clear_refs, run 2 steps, read VmHWM - VmRSS-before).
(b) FLOPs from `compiled.cost_analysis()` of both steps compiled for a global batch
    of `--flops-batch` (default 256; compiled only, not run), and the FLOPs of the
    swap rule alone; then a *projection* of a 30-epoch ImageNet search on a TPU v4-32
    and on 8 H100s at a stated model-FLOPs utilisation (see PROJECTION below).

Both steps are built as the engine builds them (benchmarks/search_step.py: `Case`), with
XLA's own convolutions (`config.model.conv = "xla"`, the library's default, set
explicitly here): the analyses describe what XLA allocates and computes, as it does on
an accelerator; the opt-in PyTorch convolutions (`--config.model.conv=torch`) are custom
calls whose FLOPs and buffers XLA does not see.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from search_step import Case  # noqa: E402

# Hardware assumptions of the projection (peak dense bf16 matmul throughput per chip).
PROJECTION = {
    "images_per_epoch": 1_281_167,
    "epochs": 30,
    "mfu": 0.40,
    "targets": {
        # A v4-32 slice: 32 TensorCores = 16 chips (2 TensorCores each), 275 TFLOP/s bf16 per chip.
        "TPU v4-32 (16 chips x 275 TFLOP/s)": 16 * 275e12,
        # H100 SXM: 989 TFLOP/s dense bf16 (1979 is the 2:4-sparse figure).
        "8x H100 SXM (8 x 989 TFLOP/s)": 8 * 989e12,
    },
    # HBM bandwidth per chip, for the swap rule's floor: it runs on the replicated scores,
    # so every chip reads the whole score tree each step (it does not shrink with chips).
    "hbm_bytes_per_s": {
        "TPU v4-32 (16 chips x 275 TFLOP/s)": 1.2e12,
        "8x H100 SXM (8 x 989 TFLOP/s)": 3.35e12,
    },
}

MODEL = ("resnet50", 1000, 1e-4)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost.get("flops", float("nan"))),
          "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def compile_steps(case: Case, batch: int | None = None) -> dict:
  """Compiled dense and search steps (at the case's batch, or an abstract `batch`)."""
  out = {}
  for v in ("dense", "search"):
    b = case.batch if batch is None else {
        k: jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype) for k, x in case.batch.items()}
    out[v] = case.steps[v].lower(_abstract(case.states[v]), b).compile()
  return out


def swap_flops(case: Case) -> dict:
  scores, before, _, _ = case.parts_inputs()
  return _cost(case.swap_alone.lower(scores, before).compile())


def bytes_per_weight(case: Case) -> dict:
  """State bytes by role, per searched (prunable) weight, and totals in MB."""
  def nbytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  n = case.searched_total
  rows = {}
  for v in ("dense", "search"):
    st = case.states[v]
    roles = {"params": st.params, "batch_stats": st.batch_stats, "scores": st.scores,
             "masks": st.masks, "opt_state": st.opt_state}
    rows[v] = {k: {"MB": nbytes(t) / 1e6, "bytes_per_searched_weight": nbytes(t) / n}
               for k, t in roles.items()}
    rows[v]["total_MB"] = sum(r["MB"] for r in rows[v].values())
  return rows


_RSS_CHILD = r"""
import json, os, sys
sys.path.insert(0, {bench!r})
import jax
from search_step import Case
def status(key):
  for line in open('/proc/self/status'):
    if line.startswith(key):
      return int(line.split()[1]) * 1024
case = Case({model!r}, {batch}, {classes}, {wd}, conv="xla")
v = {variant!r}
for other in list(case.states):
  if other != v:
    del case.states[other], case.runs[other], case.steps[other]
case.run(v)                                     # compile + first step
rss0 = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')   # reset VmHWM to the current RSS
case.run(v); case.run(v)
print(json.dumps({{"rss_before": rss0, "hwm": status('VmHWM:')}}))
"""


def measured_rss(batch: int) -> dict:
  out = {}
  bench = os.path.dirname(os.path.abspath(__file__))
  model, classes, wd = MODEL
  for v in ("dense", "search"):
    code = _RSS_CHILD.format(bench=bench, model=model, batch=batch, classes=classes,
                             wd=wd, variant=v)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["step_increment"] = r["hwm"] - r["rss_before"]
    out[v] = r
  return out


def projection(flops_per_step: float, global_batch: int,
               swap_bytes_per_step: float = 0.0) -> dict:
  """Hours at the stated MFU, plus a floor for the swap rule: its bytes accessed (XLA's
  CPU cost analysis) read once per step at full HBM bandwidth on every chip."""
  p = PROJECTION
  steps = p["epochs"] * p["images_per_epoch"] / global_batch
  total = steps * flops_per_step
  return {"steps": steps, "total_flops": total,
          "hours": {name: total / (peak * p["mfu"]) / 3600
                    for name, peak in p["targets"].items()},
          "swap_floor_hours": {name: steps * swap_bytes_per_step / bw / 3600
                               for name, bw in p["hbm_bytes_per_s"].items()}}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--flops-batch", type=int, default=256)
  ap.add_argument("--no-rss", action="store_true")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  model, classes, wd = MODEL
  case = Case(model, args.batch, classes, wd, conv="xla")   # XLA's convolutions: see above
  report = {"searched_weights": case.searched_total}
  mb = 1e6
  print(f"{model}: {case.searched_total / 1e6:.2f}M searched weights\n")

  print(f"(a) memory, batch {args.batch} (XLA compiled memory analysis, MB)")
  comp = compile_steps(case)
  mem = {v: _memory(c) for v, c in comp.items()}
  report["memory"] = mem
  print(f"  {'':8s} {'argument':>9s} {'output':>9s} {'alias':>9s} {'temp':>9s} {'peak est':>9s}")
  for v, m in mem.items():
    print(f"  {v:8s} " + " ".join(f"{m[k] / mb:9.1f}" for k in
                                  ("argument", "output", "alias", "temp", "peak_estimate")))
  print(f"  search / dense peak estimate = "
        f"{mem['search']['peak_estimate'] / mem['dense']['peak_estimate']:.3f}")
  bpw = bytes_per_weight(case)
  report["state_bytes"] = bpw
  for v, rows in bpw.items():
    print(f"  {v} state: " + ", ".join(
        f"{k} {r['MB']:.1f} MB ({r['bytes_per_searched_weight']:.2f} B/w)"
        for k, r in rows.items() if k != "total_MB") + f"; total {rows['total_MB']:.1f} MB")
  if not args.no_rss:
    rss = measured_rss(args.batch)
    report["rss"] = rss
    for v, r in rss.items():
      print(f"  measured RSS {v}: before step {r['rss_before'] / mb:.0f} MB, high-water "
            f"{r['hwm'] / mb:.0f} MB, step adds {r['step_increment'] / mb:.0f} MB")
    print(f"  search / dense RSS high-water = {rss['search']['hwm'] / rss['dense']['hwm']:.3f}")

  print(f"\n(b) FLOPs, global batch {args.flops_batch} (XLA cost analysis, compiled only)")
  comp = compile_steps(case, args.flops_batch)
  flops = {v: _cost(c) for v, c in comp.items()}
  flops["update_masks_alone"] = swap_flops(case)
  report["flops"] = flops
  for v, c in flops.items():
    per_ex = "" if v == "update_masks_alone" else \
        f" = {c['flops'] / args.flops_batch / 1e9:.2f} GFLOP per example"
    print(f"  {v:18s} {c['flops'] / 1e12:8.3f} TFLOP/step{per_ex}; bytes accessed "
          f"{c['bytes_accessed'] / 1e9:.2f} GB")
  print(f"  search / dense FLOPs = {flops['search']['flops'] / flops['dense']['flops']:.4f}")
  proj = projection(flops["search"]["flops"], args.flops_batch,
                    flops["update_masks_alone"]["bytes_accessed"])
  report["projection"] = proj
  print(f"\n  PROJECTION (not a measurement): 30 epochs x {PROJECTION['images_per_epoch']} "
        f"images = {proj['steps']:.0f} steps of {args.flops_batch}, "
        f"{proj['total_flops'] / 1e18:.2f} EFLOP at {PROJECTION['mfu']:.0%} MFU")
  for name, h in proj["hours"].items():
    swap = proj["swap_floor_hours"][name]
    print(f"    {name}: {h:.2f} h of step compute + >= {swap:.2f} h for the swap rule "
          f"(bandwidth floor) = {h + swap:.2f} h")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
  main()
