"""Evidence for seed 003 (strong lottery tickets in partially frozen random networks,
issue 15.5): accuracy against search-space size and against stored bits for a grid
of (p, r) at a fixed target sparsity, against the dense-source and the randomly
pruned-source strong tickets, several seeds.

  python benchmarks/slt_results.py commands          # every run's command line
  python benchmarks/slt_results.py run [NAME ...]    # run them (resumable: finished
                                                     # runs are skipped)
  python benchmarks/slt_results.py collect           # markdown tables, verdicts, figures

Runs (workdirs under `--root`, default runs/slt_results), all at 50% sparsity
(uniform per layer, every layer masked), p = `freeze.prune_fraction` (frozen pruned),
r = `freeze.lock_fraction` (locked), the rest searched:

* `m1d_p<p>_r<r>_s<seed>`: configs/slt_quick.py on MNIST-1D (1-D CNN, widths 64-128-128,
  75,328 masked weights) for 50 epochs (the config's 100 halved for CPU time), seeds
  0, 1, 2 (`--config.seed`: weights, partition, scores, data order). Grid: the dense
  source (0, 0); the frozen fraction f = p + r in {0.2, 0.4} split as the randomly
  pruned source (f, 0) and half/half (f/2, f/2); then lock-only (0, f).
* `m1d_w<a>-<b>-<b>_s<seed>`: the dense source (p = r = 0) of a narrower 1-D CNN whose
  masked-weight count is within 0.02% of (1 - f) * 75,328, i.e. a dense-source ticket
  that stores the same number of bits as the frozen tickets at f (widths 58-114-114
  for f = 0.2, 49-99-99 for f = 0.4).
* `c10_p<p>_r<r>_s<seed>`: configs/slt_conv6_cifar10.py (Conv-6, no BatchNorm) at a
  quarter of its width (`model.kwargs.widths` (16, 32, 64), dense layers 256-256 as
  in Conv-6: 402,096 masked weights; the full width ran at ~12 s a step here, the
  quarter width at ~5 s under the same load) on a fixed random 5,000-image subset of
  the CIFAR-10 training set (`data.max_train_examples`, the same subset for every
  run) for 4 epochs (156 steps, cosine per epoch), evaluated at the end on the full
  10,000-image test set; (0.2, 0.2), (0.4, 0), (0, 0), seeds 0, 1 and 2 (seed 2 added 2026-12-03).
* `c10e16_p<p>_r<r>_s<seed>`: the same grid and seeds for 16 epochs (624 steps; added
  2026-12-03, since after 4 epochs the networks sit at 13-26%).
* `c10r18_s0`: configs/slt_resnet18_cifar10.py as it is (CIFAR ResNet-18, p = r = 0.25)
  on the same subset for 4 epochs, seed 0: the measured result of that config.

Stored bits: `summary.json` `stored_bits` (one bit per searchable weight plus the
ticket's header; BatchNorm running statistics, which every ticket of a model stores
alike, are left out). Search-space size: the number of searchable weights.

Verdicts compare paired seeds (same seed: same data order; the weights and partition
differ between (p, r) settings): a two-sided paired t-test at 5% (_evidence.verdict:
with 3 seeds the mean difference must exceed 4.3 standard errors), else "within noise".

* "freezing gives better accuracy per stored bit": a frozen ticket at f against the
  dense-source ticket of the narrower network with the same stored bits (equal bits);
  and, as the paper's framing, the frozen ticket against the full-width dense source
  (accuracy lost for 1 / (1 - f) fewer bits).
* "locking beats a randomly pruned source": (f/2, f/2) against (f, 0): equal
  search-space size and equal stored bits (both search (1 - f) of the weights).

Summaries (small JSON, no checkpoints) are copied to benchmarks/results/slt/ by
`collect`, which reads `--root` first and then that folder, so a later session can
re-collect without the runs. Figures: benchmarks/figures/slt_accuracy_vs_bits.png.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402  (commands, runs, summaries, mean ± std, verdicts)
from _evidence import REPO, HERE  # noqa: E402
STORE = os.path.join(HERE, "results", "slt")
CIFAR_ZIP = "../shared/datasets/cifar10-jpeg.zip"

M1D_SEEDS = (0, 1, 2)
M1D_EPOCHS = 50
# (p, r), in the order they run: the core comparisons first, lock-only last.
M1D_GRID = ((0.0, 0.0), (0.4, 0.0), (0.2, 0.2), (0.2, 0.0), (0.1, 0.1))
M1D_EXTRA = ((0.0, 0.4), (0.0, 0.2))
# Narrower dense sources with (1 - f) of the 75,328 masked weights: f -> widths.
M1D_NARROW = {0.4: (49, 99, 99), 0.2: (58, 114, 114)}

C10_SEEDS = (0, 1, 2)
C10_GRID = ((0.2, 0.2), (0.4, 0.0), (0.0, 0.0))
C10_TRAIN = 5_000
C10_EPOCHS = 4
C10_WIDTHS = (16, 32, 64)
# The same grid 4x longer (added 2026-12-03: after 4 epochs the networks are at 13-26%,
# too close to chance to test anything): prefix -> epochs.
C10_BUDGETS = {"c10": C10_EPOCHS, "c10e16": 16}


def _pr(p, r):
  return f"p{p:.2f}_r{r:.2f}"


def _w(widths):
  return "w" + "-".join(map(str, widths))


def runs() -> dict[str, list[str]]:
  out = {}
  common = ["--config.progress_bar=False"]
  for seed in M1D_SEEDS:
    def m1d(name, extra):
      out[f"m1d_{name}_s{seed}"] = (["--config=configs/slt_quick.py", f"--config.seed={seed}",
                                     f"--config.num_epochs={M1D_EPOCHS}"] + extra + common)
    for p, r in M1D_GRID:
      m1d(_pr(p, r), [f"--config.freeze.prune_fraction={p}",
                      f"--config.freeze.lock_fraction={r}"])
    for f, widths in sorted(M1D_NARROW.items(), reverse=True):
      m1d(_w(widths), ["--config.freeze.prune_fraction=0.0",
                       "--config.freeze.lock_fraction=0.0",
                       f"--config.model.kwargs.widths=({','.join(map(str, widths))})"])
  for seed in M1D_SEEDS:
    for p, r in M1D_EXTRA:
      out[f"m1d_{_pr(p, r)}_s{seed}"] = (
          ["--config=configs/slt_quick.py", f"--config.seed={seed}",
           f"--config.num_epochs={M1D_EPOCHS}", f"--config.freeze.prune_fraction={p}",
           f"--config.freeze.lock_fraction={r}"] + common)
  for prefix, epochs in C10_BUDGETS.items():
    for seed in C10_SEEDS:
      for p, r in C10_GRID:
        out[f"{prefix}_{_pr(p, r)}_s{seed}"] = [
            f"--config=configs/slt_conv6_cifar10.py:folder={CIFAR_ZIP}", f"--config.seed={seed}",
            f"--config.freeze.prune_fraction={p}", f"--config.freeze.lock_fraction={r}",
            f"--config.model.kwargs={{'widths': {C10_WIDTHS}}}",
            f"--config.data.max_train_examples={C10_TRAIN}",
            f"--config.num_epochs={epochs}", f"--config.eval_every_epochs={epochs}",
            "--config.checkpoint_every_steps=200"] + common
  # configs/slt_resnet18_cifar10.py as it is (CIFAR ResNet-18, p = r = 0.25, ERK, 50%
  # sparse) on the same 5,000-image subset for the same 4 epochs (80 steps of batch 256):
  # the measured result in that config's docstring (one seed; ~8 s a step here).
  out["c10r18_s0"] = [
      f"--config=configs/slt_resnet18_cifar10.py:folder={CIFAR_ZIP}", "--config.seed=0",
      f"--config.data.max_train_examples={C10_TRAIN}", f"--config.num_epochs={C10_EPOCHS}",
      f"--config.eval_every_epochs={C10_EPOCHS}", "--config.log_every_steps=10",
      "--config.checkpoint_every_steps=20"] + common
  return out


def command(name: str, root: str) -> list[str]:
  return ev.command(runs()[name], root, name)


def run(names, root: str) -> None:
  ev.run(names, root, command)


def _load(root, name):
  return ev.load(name, os.path.join(REPO, root), STORE)


def _store(root, name) -> None:
  """Copies a finished run's summary.json (and strong_ticket.json) into STORE."""
  ev.store(root, name, STORE, ("summary.json", "strong_ticket.json"))


