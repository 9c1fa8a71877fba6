"""Mask-update speed: the swap rule over a ResNet-50-shaped pytree at 90% sparsity.

Times, in one process, interleaved, on the same data, `update_masks` (blocked candidate
lists, the default), the
same update with one full sort per layer (`impl="sort"`, the reference's algorithm in JAX),
and, if torch is importable, a faithful port of the reference PyTorch `ls_pop_up` (sort,
`nonzero`, `.tolist()` per layer). Issue 6 target 2: at most 0.15 s per step on the 2-core CPU.

  python benchmarks/mask_update.py             # all cases, 7 timed runs each
  python benchmarks/mask_update.py --runs 9 --cases realistic,converged

Cases (90% of every layer pruned, masks from |w| of random weights):
  realistic: scores = 1.0 kept / 0.99 pruned (the magnitude init) + N(0, sigma) noise,
             with sigma such that layers have a few hundred to a few thousand inversions.
  converged: the magnitude init itself: no inversion, zero swaps.
  rate0.5cap: realistic scores, rate 0.5 and max_swaps 256 (short restriction on).
  worst:     scores uncorrelated with the mask (random): every layer has far more than
             `capacity` inversions and takes the full-sort fallback.

Compile time is that of the whole jitted update (all 54 leaves) on this machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lottery_jax.search.swap import DEFAULT_CAPACITY, update_masks


def resnet50_kernel_shapes(include_fc: bool = True) -> dict[str, tuple[int, ...]]:
  """torchvision ResNet-50 conv kernels (O, I, kh, kw), downsample convs included, + fc."""
  shapes = {"conv1": (64, 3, 7, 7)}
  inplanes = 64
  for stage, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
    for block in range(blocks):
      prefix = f"layer{stage}.{block}"
      shapes[f"{prefix}.conv1"] = (planes, inplanes, 1, 1)
      shapes[f"{prefix}.conv2"] = (planes, planes, 3, 3)
      shapes[f"{prefix}.conv3"] = (planes * 4, planes, 1, 1)
      if block == 0:
        shapes[f"{prefix}.downsample.0"] = (planes * 4, inplanes, 1, 1)
      inplanes = planes * 4
  if include_fc:
    shapes["fc"] = (1000, 2048)
  return shapes


def make_case(case: str, sparsity: float, seed: int = 0, include_fc: bool = True):
  rng = np.random.default_rng(seed)
  scores, masks, counts = {}, {}, {}
  for name, shape in resnet50_kernel_shapes(include_fc).items():
    size = math.prod(shape)
    k = int(math.floor(sparsity * size))
    weights = rng.standard_normal(size).astype(np.float32)
    mask = np.ones(size, bool)
    mask[np.argpartition(np.abs(weights), k - 1)[:k]] = False  # magnitude mask
    init = np.where(mask, 1.0, 0.99).astype(np.float32)
    if case == "converged":
      score = init
    elif case in ("realistic", "rate0.5cap"):
      score = init + rng.normal(scale=1.5e-3, size=size).astype(np.float32)
    elif case == "worst":
      score = rng.random(size, dtype=np.float32)
    else:
      raise ValueError(f"unknown case {case!r}")
    scores[name], masks[name], counts[name] = score.reshape(shape), mask.reshape(shape), k
  return scores, masks, counts


def _time(fn, runs):
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def torch_reference_update(scores, masks, prune_rate, rate):
  """Port of lottery-jackpots utils/conv_type.py PretrainConv.ls_pop_up, per layer."""
  import torch

  total = 0
  for name in scores:
    m = scores[name].flatten()
    flat_bm = masks[name].flatten()
    prune_num = int(prune_rate[name] * m.numel())
    sorted_, _ = m.sort()
    idx0 = torch.squeeze(torch.nonzero(flat_bm == 0))
    idx1 = torch.squeeze(torch.nonzero(flat_bm))
    pop_idx0 = torch.squeeze(torch.nonzero(m[idx0] > sorted_[prune_num - 1]))
    pop_idx1 = torch.squeeze(torch.nonzero(m[idx1] <= sorted_[prune_num - 1]))
    if pop_idx0.numel() != 0 and pop_idx1.numel() != 0 and pop_idx0.numel() == pop_idx1.numel():
      pop_num = pop_idx0.numel()
      _, sorted_pop_idx0 = torch.sort(m[idx0][pop_idx0], descending=True)
      _, sorted_pop_idx1 = torch.sort(m[idx1][pop_idx1], descending=False)
      pop_idx0 = [pop_idx0.tolist()]
      pop_idx1 = [pop_idx1.tolist()]
      sorted_pop_idx0 = [sorted_pop_idx0.tolist()]
      sorted_pop_idx1 = [sorted_pop_idx1.tolist()]
      if pop_num > 1:
        pop_num = math.ceil(len(sorted_pop_idx0[0]) * rate)
        flat_bm[idx0[pop_idx0][sorted_pop_idx0[0][:pop_num]]] = 1
        flat_bm[idx1[pop_idx1][sorted_pop_idx1[0][:pop_num]]] = 0
      else:
        flat_bm[idx0[pop_idx0]] = 1
        flat_bm[idx1[pop_idx1]] = 0
      total += pop_num
  return total


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="realistic,converged,rate0.5cap,worst")
  parser.add_argument("--runs", type=int, default=7)
  parser.add_argument("--sort-runs", type=int, default=3, help="timed runs of the full-sort variant")
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--no-fc", action="store_true", help="conv kernels only (23.5M weights)")
  parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()

  try:
    if args.no_torch:
      raise ImportError
    import torch

    torch.set_num_threads(2)
  except ImportError:
    torch = None

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}")
  rows = []
  for case in args.cases.split(","):
    scores, masks, counts = make_case(case, args.sparsity, include_fc=not args.no_fc)
    n_weights = sum(s.size for s in scores.values())
    rate, max_swaps = (0.5, 256) if case == "rate0.5cap" else (1.0, None)
    scores_d, masks_d = jax.device_put((scores, masks))
    timed = {}  # label -> (step callable, compile s, swaps, max swaps per layer, runs)
    results = {}
    for impl in ("topk", "sort"):
      fn = jax.jit(lambda s, m, r, impl=impl: update_masks(s, m, counts, r, max_swaps, capacity=args.capacity, impl=impl))
      start = time.perf_counter()
      compiled = fn.lower(scores_d, masks_d, rate).compile()
      compile_s = time.perf_counter() - start
      new_masks, n_swaps = jax.block_until_ready(compiled(scores_d, masks_d, rate))
      results[impl] = new_masks
      per_layer = [int(v) for v in jax.tree.leaves(n_swaps)]
      runs = args.runs if impl == "topk" else args.sort_runs
      step = lambda compiled=compiled: jax.block_until_ready(compiled(scores_d, masks_d, rate))
      timed[f"jax {impl}"] = (step, compile_s, sum(per_layer), max(per_layer), runs)
    same = all(
      np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree.leaves(results["topk"]), jax.tree.leaves(results["sort"]))
    )
    assert same, f"{case}: topk and sort masks differ"
    if torch is not None and max_swaps is None:
      t_scores = {k: torch.from_numpy(np.asarray(v)) for k, v in scores.items()}
      prune_rate = {k: counts[k] / scores[k].size for k in scores}

      def torch_step():
        t_masks = {k: torch.from_numpy(v.astype(np.float32)) for k, v in masks.items()}
        return torch_reference_update(t_scores, t_masks, prune_rate, rate)

      timed["torch reference"] = (torch_step, 0.0, torch_step(), -1, args.sort_runs)
    # Interleaved: round r runs every implementation that still has runs left, so that load
    # changes on the shared machine hit all of them alike.
    times = {label: [] for label in timed}
    for r in range(max(t[4] for t in timed.values())):
      for label, (step, _, _, _, runs) in timed.items():
        if r < runs:
          start = time.perf_counter()
          step()
          times[label].append(time.perf_counter() - start)
    for label, (_, compile_s, swaps, max_layer, runs) in timed.items():
      rows.append((case, label, statistics.median(times[label]), compile_s, swaps, max_layer, runs))
    print(f"case {case}: {len(scores)} leaves, {n_weights / 1e6:.1f}M weights", flush=True)

  print()
  print(f"| case | implementation | median s/step | runs | compile s | swaps (total) | max swaps/layer | vs jax topk |")
  print("|---|---|---|---|---|---|---|---|")
  fast = {r[0]: r[2] for r in rows if r[1] == "jax topk"}
  for case, impl, step_s, compile_s, swaps, max_layer, runs in rows:
    ratio = step_s / fast[case]
    print(f"| {case} | {impl} | {step_s:.4f} | {runs} | {compile_s:.1f} | {swaps} | "
          f"{max_layer if max_layer >= 0 else '-'} | {ratio:.1f}x |")


if __name__ == "__main__":
  main()
