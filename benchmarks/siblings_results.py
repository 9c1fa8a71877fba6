"""Evidence for seed 001 (siblings) on embedded data: overlap against the number of
shared epochs k and against chance; union vs intersection vs one-shot accuracy.

  python benchmarks/siblings_results.py commands          # every run's command line
  python benchmarks/siblings_results.py run [NAME ...]    # run them (resumable)
  python benchmarks/siblings_results.py collect           # markdown tables + figures

Runs: `configs/siblings_sweep.py` (k in {0, 1, 2, 5}, S = 4 siblings in one vmapped
program, one-shot global magnitude masks at 80% and 90%, union / intersection /
one-shot retrained from theta_k) on scikit-learn digits and on MNIST-1D, seeds 0, 1, 2
(`--config.seed`: the shared initialisation and the siblings' data orders); and the
MNIST-1D sweep with S = 10 siblings (`mnist1d_S10_s<seed>`, `--config.siblings.count=10`);
and CIFAR-10 (`cifar10_s<seed>`): configs/siblings_resnet20_cifar10.py:folder=...,subset
(ResNet-20 at quarter width, one epoch of the 10k-image train subset of the CIFAR IMP
evidence, k in {0, 0.125, 0.25, 0.5} epochs, S = 4, 80% and 90%; its docstring has the
scale), seeds 0, 1, 2; and the same net trained 5 epochs of the subset (`cifar10_e5_s<seed>`,
`,subset,epochs=5`, k in {0, 0.25, 1, 2} epochs, the siblings one after another
(`siblings.vmap=False`, XLA's convolutions: the same result as the vmapped program,
tests/test_siblings.py, and faster than it at this width in one measurement on the busy
CPU: 4 x 505 ms against 2,765 ms a step of the four siblings, not yet repeated quiet)).
Workdirs under `--root` (default runs/siblings); `run` copies each finished summary
into benchmarks/results/siblings/ (committed; `collect --root benchmarks/results/siblings`
rebuilds the tables from them). `store [NAME ...]` copies what a run has so far: its
summary.json, or for an unfinished sweep each finished k's overlap.json (the sweep
trains every k's siblings before retraining any), which `collect` reports as overlap
rows without retrained accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402  (commands, runs, summaries, mean ± std)
from _evidence import HERE, REPO  # noqa: E402
import imp_results  # noqa: E402  (the CIFAR-10 train subset)


# The class-balanced 10k-image CIFAR-10 train subset of the CIFAR IMP evidence (all 10k
# test images; `imp_results.py subset` writes it, `run` does when it is missing).
CIFAR_SUBSET = imp_results.CIFAR_SUBSET
# Shared epochs k of the 5-epoch CIFAR-10 runs (0, 20, 78 and 156 steps of batch 128).
CIFAR_E5_K = (0.0, 0.25, 1.0, 2.0)


def runs() -> dict[str, list[str]]:
  out = {}
  for seed in (0, 1, 2):
    out[f"digits_s{seed}"] = ["--config=configs/siblings_sweep.py", f"--config.seed={seed}",
                              "--config.progress_bar=False"]
  for seed in (0, 1, 2):
    out[f"mnist1d_s{seed}"] = ["--config=configs/siblings_sweep.py:mnist1d",
                               f"--config.seed={seed}", "--config.progress_bar=False"]
  for seed in (0, 1, 2):   # after all S = 4 runs (the order `run` takes)
    out[f"mnist1d_S10_s{seed}"] = out[f"mnist1d_s{seed}"] + ["--config.siblings.count=10"]
  for seed in (0, 1, 2):
    out[f"cifar10_s{seed}"] = [
        f"--config=configs/siblings_resnet20_cifar10.py:folder={CIFAR_SUBSET},subset",
        f"--config.seed={seed}", "--config.progress_bar=False"]
  for seed in (0, 1, 2):   # the same net trained 5x longer, k up to 2 epochs
    out[f"cifar10_e5_s{seed}"] = [
        f"--config=configs/siblings_resnet20_cifar10.py:folder={CIFAR_SUBSET},subset,epochs=5",
        f"--config.siblings.shared_epochs_sweep=({','.join(map(str, CIFAR_E5_K))})",
        "--config.siblings.vmap=False", "--config.model.conv=xla",
        f"--config.seed={seed}", "--config.progress_bar=False"]
  return out


def command(name: str, root: str) -> list[str]:
  return ev.command(runs()[name], root, name)


STORE = os.path.join(HERE, "results", "siblings")


def run(names, root: str) -> None:
  if any(n.startswith("cifar10") for n in names) and not os.path.exists(
      os.path.join(REPO, CIFAR_SUBSET)):
    imp_results.write_subset()
  ev.run(names, root, command, skip_done=False, after=store)


def store(root: str, name: str) -> None:
  """Copies run `name`'s summary.json into STORE, or, while it is unfinished, each of
  its `k<k>/overlap.json` files (written once that k's siblings are trained)."""
  ev.store(root, name, STORE)
  src = os.path.join(REPO, root, name)
  if os.path.exists(os.path.join(src, "summary.json")) or not os.path.isdir(src):
    return
  for k in sorted(os.listdir(src)):
    f = os.path.join(src, k, "overlap.json")
    dst = os.path.join(STORE, name, k)
    if os.path.exists(f) and os.path.realpath(f) != os.path.realpath(
        os.path.join(dst, "overlap.json")):
      os.makedirs(dst, exist_ok=True)
      shutil.copyfile(f, os.path.join(dst, "overlap.json"))


def load(name: str, root: str) -> dict | None:
  """Run `name`'s summary.json under `root`; for an unfinished sweep, one built from its
  `k<k>/overlap.json` files (overlap and dense siblings only, `partial` set); else None."""
  done = ev.load(name, root)
  if done is not None:
    return done
  d = os.path.join(root, name)
  ks = []
  for k in (os.listdir(d) if os.path.isdir(d) else ()):
    f = os.path.join(d, k, "overlap.json")
    if k.startswith("k") and os.path.exists(f):
      with open(f) as fh:
        ks.append(json.load(fh))
  if not ks:
    return None
  ks.sort(key=lambda r: r["shared_epochs"])
  return {"partial": True, "siblings": ks[0]["siblings"], "shared_epochs":
          [r["shared_epochs"] for r in ks],
          "sweep": [{"shared_epochs": r["shared_epochs"], "by_sparsity": r["by_sparsity"],
                     "per_sibling": [{"test_accuracy": a}
                                     for a in r["per_sibling_test_accuracy"]]}
                    for r in ks]}


def _arm(entry: dict, arm: str):
  """An arm's retrained test accuracy, None while it is not retrained."""
  return entry.get(arm, {}).get("test_accuracy")


def _ms(xs):
  return ev.pm(xs, 1.0, 4)


def collect(root: str) -> str:
  plt = ev.pyplot()
  S = {n: load(n, root) for n in runs()}
  groups = {ds: [S[f"{pre}_s{s}"] for s in (0, 1, 2) if S[f"{pre}_s{s}"]]
            for ds, pre in (("digits", "digits"), ("mnist1d", "mnist1d"),
                            ("mnist1d, S = 10", "mnist1d_S10"),
                            ("CIFAR-10 subset, ResNet-20 x1/4", "cifar10"),
                            ("CIFAR-10 subset, ResNet-20 x1/4, 5 epochs", "cifar10_e5"))}
  groups = {ds: g for ds, g in groups.items() if g} or {"digits": []}
  lines = []
  fig, axs = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
  axs = axs[0]
  for ax, (ds, summaries) in zip(axs, groups.items()):
    if not summaries:
      continue
    ks = [r["shared_epochs"] for r in summaries[0]["sweep"]]
    sparsities = [e["sparsity"] for e in summaries[0]["sweep"][0]["by_sparsity"]]
    lines += [f"#### {ds}: overlap of the siblings' one-shot masks (S = "
              f"{summaries[0]['siblings']}, mean pairwise IoU; mean ± std over "
              f"{len(summaries)} seed(s))", "",
              "| k (shared epochs) | " + " | ".join(
                  f"IoU at {s:.0%} | chance at {s:.0%}" for s in sparsities) + " |",
              "|---" * (1 + 2 * len(sparsities)) + "|"]
    for i, k in enumerate(ks):
      cells = []
      for j in range(len(sparsities)):
        cells.append(_ms([r["sweep"][i]["by_sparsity"][j]["overlap"]["mean_iou"] for r in summaries]))
        cells.append(_ms([r["sweep"][i]["by_sparsity"][j]["overlap"]["chance_iou"] for r in summaries]))
      lines.append(f"| {k:g} | " + " | ".join(cells) + " |")
    lines += ["", f"#### {ds}: retrained accuracy (test), union vs intersection vs one-shot", "",
              "| k | sparsity | union | intersection | one-shot | dense siblings |",
              "|---|---|---|---|---|---|"]
    for i, k in enumerate(ks):
      for j, s in enumerate(sparsities):
        arms = [_ms([_arm(r["sweep"][i]["by_sparsity"][j], arm) for r in summaries])
                for arm in ("union", "intersection", "one_shot")]
        dense = _ms([np.mean([p["test_accuracy"] for p in r["sweep"][i]["per_sibling"]])
                     for r in summaries])
        lines.append(f"| {k:g} | {s:.0%} | " + " | ".join(arms) + f" | {dense} |")
    lines.append("")
    for j, s in enumerate(sparsities):
      iou = np.asarray([[r["sweep"][i]["by_sparsity"][j]["overlap"]["mean_iou"] for i in range(len(ks))]
                        for r in summaries])
      chance = np.asarray([[r["sweep"][i]["by_sparsity"][j]["overlap"]["chance_iou"]
                            for i in range(len(ks))] for r in summaries])
      line = ax.plot(ks, iou.mean(0), "o-", label=f"siblings, {s:.0%}")[0]
      if iou.shape[0] > 1:
        ax.fill_between(ks, iou.min(0), iou.max(0), color=line.get_color(), alpha=0.2)
      ax.plot(ks, chance.mean(0), "--", color=line.get_color(), label=f"chance, {s:.0%}")
    ax.set_xlabel("shared epochs k")
    ax.set_ylabel("mean pairwise IoU")
    ax.set_title(f"{ds} (band: min-max over {len(summaries)} seed(s))")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
  ev.savefig(fig, "siblings_overlap.png")
  _arms_figure(plt, groups)
  text = "\n".join(lines)
  print(text)
  return text


def _arms_figure(plt, groups) -> None:
  """siblings_arms.png: retrained test accuracy of union, intersection and one-shot (and
  the dense siblings) against k, one row per data set, one column per sparsity; mean
  over seeds, bars min-max."""
  groups = {ds: g for ds, g in groups.items() if g}
  if not groups:
    return
  cols = max(len(g[0]["sweep"][0]["by_sparsity"]) for g in groups.values())
  fig, axs = plt.subplots(len(groups), cols, figsize=(4.2 * cols, 3.2 * len(groups)),
                          squeeze=False)
  for row, (ds, summaries) in zip(axs, groups.items()):
    ks = np.asarray([r["shared_epochs"] for r in summaries[0]["sweep"]])
    dense = np.asarray([[np.mean([p["test_accuracy"] for p in r["sweep"][i]["per_sibling"]])
                         for i in range(len(ks))] for r in summaries])
    for j, ax in enumerate(row):
      if j >= len(summaries[0]["sweep"][0]["by_sparsity"]):
        ax.set_visible(False)
        continue
      s = summaries[0]["sweep"][0]["by_sparsity"][j]["sparsity"]
      for n, arm in enumerate(("union", "intersection", "one_shot")):
        acc = np.asarray([[_arm(r["sweep"][i]["by_sparsity"][j], arm) for i in range(len(ks))]
                          for r in summaries], np.float64)   # None (not retrained): nan
        x = ks + (n - 1) * 0.03 * max(ks.max(), 1)   # side by side, not on top
        ax.errorbar(x, acc.mean(0), yerr=[acc.mean(0) - acc.min(0), acc.max(0) - acc.mean(0)],
                    fmt="o-", capsize=2, label=arm.replace("_", "-"))
      ax.plot(ks, dense.mean(0), "k--", label="dense siblings")
      ax.set_xlabel("shared epochs k")
      ax.set_ylabel("test accuracy")
      ax.set_title(f"{ds}, {s:.0%} sparse ({len(summaries)} seed(s))", fontsize=9)
      ax.legend(fontsize=7)
  ev.savefig(fig, "siblings_arms.png")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("what", choices=("commands", "run", "collect", "store"))
  ap.add_argument("names", nargs="*")
  ap.add_argument("--root", default="runs/siblings")
  a = ap.parse_args()
  os.chdir(REPO)
  if a.what == "commands":
    ev.print_commands(ev.select(a.names, runs()), a.root, command)
  elif a.what == "run":
    run(ev.select(a.names, runs()), a.root)
  elif a.what == "store":
    for name in ev.select(a.names, runs()):
      store(a.root, name)
  else:
    collect(a.root)


if __name__ == "__main__":
  main()
