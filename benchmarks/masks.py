"""Times the mask algebra on ResNet-50's prunable shapes (25.5M weights).

Run:  python benchmarks/masks.py [--repeats 5] [--sparsity 0.9]

The pytree holds the 53 convolution kernels of torchvision's ResNet-50
(downsample 1x1 convs included) plus the 2048x1000 classifier, in Flax layout
(kh, kw, in, out), with random normal values. Each operation is timed two
ways: the eager API (what a user calls; per-leaf kernels compiled once and
cached) and the whole operation under one `jax.jit`. Compile time (first call
minus the median of the later calls) is reported separately; the steady-state
figure is the median of `--repeats` runs, each ended by `block_until_ready`.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax import masks  # noqa: E402


def resnet50_shapes() -> dict:
  """Prunable kernel shapes of torchvision ResNet-50, keyed like its names."""
  shapes = {"conv1": (7, 7, 3, 64)}
  in_ch = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)),
                                          start=1):
    for b in range(blocks):
      name = f"layer{stage}/{b}"
      shapes[f"{name}/conv1"] = (1, 1, in_ch, width)
      shapes[f"{name}/conv2"] = (3, 3, width, width)
      shapes[f"{name}/conv3"] = (1, 1, width, 4 * width)
      if b == 0:
        shapes[f"{name}/downsample"] = (1, 1, in_ch, 4 * width)
      in_ch = 4 * width
  shapes["fc"] = (2048, 1000)
  return shapes


def make_tree(shapes: dict, seed: int = 0) -> dict:
  key = jax.random.key(seed)
  tree = {}
  for i, (name, shape) in enumerate(shapes.items()):
    tree[name] = {"kernel": jax.random.normal(jax.random.fold_in(key, i), shape)}
  return tree


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready()
                      if hasattr(a, "block_until_ready") else a, x)


def timed(fn, repeats: int):
  t0 = time.perf_counter()
  block(fn())
  first = time.perf_counter() - t0
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    runs.append(time.perf_counter() - t0)
  median = statistics.median(runs)
  return first, median, max(first - median, 0.0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args()

  shapes = resnet50_shapes()
  params = make_tree(shapes)
  scores = make_tree(shapes, seed=1)
  n_conv = sum(len(s) == 4 for s in shapes.values())
  n_total = sum(int(np.prod(s)) for s in shapes.values())
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)); {n_conv} conv leaves + fc, "
        f"{n_total:,} weights, sparsity {args.sparsity}, "
        f"median of {args.repeats} runs")

  s = args.sparsity
  # Eager calls run cold first, so their compile column is honest; later
  # operations read the results of earlier ones from `state`.
  state = {}

  def eager_allocate():
    state["sp"] = masks.allocate(params, s)
    return state["sp"]

  def eager_magnitude():
    state["mag"] = masks.magnitude(params, state["sp"])
    return state["mag"]

  def eager_topk():
    state["top"] = masks.topk(scores, state["sp"])
    return state["top"]

  jit_allocate = jax.jit(lambda p: masks.allocate(p, s))
  jit_magnitude = jax.jit(masks.magnitude)
  jit_topk = jax.jit(masks.topk)
  jit_overlap = jax.jit(masks.overlap)
  jit_all = jax.jit(lambda p, sc: masks.overlap(
      masks.magnitude(p, masks.allocate(p, s)),
      masks.topk(sc, masks.allocate(p, s))).total)

  cases = [
      ("allocate global_magnitude", "eager", eager_allocate),
      ("allocate global_magnitude", "jit", lambda: jit_allocate(params)),
      ("magnitude", "eager", eager_magnitude),
      ("magnitude", "jit", lambda: jit_magnitude(params, state["sp"])),
      ("topk", "eager", eager_topk),
      ("topk", "jit", lambda: jit_topk(scores, state["sp"])),
      ("overlap", "eager", lambda: masks.overlap(state["mag"], state["top"])),
      ("overlap", "jit", lambda: jit_overlap(state["mag"], state["top"])),
      ("allocate+magnitude+topk+overlap", "jit", lambda: jit_all(params, scores)),
  ]
  rows = [("operation", "mode", "median s", "first call s", "compile s")]
  for name, mode, fn in cases:
    first, median, compile_s = timed(fn, args.repeats)
    rows.append((name, mode, f"{median:.3f}", f"{first:.3f}", f"{compile_s:.3f}"))
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  print("| " + " | ".join(h.ljust(w) for h, w in zip(rows[0], widths)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows[1:]:
    print("| " + " | ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])]
                            + [v.rjust(w) for v, w in zip(r[2:], widths[2:])])
          + " |")
  m_mag, m_top = state["mag"], state["top"]
  ov = masks.overlap(m_mag, m_top)
  print(f"magnitude vs top-k(random scores) IoU: {ov.total:.4f}; chance "
        f"{masks.chance_overlap(m_mag, m_top).total:.4f}; pruned "
        f"{masks.summary(m_mag).total.pruned:,} = floor({s} * {n_total:,})")


if __name__ == "__main__":
  main()
