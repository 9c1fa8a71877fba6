"""Evidence for seed 001 (siblings) on embedded data: overlap against the number of
shared epochs k and against chance; union vs intersection vs one-shot accuracy.

  python benchmarks/siblings_results.py commands          # every run's command line
  python benchmarks/siblings_results.py run [NAME ...]    # run them (resumable)
  python benchmarks/siblings_results.py collect           # markdown tables + figures

Runs: `configs/siblings_sweep.py` (k in {0, 1, 2, 5}, S = 4 siblings in one vmapped
program, one-shot global magnitude masks at 80% and 90%, union / intersection /
one-shot retrained from theta_k) on scikit-learn digits and on MNIST-1D, seeds 0, 1, 2
(`--config.seed`: the shared initialisation and the siblings' data orders); and the
MNIST-1D sweep with S = 10 siblings (`mnist1d_S10_s<seed>`, `--config.siblings.count=10`).
Workdirs under `--root` (default runs/siblings); `run` copies each finished summary
into benchmarks/results/siblings/ (committed; `collect --root benchmarks/results/siblings`
rebuilds the tables from them).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402  (commands, runs, summaries, mean ± std)
from _evidence import HERE, REPO  # noqa: E402


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
  return out


def command(name: str, root: str) -> list[str]:
  return ev.command(runs()[name], root, name)


STORE = os.path.join(HERE, "results", "siblings")


def run(names, root: str) -> None:
  ev.run(names, root, command, skip_done=False,
         after=lambda root, name: ev.store(root, name, STORE))


def _ms(xs):
  return ev.pm(xs, 1.0, 4)


def collect(root: str) -> str:
  plt = ev.pyplot()
  S = {n: ev.load(n, root) for n in runs()}
  groups = {ds: [S[f"{pre}_s{s}"] for s in (0, 1, 2) if S[f"{pre}_s{s}"]]
            for ds, pre in (("digits", "digits"), ("mnist1d", "mnist1d"),
                            ("mnist1d, S = 10", "mnist1d_S10"))}
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
        arms = [_ms([r["sweep"][i]["by_sparsity"][j][arm]["test_accuracy"] for r in summaries])
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
  text = "\n".join(lines)
  print(text)
  return text


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("what", choices=("commands", "run", "collect"))
  ap.add_argument("names", nargs="*")
  ap.add_argument("--root", default="runs/siblings")
  a = ap.parse_args()
  os.chdir(REPO)
  if a.what == "commands":
    ev.print_commands(a.names or runs(), a.root, command)
  elif a.what == "run":
    run(a.names or list(runs()), a.root)
  else:
    collect(a.root)


if __name__ == "__main__":
  main()
