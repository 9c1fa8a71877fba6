"""The ticket-vs-fine-tune runs made on a lent GPU (benchmarks/results/gpu_h200/tvf.sh),
as RESULTS.md's markdown tables.

  python benchmarks/tvf_gpu_table.py [--root benchmarks/results/gpu_h200/tvf]

The device script runs each learning rate as its own process, a one-rate
`ticket_vs_finetune` run in `<net>_lr<eta>/` (seed 0) or `<net>_s<seed>_lr<eta>/` (one
table per net and seed), and cuts every process at a time budget, so a run may
lack its top-level summary.json: then the arms that finished are read from their
stages' own summaries (`lr_<eta>/<arm>/summary.json`) and the missing ones are shown as
"not run"; the correlations exist only in a finished run's summary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("pretrain", "ticket", "reinit", "finetune")


def _load(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_run(run_dir: str) -> dict:
  """{eta, sparsity, acc: {arm: accuracy or None}, ticket_start, r_all, r_kept, wall}."""
  eta = float(re.search(r"_lr([0-9.]+)$", run_dir).group(1))
  stage_dir = os.path.join(run_dir, f"lr_{eta:g}")
  stages = {arm: _load(os.path.join(stage_dir, arm, "summary.json")) for arm in ARMS}
  acc = {arm: s["final_eval"]["accuracy"] if s else None for arm, s in stages.items()}
  wall = {arm: s["wall_time_s"] if s else None for arm, s in stages.items()}
  ticket = stages["ticket"]
  out = dict(eta=eta, acc=acc, wall=wall,
             steps=ticket["steps"] if ticket else None,
             epochs=ticket["epochs"] if ticket else None,
             ticket_start=ticket["initial_eval"]["accuracy"] if ticket else None,
             sparsity=ticket["sparsity"]["of_all_weights"] if ticket else None,
             r_all=None, r_kept=None)
  top = _load(os.path.join(run_dir, "summary.json"))
  if top:
    (entry,) = top["by_learning_rate"]
    # The stages' summaries and the run's must agree: one source of numbers.
    for arm, key in (("pretrain", "dense_test_accuracy"), ("ticket", "ticket"),
                     ("reinit", "reinit"), ("finetune", "finetune")):
      assert abs(entry[key] - acc[arm]) < 1e-9, (run_dir, arm, entry[key], acc[arm])
    out["r_all"] = entry["correlation"]["all"]
    out["r_kept"] = entry["correlation"]["kept"]
  return out


def _pct(x):
  return "not run" if x is None else f"{100 * x:.2f}"


def _r(x):
  return "" if x is None else f"{x:.3f}"


def _diff(a, b):
  return "" if a is None or b is None else f"{100 * (a - b):+.2f}"


def table(root: str, net: str) -> str:
  runs = sorted((read_run(d) for d in glob.glob(os.path.join(root, f"{net}_lr*"))
                 if os.path.isdir(d)),
                key=lambda r: r["eta"])
  if not runs:
    return ""
  rows = ["| eta | dense | ticket (before training) | re-init | prune & fine-tune | "
          "ticket - re-init | fine-tune - ticket | r(theta_0, theta_T) all | kept | "
          "s per training |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for r in runs:
    a = r["acc"]
    walls = [w for w in r["wall"].values() if w is not None]
    rows.append(
        f"| {r['eta']:g} | {_pct(a['pretrain'])} | {_pct(a['ticket'])} "
        f"({_pct(r['ticket_start'])}) | {_pct(a['reinit'])} | {_pct(a['finetune'])} | "
        f"{_diff(a['ticket'], a['reinit'])} | {_diff(a['finetune'], a['ticket'])} | "
        f"{_r(r['r_all'])} | {_r(r['r_kept'])} | "
        f"{f'{min(walls):.0f}-{max(walls):.0f}' if walls else ''} |")
  model, seed = re.fullmatch(r"(.*?)(?:_s(\d+))?", net).groups()
  # The heading's numbers come from a ticket stage; a run cut before any has none.
  known = next((r for r in runs if r["sparsity"] is not None), None)
  if known is None:
    head = f"#### {model} on the lent H200 (no ticket stage finished; seed {seed or 0})\n\n"
  else:
    head = (f"#### {model} on the lent H200, {100 * known['sparsity']:.0f}% of all weights "
            f"pruned, equal budget ({known['steps']:,} steps = {known['epochs']:g} epochs "
            f"each; seed {seed or 0})\n\n")
  return head + "\n".join(rows) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "benchmarks", "results", "gpu_h200",
                                                "tvf"))
  args = p.parse_args()
  nets = sorted({os.path.basename(d).rsplit("_lr", 1)[0]
                 for d in glob.glob(os.path.join(args.root, "*_lr*")) if os.path.isdir(d)})
  print("\n".join(t for t in (table(args.root, n) for n in nets) if t))


if __name__ == "__main__":
  main()