def _pm(xs, scale=100.0, digits=1) -> str:
  return ev.pm(xs, scale, digits)


def _v(a, b) -> str:
  w, m, se, n = ev.verdict(a, b)
  if n == 0:
    return "-"
  return f"{100 * m:+.1f} ± {100 * se:.1f} (n={n}): **{w}**"


def _acc(s):
  return None if s is None else s["final_eval"]["accuracy"]


def _row(s):
  t = s["strong_ticket"]
  return dict(searchable=t["counts"]["total"]["searchable"], size=t["counts"]["total"]["size"],
              bits=s["stored_bits"], dense_bits=s["dense_source_bits"])


def _table(S, prefix, settings, seeds, label):
  """Rows of (setting, search space, stored bits, accuracy) for one data set."""
  lines = [f"| {label} | searched | search space (weights) | stored bits | compression vs "
           "full-width dense source | test accuracy (%) | accuracy per kbit (%/kbit) |",
           "|---|---|---|---|---|---|---|"]
  points = []
  full_bits = None
  for key, name in settings:
    ss = [S.get(f"{prefix}_{name}_s{seed}") for seed in seeds]
    have = [s for s in ss if s]
    if not have:
      continue
    info = _row(have[0])
    if full_bits is None:
      full_bits = info["dense_bits"]
    accs = [_acc(s) for s in ss]
    per_kbit = [None if a is None else a / (info["bits"] / 1000) for a in accs]
    lines.append(f"| {key} | {info['searchable'] / info['size']:.0%} | {info['searchable']:,} | "
                 f"{info['bits']:,} | {full_bits / info['bits']:.2f}x | {_pm(accs)} | "
                 f"{_pm(per_kbit, 100, 3)} |")
    points.append((key, info, accs))
  return lines, points


