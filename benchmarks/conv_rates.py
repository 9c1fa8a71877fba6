"""Per-conv GFLOP/s of a model's training gradient on the CPU: where its step time goes.

  python benchmarks/conv_rates.py [--models jackpot_vgg19,cifar_resnet20] [--batch 128]
      [--impls xla,xla-swapped,im2col,torch] [--repeats 5] [--no-model] [--no-layers]
      [--only 128x2x2x512]

Lowerings: those of `conv.use_impl`, plus "xla-swapped": XLA's convolution for every
conv, also those XLA:CPU runs with swapped operands (`conv.swapped_on_cpu`), which "xla"
computes as "im2col" since 2026-12-03 (the lowering before that).

For each model the distinct convolutions of its forward pass are read off the jaxpr
(shapes, strides, padding; `count` = how many convs of the model share them). Each is
jitted alone, per lowering: the forward, the input gradient (dx, skipped for the
model's first conv, whose input needs none) and the weight gradient (dw), each timed
interleaved with the other lowerings in one process (medians of --repeats, after a
warm-up), with the nominal FLOPs 2 * N * Ho * Wo * kh * kw * C_in * C_out of each
(padding taps included, as a GEMM over im2col patches counts them). Then, unless
--no-model, the model's jitted training-mode gradient (forward, backward, BN
statistics: conv_lowering.py's `build`) beside the sum of its convs' times
(count x (fwd + dx + dw)): the rest of that step is BN, ReLU, pooling and the loss.
A float32 GEMM of 2048 x 4608 x 512 (a 3x3 512-channel conv on 4x4 maps at batch 128,
as im2col) is the reference rate. Wall and process CPU time are both reported (CPU
time / wall ~ the cores a lowering kept busy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax import models  # noqa: E402
from lottery_jax.models import conv  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conv_lowering import build as build_model_grad  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for u in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(u, "eqns"):
        yield u
      elif hasattr(u, "jaxpr") and hasattr(u.jaxpr, "eqns"):
        yield u.jaxpr


def model_convs(name: str, batch: int):
  """[(x shape, w shape, strides, padding, count)] of `name`'s forward, first-seen order."""
  model = models.get(name, num_classes=10)
  x = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  with lowering("xla-swapped"):   # every conv a convolution, none turned into im2col
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
  found: dict = {}

  def walk(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        key = (tuple(lhs), tuple(rhs), tuple(eqn.params["window_strides"]),
               tuple(map(tuple, eqn.params["padding"])))
        found[key] = found.get(key, 0) + 1
      for sub in _sub_jaxprs(eqn):
        walk(sub)

  walk(jaxpr.jaxpr)
  return [(*k, n) for k, n in found.items()]


@contextlib.contextmanager
def lowering(impl: str):
  """Trace inside this block to get lowering `impl` (see the module docstring)."""
  if impl == "xla-swapped":
    routed = conv.swapped_on_cpu
    conv.swapped_on_cpu = lambda *a, **k: False
    try:
      with conv.use_impl("xla"):
        yield
    finally:
      conv.swapped_on_cpu = routed
  else:
    with conv.use_impl(impl, min_rows=0) if impl == "torch" else conv.use_impl(impl):
      yield


def conv_fns(xs, ws, strides, padding, impl: str):
  """Compiled (fwd, dx, dw) of one conv under lowering `impl`, with their arguments."""
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, xs, jnp.float32)
  w = jax.random.normal(kw, ws, jnp.float32) * 0.05

  def f(x, w):
    return conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)

  # Trace everything inside the block: a trace of `f` made outside it (eval_shape
  # included) would be reused by jit with the lowering of its own time.
  with lowering(impl):
    y = jax.eval_shape(f, x, w)
    g = jax.random.normal(kg, y.shape, jnp.float32)
    fwd = jax.jit(f).lower(x, w).compile()
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x_: f(x_, w), x)[1](g)[0]).lower(x, w, g).compile()
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w_: f(x, w_), w)[1](g)[0]).lower(x, w, g).compile()
  flops = 2 * y.shape[0] * y.shape[1] * y.shape[2] * ws[0] * ws[1] * ws[2] * ws[3]
  return {"fwd": (lambda: fwd(x, w)), "dx": (lambda: dx(x, w, g)),
          "dw": (lambda: dw(x, w, g))}, flops


def timed(fn):
  t0, c0 = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0, time.process_time() - c0


