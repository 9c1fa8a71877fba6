"""The top-k mask update's share of a strong-ticket search step (issue 15.6).

Run:  python benchmarks/slt_topk.py [--model cifar_resnet18] [--batch 128] [--repeats 5]
      [--sizes 14,16,18,20,22] [--siblings S] [--leaves-only] [--skip-radix]

Both steps come from `lottery_jax.engine.loop.build` on the "strong_ticket" program
(random weights, p = r = 0.25, 50% sparsity, uniform) and differ only in the update
rule: "topk" (the edge-popup search) and "fixed" (the same step without the mask
update). Their difference is the top-k update's cost inside the step; the rule is
also timed alone on the same scores (jitted, as in the step). Then, for the growth
with the number of weights, the rule alone on one leaf of 2^k entries for each k in
`--sizes`. Batches are synthetic (timings do not depend on the data). Variants run
interleaved, every call ended by `block_until_ready`; figures are medians.

Goal (issue 15.6): the update at most 5% of the step for a ResNet-18 on CIFAR-10 at
batch 128. The default model is the zoo's CIFAR ResNet-18 (`cifar_resnet18`, 3x3/1
stem, no max-pool: the network of edge-popup's CIFAR experiments and of
configs/slt_resnet18_cifar10.py). `--model resnet18` times the ImageNet-stem ResNet-18
on the same 32x32 inputs (8x8 by the first stage): the same 11.2M masked weights and
the same update, in a step about 16x cheaper in FLOPs, so its share is an upper bound
(the figure measured before the CIFAR stem existed).

The library's selection (masks._smallest, a bisection on uint32 keys: 24-28 counting
passes) is timed beside a candidate kept in this file only, an exact radix selection
(`_smallest_radix`: a sampled guess of the k-th key's range, then two or three
histogram passes, ties ranked by a histogram of their flat indices): the step with
each, the rule alone, each leaf size; the masks are checked equal. Every timing is
reported as wall / CPU time of this process (all its threads), medians of interleaved
repeats; on a machine loaded by other jobs the CPU times are the steadier figure.
`--leaves-only` skips the ResNet steps; `--siblings S` vmaps the one-leaf timings over
S copies (the sibling axis). BENCHMARKS.md ("Strong tickets: the top-k mask update")
holds the numbers and why the candidate is not in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax import masks as mask_algebra  # noqa: E402
from lottery_jax import search  # noqa: E402,F401  (registers "strong_ticket")
from lottery_jax.engine import loop, programs  # noqa: E402
from lottery_jax.engine.config import base_config  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step  # noqa: E402  (registers the synthetic "_bench_synthetic" source)

# Random N(0, 1) 32x32x3 images, random labels (search_step's benchmark-only source).
_SYNTHETIC = search_step._SYNTHETIC
_SYNTHETIC.update(shape=(32, 32, 3), classes=10, examples=256)


# A candidate selection, NOT in the library (see BENCHMARKS.md, "Strong tickets: the
# top-k mask update"): exact, the same masks as masks._smallest (the bisection), kept
# here to time it beside the bisection. The benchmark's "previous" variant below runs
# it (the names date from when "previous" was the older bisection); printed as "radix".
_bisection = mask_algebra._smallest


# The candidate radix selection (`_smallest_radix`, on leaves of at least `_RADIX_MIN`
# entries; below, the library's bisection). Each
# pass histograms the keys of the current key range [lo, hi] into 2^_RADIX_BITS bins
# (one scatter-add; keys below lo and above hi get a bin each, so the counts are
# absolute) and narrows the range to the bin holding the k-th smallest key: 32 bits
# take 3 passes from the full range. A sorted strided sample of `_SAMPLE` keys gives
# a first range that holds the k-th key with high probability and spans ~2^19-2^21
# keys on random scores: 2 passes then. A wrong guess costs one pass (the k-th key
# is then in the bin below lo or above hi, whose range the next pass takes), so the
# result never depends on the sample. Ties at the k-th key are ranked the same way,
# a histogram of their flat indices in 2^_RADIX_BITS blocks, then a cumulative sum
# inside one block, instead of a cumulative sum over every entry.
_RADIX_BITS = 11
_SAMPLE = 4096
_SAMPLE_SD = 4.0  # half-width of the sampled range, in standard deviations
_RADIX_MIN = 1 << 15


def _sampled_range(keys: jax.Array, k):
  """[lo, hi]: likely to hold the k-th smallest key (quantiles of a strided sample)."""
  n = keys.shape[0]
  sample = jnp.sort(keys[::max(1, n // _SAMPLE)])
  m = sample.shape[0]
  pos = k.astype(jnp.float32) * np.float32(m / n)
  half = np.float32(_SAMPLE_SD * 0.5 * np.sqrt(m) + 2)  # sd of a quantile <= sqrt(m)/2
  i_lo = jnp.floor(pos - half).astype(jnp.int32)
  i_hi = jnp.ceil(pos + half).astype(jnp.int32)
  lo = jnp.where(i_lo <= 0, jnp.uint32(0), sample[jnp.clip(i_lo, 0, m - 1)])
  hi = jnp.where(i_hi >= m - 1, jnp.uint32(mask_algebra._U32_MAX), sample[jnp.clip(i_hi, 0, m - 1)])
  return lo, hi


def _histogram(bins: jax.Array, size: int) -> jax.Array:
  return jnp.zeros(size, jnp.int32).at[bins].add(1, mode="promise_in_bounds")


def _kth_smallest_radix(keys: jax.Array, k, lo, hi):
  """(t, n_below, n_equal) with n_below = #{keys < t} < k <= n_below + n_equal and
  n_equal = #{keys == t} (t the k-th smallest key), or (t, k, 0) where exactly k keys
  are <= t; (0, 0, 0) for k = 0. [lo, hi] is a guess only."""
  nb = 1 << _RADIX_BITS

  def cond(carry):
    return ~carry[2]

  def body(carry):
    lo, hi, _, _, _, _ = carry
    shift = jnp.maximum(32 - jax.lax.clz(hi - lo) - _RADIX_BITS, 0).astype(jnp.uint32)
    inner = ((keys - lo) >> shift).astype(jnp.int32) + 1  # in [1, nb] for keys in range
    hist = _histogram(jnp.where(keys < lo, 0, jnp.where(keys > hi, nb + 1, inner)), nb + 2)
    cum = jnp.cumsum(hist)
    j = jnp.sum(cum < k, dtype=jnp.int32)  # the bin of the k-th smallest key
    at_j, up_to_j = hist[j], cum[j]
    bin_lo = lo + ((j.astype(jnp.uint32) - 1) << shift)
    bin_hi = bin_lo + jnp.minimum((jnp.uint32(1) << shift) - 1, hi - bin_lo)
    lo = jnp.where(j == 0, jnp.uint32(0), jnp.where(j == nb + 1, hi + 1, bin_lo))
    hi = jnp.where(j == 0, lo - 1, jnp.where(j == nb + 1, jnp.uint32(mask_algebra._U32_MAX), bin_hi))
    exact = up_to_j == k  # exactly k keys <= hi: they are the k smallest
    return (lo, hi, exact | (lo == hi), jnp.where(exact, hi, lo),
            jnp.where(exact, k, up_to_j - at_j), jnp.where(exact, 0, at_j))

  zero = jnp.int32(0)
  carry = (lo, hi, k <= 0, jnp.uint32(0), zero, zero)
  _, _, _, t, n_below, n_equal = jax.lax.while_loop(cond, body, carry)
  return t, n_below, n_equal


def _lowest_ties(keys: jax.Array, t, remaining) -> jax.Array:
  """keys < t, and the `remaining` (>= 1) ties at t of lowest flat index."""
  n = keys.shape[0]
  shift = max(0, (n - 1).bit_length() - _RADIX_BITS)
  block = 1 << shift
  n_blocks = -(-n // block)
  iota = jax.lax.iota(jnp.int32, n)
  equal = keys == t
  hist = _histogram(jnp.where(equal, iota >> shift, n_blocks), n_blocks + 1)
  cum = jnp.cumsum(hist)
  j = jnp.sum(cum < remaining, dtype=jnp.int32)  # the block of the last tie that goes
  start = jnp.minimum(j * block, n - block)
  pos = start + jax.lax.iota(jnp.int32, block)
  tie = (jax.lax.dynamic_slice(keys, (start,), (block,)) == t) & (pos >= j * block)
  rank = cum[j] - hist[j] + jnp.cumsum(tie, dtype=jnp.int32)
  cut = start + jnp.argmax(rank >= remaining).astype(jnp.int32)
  return (keys < t) | (equal & (iota <= cut) & (remaining > 0))


def _smallest_radix(keys: jax.Array, k) -> jax.Array:
  """Flat bool: the k entries of smallest (key, flat index)."""
  if keys.shape[0] < _RADIX_MIN:
    return _bisection(keys, k)
  k = jnp.asarray(k, jnp.int32)
  t, n_below, n_equal = _kth_smallest_radix(keys, k, *_sampled_range(keys, k))
  remaining = k - n_below

  def every_tie(keys, t, remaining):
    return (keys <= t) & (k > 0)

  # Without ties at t (always with distinct scores) no ranking is needed; under vmap
  # the cond becomes a select and both branches run.
  return jax.lax.cond(n_equal == remaining, every_tie, _lowest_ties, keys, t, remaining)


def _previous_keep_from_keys(keys, k, codes):
  current = mask_algebra._smallest
  mask_algebra._smallest = _smallest_radix
  try:
    return mask_algebra._keep_from_keys(keys, k, codes)
  finally:
    mask_algebra._smallest = current


@functools.partial(jax.jit, static_argnames=("kind",))
def _previous_keep_flat(values, n, k, codes, kind):
  x = jnp.abs(values) if kind == "magnitude" else values
  return _previous_keep_from_keys(
      mask_algebra._mask_padding(mask_algebra._order_keys(x), n), k, codes)


@contextlib.contextmanager
def previous_selection():
  """While active, functions traced for the first time use the radix candidate."""
  current = mask_algebra._keep_flat
  mask_algebra._keep_flat = _previous_keep_flat
  try:
    yield
  finally:
    mask_algebra._keep_flat = current


VARIANTS = ("topk", "topk_previous", "fixed")


def config(model: str, batch: int, rule: str):
  c = base_config()
  c.model.name = model
  c.model.kwargs = {"bn_affine": False}
  c.model.weight_init = "kaiming_uniform"
  c.data.name = "_bench_synthetic"
  c.data.batch_size = batch
  c.mask.program = "strong_ticket"
  c.mask.update_rule = rule
  c.sparsity = 0.5
  c.allocation = "uniform"
  c.prune_classifier = True
  c.freeze.prune_fraction = 0.25
  c.freeze.lock_fraction = 0.25
  c.optimizer.weight_decay = 5e-4
  c.num_steps = 10_000
  return c


def _rule_alone(run):
  """The run's update rule over its masked leaves, jitted (as inside the step)."""
  layout = run.layout
  treedef = jax.tree.structure(layout.prune_counts)
  flags = treedef.flatten_up_to(layout.masked)
  counts = treedef.flatten_up_to(layout.prune_counts)
  idx = [i for i, f in enumerate(flags) if f]

  @jax.jit
  def apply(scores, masks, partition):
    s, m, p = (treedef.flatten_up_to(t) for t in (scores, masks, partition))
    return run.program.update.apply([s[i] for i in idx], [m[i] for i in idx],
                                     [counts[i] for i in idx], [p[i] for i in idx], 0)
  return apply