def collect(root: str) -> str:
  plt = ev.pyplot()
  names = list(runs())
  for n in names:
    _store(root, n)
  S = {n: _load(root, n) for n in names}
  lines: list[str] = []
  fig, axs = plt.subplots(1, 3, figsize=(15, 4))

  # ---- MNIST-1D.
  # Grouped by the frozen fraction f = p + r: (0, 0), then per f the randomly pruned
  # source, half/half, lock-only and the narrower dense source with the same bits.
  settings = [("(p, r) = (0, 0)", _pr(0, 0))]
  for f, w in sorted(M1D_NARROW.items()):
    settings += [(f"(p, r) = ({p:g}, {r:g})", _pr(p, r))
                 for p, r in ((f, 0.0), (f / 2, f / 2), (0.0, f))]
    settings.append((f"dense source, widths {'-'.join(map(str, w))}", _w(w)))
  tl, pts = _table(S, "m1d", settings, M1D_SEEDS, "MNIST-1D, 50% sparse")
  n_seeds = max([len([a for a in accs if a is not None]) for _, _, accs in pts] or [0])
  lines += [f"#### MNIST-1D: strong tickets at 50% sparsity ({M1D_EPOCHS} epochs, seeds "
            f"{', '.join(map(str, M1D_SEEDS[:n_seeds]))}; mean ± std)", ""] + tl + [""]
  acc = lambda name: [_acc(S.get(f"m1d_{name}_s{s}")) for s in M1D_SEEDS]
  dense = acc(_pr(0, 0))
  lines += ["#### MNIST-1D: verdicts (paired by seed; difference in points ± its standard "
            "error)", "",
            "| claim | comparison | equal | difference | ",
            "|---|---|---|---|"]
  for f, widths in sorted(M1D_NARROW.items()):
    half = acc(_pr(f / 2, f / 2))
    rps = acc(_pr(f, 0))
    narrow_acc = acc(_w(widths))
    lines.append(f"| freezing: better accuracy per stored bit | ({f / 2:g}, {f / 2:g}) - dense "
                 f"source {'-'.join(map(str, widths))} | stored bits | {_v(half, narrow_acc)} |")
    lines.append(f"| (same, randomly pruned) | ({f:g}, 0) - dense source "
                 f"{'-'.join(map(str, widths))} | stored bits | {_v(rps, narrow_acc)} |")
    lines.append(f"| (the price of freezing) | ({f / 2:g}, {f / 2:g}) - full-width dense source "
                 f"(0, 0) | model, sparsity ({1 / (1 - f):.2f}x fewer bits) | "
                 f"{_v(half, dense)} |")
    lines.append(f"| locking beats a randomly pruned source | ({f / 2:g}, {f / 2:g}) - ({f:g}, 0) "
                 f"| search space and stored bits | {_v(half, rps)} |")
    lock_only = acc(_pr(0, f))
    if any(a is not None for a in lock_only):
      lines.append(f"| (lock only) | (0, {f:g}) - ({f:g}, 0) | search space and stored bits | "
                   f"{_v(lock_only, rps)} |")
  lines.append("")
  _plot(axs[0], axs[1], pts, "MNIST-1D")

  # ---- CIFAR-10, each budget (the plot shows the longest that has runs).
  settings = [(f"(p, r) = ({p:g}, {r:g})", _pr(p, r)) for p, r in C10_GRID]
  plotted = None
  for prefix, epochs in C10_BUDGETS.items():
    tl, cpts = _table(S, prefix, settings, C10_SEEDS, "CIFAR-10 Conv-6, 50% sparse")
    if not cpts:
      continue
    plotted = (cpts, epochs)
    n_seeds = max(len([a for a in accs if a is not None]) for _, _, accs in cpts)
    lines += [f"#### CIFAR-10, Conv-6 at widths {C10_WIDTHS}: strong tickets at 50% sparsity "
              f"({C10_TRAIN:,}-image "
              f"training subset, {epochs} epochs, full test set; seeds "
              f"{', '.join(map(str, C10_SEEDS[:n_seeds]))}; mean ± std)", ""] + tl + [""]
    cacc = lambda name, prefix=prefix: [_acc(S.get(f"{prefix}_{name}_s{s}"))  # noqa: E731
                                        for s in C10_SEEDS]
    lines += ["| claim | comparison | equal | difference |", "|---|---|---|---|",
              f"| locking beats a randomly pruned source | (0.2, 0.2) - (0.4, 0) | search space "
              f"and stored bits | {_v(cacc(_pr(0.2, 0.2)), cacc(_pr(0.4, 0)))} |",
              f"| (the price of freezing) | (0.2, 0.2) - (0, 0) | model, sparsity (1.67x fewer "
              f"bits) | {_v(cacc(_pr(0.2, 0.2)), cacc(_pr(0, 0)))} |", ""]
  if plotted:
    _plot(axs[2], None, plotted[0],
          f"CIFAR-10 quarter-width Conv-6 (subset, {plotted[1]} epochs)")
  r18 = S.get("c10r18_s0")
  if r18:
    lines += [f"CIFAR ResNet-18 (`configs/slt_resnet18_cifar10.py` as it is: p = r = 0.25, "
              f"ERK, 50% sparse; the same subset, {C10_EPOCHS} epochs, seed 0): "
              f"{100 * _acc(r18):.2f}% test accuracy, {r18['stored_bits']:,} stored bits "
              f"against {r18['dense_source_bits']:,} for its dense source, "
              f"{r18['wall_time_s'] / 60:.0f} min.", ""]
  ev.savefig(fig, "slt_accuracy_vs_bits.png")
  return "\n".join(lines)