def interleaved(cases: dict, repeats: int) -> dict:
  """{key: (median wall s, median cpu s)} of `cases` ({key: thunk}), warm-up first,
  then `repeats` rounds in a rotating order."""
  keys = list(cases)
  for k in keys:
    jax.block_until_ready(cases[k]())
  runs = {k: [] for k in keys}
  for r in range(repeats):
    for k in keys[r % len(keys):] + keys[:r % len(keys)]:
      runs[k].append(timed(cases[k]))
  return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
          for k, v in runs.items()}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="jackpot_vgg19,cifar_resnet20")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--impls", default="xla")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--no-model", action="store_true")
  ap.add_argument("--no-layers", action="store_true")
  ap.add_argument("--only", default="", help="time only the convs whose input shape "
                  "(as printed, e.g. 128x2x2x512) contains this")
  a = ap.parse_args(argv)
  impls = a.impls.split(",")
  print(f"jax {jax.__version__}, cores {os.cpu_count()}, batch {a.batch}, impls {impls}, "
        f"repeats {a.repeats} interleaved (medians)")

  ga, gb = (jax.random.normal(k, s, jnp.float32) for k, s in
            zip(jax.random.split(jax.random.key(1)), ((2048, 4608), (4608, 512))))
  gemm = jax.jit(jnp.dot).lower(ga, gb).compile()
  (gw, gc), = interleaved({"gemm": lambda: gemm(ga, gb)}, max(a.repeats, 5)).values()
  gemm_rate = 2 * 2048 * 4608 * 512 / gw / 1e9
  print(f"reference GEMM 2048x4608x512: {1e3 * gw:.1f} ms wall, {1e3 * gc:.1f} ms CPU, "
        f"{gemm_rate:.0f} GFLOP/s wall, {2 * 2048 * 4608 * 512 / gc / 1e9:.0f} per CPU-second")

  for name in a.models.split(","):
    # (index in the model, conv): index 0, the model's first conv, needs no dx
    convs = [] if a.no_layers else [
        (i, c) for i, c in enumerate(model_convs(name, a.batch))
        if a.only in "x".join(map(str, c[0]))]
    print(f"\n{name}, batch {a.batch}: {sum(c[-1] for _, c in convs)} convs, {len(convs)} "
          "distinct")
    print("| x | w | stride | count | impl | GFLOP (fwd) | fwd / dx / dw ms wall "
          "| fwd / dx / dw ms CPU | fwd / dx / dw GFLOP per CPU-second |")
    print("|---|---|---|---:|---|---:|---|---|---|")
    total = {impl: 0.0 for impl in impls}
    total_cpu = {impl: 0.0 for impl in impls}
    total_flops = 0.0
    for i, (xs, ws, strides, padding, count) in convs:
      cases, flops = {}, 0
      for impl in impls:
        fns, flops = conv_fns(xs, ws, strides, padding, impl)
        for part, fn in fns.items():
          if part == "dx" and i == 0:
            continue          # the model's input needs no gradient
          cases[(impl, part)] = fn
      res = interleaved(cases, a.repeats)
      parts = ("fwd", "dw") if i == 0 else ("fwd", "dx", "dw")
      total_flops += count * flops * len(parts)
      for impl in impls:
        ms = {p: 1e3 * res[(impl, p)][0] if (impl, p) in res else float("nan")
              for p in ("fwd", "dx", "dw")}
        cms = {p: 1e3 * res[(impl, p)][1] if (impl, p) in res else float("nan")
               for p in ("fwd", "dx", "dw")}
        total[impl] += count * sum(ms[p] for p in parts)
        total_cpu[impl] += count * sum(cms[p] for p in parts)
        fmt = lambda d: " / ".join("-" if v != v else f"{v:.1f}" for v in d.values())  # noqa: E731
        rates = " / ".join("-" if v != v else f"{flops / v / 1e6:.1f}" for v in cms.values())
        print(f"| {'x'.join(map(str, xs))} | {'x'.join(map(str, ws))} | "
              f"{'x'.join(map(str, strides))} | {count} | {impl} | {flops / 1e9:.2f} | "
              f"{fmt(ms)} | {fmt(cms)} | {rates} |", flush=True)
    for impl in impls if convs else ():
      print(f"{name} {impl}: convs fwd + bwd {total_flops / 1e9:.1f} GFLOP, sum of conv "
            f"times {total[impl]:.0f} ms wall, {total_cpu[impl]:.0f} ms CPU "
            f"({total_flops / total[impl] / 1e6:.0f} GFLOP/s wall, "
            f"{total_flops / total_cpu[impl] / 1e6:.0f} per CPU-second; at the GEMM's rate "
            f"{total_flops / gemm_rate / 1e6:.0f} ms wall)")
    if a.no_model:
      continue
    model_cases = {}
    for impl in (i for i in impls if i in ("xla", "xla-swapped", "torch")):
      with lowering(impl):   # build's own use_impl("xla"/"torch") is a no-op inside
        model_cases[impl] = build_model_grad(name, "torch" if impl == "torch" else "xla",
                                             a.batch, (32, 32, 3), 10)
    res = interleaved(model_cases, a.repeats)
    for impl, (w, c) in res.items():
      print(f"{name} {impl}: whole training gradient {1e3 * w:.0f} ms wall, {1e3 * c:.0f} ms "
            f"CPU (CPU / wall {c / w:.2f})" + (f"; sum of its convs alone {total[impl]:.0f} ms"
                                               if convs else ""), flush=True)


if __name__ == "__main__":
  main()