def _timed(fn):
  """(wall, CPU time of this process over all its threads) of one call."""
  w0, c0 = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - w0, time.process_time() - c0


def _medians(pairs):
  return tuple(statistics.median(x) for x in zip(*pairs))


def _steps(args):
  variants = tuple(v for v in VARIANTS if not (args.skip_radix and v == "topk_previous"))
  selections = ("bisection",) if args.skip_radix else ("bisection", "radix")
  mesh = loop.make_mesh(jax.devices()[:1])
  with jax.transfer_guard("allow"):
    runs = {v: loop.build(config(args.model, args.batch, "fixed" if v == "fixed" else "topk"),
                          mesh) for v in variants}
    batch = next(runs["topk"].data.train_iter())
  states = {k: r.state for k, r in runs.items()}
  n_masked = sum(int(np.size(c)) for c, f in zip(jax.tree.leaves(runs["topk"].layout.partition),
                                                 jax.tree.leaves(runs["topk"].layout.masked))
                 if f)
  print(f"{args.model}, batch {args.batch}, {jax.devices()[0].platform}: "
        f"{n_masked:,} masked weights")

  def step(v):
    def go():
      states[v], metrics = runs[v].train_step(states[v], batch)
      return states[v], metrics
    return go

  for v in runs:  # compile (the previous selection traced into its own step) and warm up
    with previous_selection() if v == "topk_previous" else contextlib.nullcontext():
      for _ in range(2):
        jax.block_until_ready(step(v)())
  if "topk_previous" in runs:
    # Same scores, same masks: the two selections agree after the warm-up steps.
    for a, b in zip(jax.tree.leaves(states["topk"].masks),
                    jax.tree.leaves(states["topk_previous"].masks)):
      np.testing.assert_array_equal(a, b)
  times = {v: [] for v in runs}
  for _ in range(args.repeats):
    for v in runs:
      times[v].append(_timed(step(v)))
  med = {k: _medians(v) for k, v in times.items()}
  st = states["topk"]
  fns = {"bisection": _rule_alone(runs["topk"])}
  if "topk_previous" in runs:
    fns["radix"] = _rule_alone(runs["topk_previous"])
  scores, masks, part = (jax.tree.map(jnp.copy, t) for t in (st.scores, st.masks,
                                                               st.partition))
  rule_t = {name: [] for name in selections}
  outs = {}
  for name in selections:
    with previous_selection() if name == "radix" else contextlib.nullcontext():
      outs[name] = jax.block_until_ready(fns[name](scores, masks, part))
  if "radix" in outs:
    jax.tree.map(np.testing.assert_array_equal, outs["bisection"], outs["radix"])
  for _ in range(args.repeats):
    for name in selections:
      rule_t[name].append(_timed(lambda: fns[name](scores, masks, part)))
  rule_s = {k: _medians(v) for k, v in rule_t.items()}
  print("medians, wall / CPU time of this process (all threads; steadier on a loaded "
        "machine):")
  for v in ("topk", "topk_previous"):
    if v not in runs:
      continue
    label = "bisection" if v == "topk" else "radix"
    (w, c), (fw, fc), (rw, rc) = med[v], med["fixed"], rule_s[label]
    print(f"step with top-k update ({label} selection): {w * 1e3:.1f} / {c * 1e3:.1f} ms; "
          f"with fixed masks: {fw * 1e3:.1f} / {fc * 1e3:.1f} ms; difference "
          f"{100 * (w - fw) / w:.1f}% / {100 * (c - fc) / c:.1f}% of the step")
    print(f"  top-k rule alone ({label}, jitted, same scores): {rw * 1e3:.1f} / "
          f"{rc * 1e3:.1f} ms = {100 * rw / w:.1f}% / {100 * rc / c:.1f}% of that step")
  if "radix" in rule_s:
    print(f"  rule alone bisection/radix: {rule_s['bisection'][0] / rule_s['radix'][0]:.2f}x "
          f"wall, {rule_s['bisection'][1] / rule_s['radix'][1]:.2f}x CPU")


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="cifar_resnet18")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--sizes", default="14,16,18,20,22")
  ap.add_argument("--siblings", type=int, default=0,
                  help="one-leaf timings vmapped over this many copies (0: no vmap)")
  ap.add_argument("--leaves-only", action="store_true", help="skip the ResNet steps")
  ap.add_argument("--skip-radix", action="store_true",
                  help="time the library's selection only (no radix candidate)")
  args = ap.parse_args(argv)
  _SYNTHETIC["examples"] = 2 * args.batch
  if not args.leaves_only:
    _steps(args)
  sib = f", vmapped over {args.siblings} copies" if args.siblings else ""
  print(f"top-k alone on one leaf of n entries (p = r = 0.25, 50% sparsity{sib}), bisection "
        "(the library's) vs radix candidate (interleaved), wall / CPU medians:")
  for k in (int(s) for s in args.sizes.split(",")):
    n = 2 ** k
    key = jax.random.PRNGKey(k)
    leaf = {"w": jnp.zeros((n // 64, 64))}
    codes = mask_algebra.freeze(key, leaf, 0.25, 0.25, where=lambda p, x: True)["w"]
    prune = mask_algebra.prune_count(0.5, n)
    one = lambda s, c: programs._topk_leaf(jnp.abs(s), prune, c)  # noqa: E731
    if args.siblings:
      score = jax.random.normal(key, (args.siblings,) + leaf["w"].shape)
      one = jax.vmap(one, in_axes=(0, None))
    else:
      score = jax.random.normal(key, leaf["w"].shape)
    cur, prev = jax.jit(one), jax.jit(one)
    with previous_selection():
      m_prev = jax.block_until_ready(prev(score, codes))
    np.testing.assert_array_equal(cur(score, codes), m_prev)
    t = {"current": [], "previous": []}
    for _ in range(args.repeats):
      for name, fn in (("current", lambda: cur(score, codes)),
                       ("previous", lambda: prev(score, codes))):
        t[name].append(_timed(fn))
    m = {name: _medians(v) for name, v in t.items()}
    (cw, cc), (pw, pc) = m["current"], m["previous"]
    print(f"  n = 2^{k:<2d} = {n:>10,}: bisection {cw * 1e3:8.2f} / {cc * 1e3:8.2f} ms "
          f"({cc / n * 1e9:5.1f} ns/entry CPU)  radix {pw * 1e3:8.2f} / {pc * 1e3:8.2f} ms "
          f"({pc / n * 1e9:5.1f} ns/entry CPU)  bisection/radix {cw / pw:.2f}x wall, "
          f"{cc / pc:.2f}x CPU", flush=True)


if __name__ == "__main__":
  main()