def _plot(ax_bits, ax_space, pts, title):
  for key, info, accs in pts:
    a = np.asarray([x for x in accs if x is not None], np.float64) * 100
    if a.size == 0:
      continue
    is_dense = "dense" in key or key.endswith("(0, 0)")
    rp = key.endswith(", 0)") and not key.endswith("(0, 0)")
    marker = "s" if is_dense else ("v" if rp else "o")
    color = "k" if is_dense else ("tab:red" if rp else "tab:blue")
    for ax, x in ((ax_bits, info["bits"]), (ax_space, info["searchable"])):
      if ax is None:
        continue
      ax.errorbar([x], [a.mean()], yerr=[a.std(ddof=1) if a.size > 1 else 0], fmt=marker,
                  color=color, capsize=3)
      ax.scatter([x] * a.size, a, s=8, color=color, alpha=0.4)
      ax.annotate(key.replace("(p, r) = ", "").replace("dense source, widths ", "dense "),
                  (x, a.mean()), fontsize=7, xytext=(4, 4), textcoords="offset points")
  for ax, xl in ((ax_bits, "stored bits"), (ax_space, "search space (searchable weights)")):
    if ax is None:
      continue
    ax.set_xlabel(xl)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: 50% sparse (black: dense source, red: randomly pruned "
                 "source, blue: locked)", fontsize=8)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("action", choices=["commands", "run", "collect"])
  ap.add_argument("names", nargs="*")
  ap.add_argument("--root", default=os.path.join("runs", "slt_results"),
                  help="relative paths are relative to the repository root")
  args = ap.parse_args()
  if args.action == "commands":
    ev.print_commands(ev.select(args.names, runs()), args.root, command)
  elif args.action == "run":
    run(ev.select(args.names, runs()), args.root)
  else:
    print(collect(args.root))


if __name__ == "__main__":
  main()
