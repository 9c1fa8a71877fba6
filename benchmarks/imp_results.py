"""Evidence for the lottery-ticket family (issue 13.5) on embedded data, several seeds.

  python benchmarks/imp_results.py commands          # every run's command line
  python benchmarks/imp_results.py run [NAME ...]    # run them (resumable: finished
                                                     # stages are skipped)
  python benchmarks/imp_results.py collect           # markdown tables + figures
  python benchmarks/imp_results.py store             # copy finished summaries into
                                                     # benchmarks/results/imp/ (committed;
                                                     # `collect` falls back to them)

Runs (workdirs under `--root`, default runs/imp_results):

* `imp_<data>_s<seed>`: configs/imp_quick.py (IMP with rewinding to the
  initialisation, 7 levels of 50% global magnitude pruning, down to 0.8% of the
  weights, with both controls per level: re-initialisation and random pruning at the
  level's per-layer counts);
* `tvf_<data>_s<seed>`: configs/ticket_vs_finetune_quick.py (per learning rate eta:
  dense pretraining theta_0 -> theta_T, the one-shot 95% global magnitude mask, then
  the ticket m*theta_0, a re-initialisation m*theta_0' and prune & fine-tune m*theta_T,
  each trained as long as the pretraining: an equal budget), over eta in
  {0.01, 0.03, 0.1, 0.3}, with Pearson r(theta_0, theta_T).

<data> is `digits` (scikit-learn digits, 360 test images: one image is 0.28 points)
or `mnist1d` (MNIST-1D generated offline, 1,000 test sequences: 0.1 points); seeds 0,
1, 2 (`--config.seed`: the initialisation, the data order and the masks' ties).

* `imp_cifar10_s<seed>`: configs/imp_conv_cifar10.py:conv2,...,subset (Frankle &
  Carbin's Conv-2, Adam 2e-4, batch 60, no augmentation; 600 iterations per training,
  4 levels of 25% of the convolutions / 50% of fc1-fc2 / 25% of the output layer,
  rewound to the initialisation, both controls) on a class-balanced 10k-image CIFAR-10
  train subset (`subset` writes it to runs/cifar/cifar10-train10k.zip from
  ../shared/datasets/cifar10-jpeg.zip, seed 0, 1000 images per class; `run` writes it
  when missing), scored on the full 10k test set (0.01 points per image).
* `imp_cifar10_resnet20_s<seed>`: configs/imp_resnet20_cifar10.py:...,subset (the
  zoo's full-width ResNet-20, open_lth's SGD recipe shortened to 4 epochs of the same
  train subset (312 steps, lr x0.1 at 50% and 75%), 3 levels of 50% global magnitude
  pruning, classifier included, every level rewound to step 20 (late rewinding), both
  controls; PyTorch's CPU convolutions, `--config.model.conv=torch`, opt-in and
  recorded in config.json), scored on the full 10k test set.
* `tvf_cifar10_s<seed>`: configs/ticket_vs_finetune_cifar10.py:conv2,...,subset (the
  same Conv-2 and train subset, no augmentation, SGD with momentum 0.9, wd 5e-4, cosine,
  batch 60; per eta in {0.01, 0.03, 0.1}: 3 epochs of the subset (498 steps) of dense
  pretraining, the one-shot 90% global magnitude mask, then 498 steps of each arm),
  scored on the full 10k test set.

`collect` writes benchmarks/figures/imp_accuracy_vs_sparsity.png,
imp_ticket_vs_finetune.png and imp_correlation_vs_lr.png, and prints the tables and
the per-claim verdicts RESULTS.md quotes. A verdict is a two-sided paired t-test at 5%
over the seeds ("higher" / "lower" / "within noise"); with 3 seeds a difference must
exceed 4.3 standard errors of the mean paired difference.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402  (commands, runs, summaries, mean ± std, verdicts)
from _evidence import REPO, HERE  # noqa: E402
# Finished runs' summary.json files, committed so `collect` works without the runs.
STORE = os.path.join(HERE, "results", "imp")
SEEDS = (0, 1, 2)
DATA = ("digits", "mnist1d")
RATES = (0.01, 0.03, 0.1, 0.3)
CIFAR_SUBSET = os.path.join("runs", "cifar", "cifar10-train10k.zip")


def write_subset() -> None:
  """The 10k-image class-balanced train subset (all 10k test images) of the CIFAR runs."""
  import cifar_results  # noqa: E402  (benchmarks/ is on sys.path)
  path = os.path.join(REPO, CIFAR_SUBSET)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cifar_results.make_subset(os.path.join(REPO, cifar_results.FULL_ZIP), path,
                            train_per_class=1000,
                            test_per_class=0, seed=0)


def runs() -> dict[str, list[str]]:
  out = {}
  for ds in DATA:
    for seed in SEEDS:
      out[f"imp_{ds}_s{seed}"] = [f"--config=configs/imp_quick.py:{ds}",
                                  f"--config.seed={seed}", "--config.progress_bar=False"]
      out[f"tvf_{ds}_s{seed}"] = [
          f"--config=configs/ticket_vs_finetune_quick.py:{ds}", f"--config.seed={seed}",
          f"--config.ticket_vs_finetune.learning_rates=({','.join(map(str, RATES))})",
          "--config.progress_bar=False"]
  for seed in SEEDS:
    out[f"imp_cifar10_s{seed}"] = [
        f"--config=configs/imp_conv_cifar10.py:conv2,folder={CIFAR_SUBSET},subset",
        f"--config.seed={seed}", "--config.progress_bar=False"]
  for seed in SEEDS:   # ResNet-20 with late rewinding (added 2026-12-04)
    out[f"imp_cifar10_resnet20_s{seed}"] = [
        f"--config=configs/imp_resnet20_cifar10.py:folder={CIFAR_SUBSET},subset",
        "--config.model.conv=torch", f"--config.seed={seed}", "--config.progress_bar=False"]
  # The same ResNet-20 runs rewound to step 0 instead of 20 (added 2026-12-04): is late
  # rewinding needed at this scale? (Frankle et al. report it is for ResNet-20 at lr 0.1 at
  # full scale; not verified here.)
  for seed in SEEDS:
    out[f"imp_cifar10_resnet20_rw0_s{seed}"] = [
        f"--config=configs/imp_resnet20_cifar10.py:folder={CIFAR_SUBSET},subset",
        "--config.model.conv=torch", "--config.imp.rewind_step=0", f"--config.seed={seed}",
        "--config.progress_bar=False"]
  # A control for the ResNet-20 tickets' lead over dense (added 2026-12-04): a level-k
  # ticket's mask comes from k trainings of 312 steps, so its training has seen
  # (k+1) x 312 steps in all; this is the dense network trained for level 3's 1,248
  # (16 epochs of the subset, the same schedule shape: lr x0.1 at 50% and 75%).
  for seed in SEEDS:
    out[f"dense16_cifar10_resnet20_s{seed}"] = [
        f"--config=configs/imp_resnet20_cifar10.py:folder={CIFAR_SUBSET},subset",
        "--config.model.conv=torch", "--config.experiment=train",
        "--config.num_epochs=16.0", "--config.optimizer.milestones=(8.0,12.0)",
        f"--config.seed={seed}", "--config.progress_bar=False"]
  # Conv-4 and Conv-6 (added 2026-12-04): the Conv-2 runs' `,subset` scale cut to 2
  # levels (7 trainings; Conv-4 took about 40 minutes a seed).
  for net in ("conv4", "conv6"):
    for seed in SEEDS:
      out[f"imp_cifar10_{net}_s{seed}"] = [
          f"--config=configs/imp_conv_cifar10.py:{net},folder={CIFAR_SUBSET},subset",
          "--config.imp.levels=2", f"--config.seed={seed}", "--config.progress_bar=False"]
  for seed in SEEDS:   # after every IMP run (the order `run` takes)
    out[f"tvf_cifar10_s{seed}"] = [
        f"--config=configs/ticket_vs_finetune_cifar10.py:conv2,folder={CIFAR_SUBSET},subset",
        f"--config.seed={seed}", "--config.progress_bar=False"]
  # VGG-19 and the CIFAR MobileNetV2 (added 2026-12-04): one epoch of the subset per
  # training (78 steps at batch 128), PyTorch's CPU convolutions (a MobileNetV2 training
  # gradient at batch 128 takes 19.4 s with XLA's depthwise convolutions, 2.5 s with
  # PyTorch's; BENCHMARKS.md).
  # MobileNetV2 (run after VGG-19's seed 0) warms up linearly for the first quarter
  # epoch (19 steps): without it VGG-19 ended near chance at eta 0.03 and 0.1, the loss
  # jumping to 3-4.5 in the first steps, so those rates compared nothing.
  for net in ("vgg19", "mobilenet_v2"):
    warmup = ["--config.optimizer.warmup_epochs=0.25"] if net == "mobilenet_v2" else []
    for seed in SEEDS:
      out[f"tvf_cifar10_{net}_s{seed}"] = [
          f"--config=configs/ticket_vs_finetune_cifar10.py:{net},folder={CIFAR_SUBSET},subset",
          "--config.model.conv=torch", *warmup, f"--config.seed={seed}",
          "--config.progress_bar=False"]
  return out


def command(name: str, root: str) -> list[str]:
  return ev.command(runs()[name], root, name)


def store(root: str, name: str) -> None:
  """Copies a finished run's summary.json into STORE (small; committed)."""
  ev.store(root, name, STORE)


def run(names, root: str) -> None:
  if any("cifar10" in n for n in names) and not os.path.exists(os.path.join(REPO, CIFAR_SUBSET)):
    write_subset()
  ev.run(names, root, command, say_done=False, after=store)


def _load(root, name):
  """The run's summary from `root`, else from STORE."""
  return ev.load(name, root, STORE)


def _diff(v) -> str:
  return "-" if v[0] == "-" else f"{100 * v[1]:+.2f} ({v[0]})"


def _seeds(seeds) -> str:
  return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def collect(root: str) -> str:
  plt = ev.pyplot()
  S = {n: _load(os.path.join(REPO, root), n) for n in runs()}
  lines: list[str] = []

  # Only data sets with finished runs get a panel.
  def with_runs(kind: str) -> list[str]:
    """`kind`'s data sets (`imp_<ds>_s<seed>`), in runs() order, that have a finished run."""
    found = [n[len(kind) + 1:].rsplit("_s", 1)[0] for n in S
             if n.startswith(f"{kind}_") and S[n]]
    return list(dict.fromkeys(found)) or [DATA[0]]
  imp_ds, tvf_ds = with_runs("imp"), with_runs("tvf")

  def panels(n: int):
    """A grid of n panels, at most 3 a row; the unused ones hidden."""
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax in axs.flat[n:]:
      ax.set_visible(False)
    return fig, list(axs.flat[:n])

  # ---- IMP: accuracy against sparsity, ticket / re-init / random pruning.
  fig, axs = panels(len(imp_ds))
  for ax, ds in zip(axs, imp_ds):
    seeds = [s for s in SEEDS if S[f"imp_{ds}_s{s}"]]
    summaries = [S[f"imp_{ds}_s{s}"] for s in seeds]
    if not summaries:
      continue
    lines += [f"#### IMP on {ds} ({_seeds(seeds)})",
              "", "| level | weights left | ticket | re-init | random pruning | ticket - re-init | "
              "ticket - random |", "|---|---|---|---|---|---|---|"]
    levels = [r["level"] for r in summaries[0]["levels"]]
    arms = {"ticket": [], "re-init": [], "random pruning": []}
    left = []
    for lv in levels:
      t = [next(r["test_accuracy"] for r in s["levels"] if r["level"] == lv)
           for s in summaries]
      ri = [next((r["test_accuracy"] for r in s["controls"]["reinit"] if r["level"] == lv),
                 None) for s in summaries]
      rp = [next((r["test_accuracy"] for r in s["controls"]["random_prune"]
                  if r["level"] == lv), None) for s in summaries]
      sp = np.mean([next(r["sparsity"] for r in s["levels"] if r["level"] == lv)
                    for s in summaries])
      left.append(100 * (1 - sp))
      for k, v in zip(arms, (t, ri, rp)):
        arms[k].append(ev.stats(v))
      vr = ev.verdict(t, ri) if None not in ri else ("-", np.nan, np.nan)
      vp = ev.verdict(t, rp) if None not in rp else ("-", np.nan, np.nan)
      lines.append(f"| {lv} | {100 * (1 - sp):.2f}% | {ev.pm(t)} | {ev.pm(ri)} | {ev.pm(rp)} | "
                   f"{_diff(vr)} | {_diff(vp)} |")
    lines.append("")
    long = [(s_, S.get(f"dense16_{ds}_s{s_}")) for s_ in SEEDS]
    long = [(s_, x) for s_, x in long if x]
    if long:   # the dense network trained as long as level 3's cumulative training
      acc = [x["final_eval"]["accuracy"] for _, x in long]
      lines += [f"Dense, trained 16 epochs (the {len(levels)} trainings' steps in one run; "
                f"seeds {', '.join(str(s_) for s_, _ in long)}): {ev.pm(acc)}", ""]
      ax.axhline(100 * np.mean(acc), color="gray", ls="-.", lw=1, label="dense, 16 epochs")
    for (label, st), style in zip(arms.items(), ("o-", "s--", "^:")):
      pts = [(x, s) for x, s in zip(left, st) if s is not None]
      if not pts:
        continue
      x = np.array([p[0] for p in pts])
      m = np.array([100 * p[1][0] for p in pts])
      sd = np.nan_to_num(np.array([100 * p[1][1] for p in pts]))
      ax.plot(x, m, style, label=label, ms=4)
      ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights left (%)")
    ax.set_ylabel("test accuracy (%)")
    n = len(summaries)
    ax.set_title(f"IMP, {ds} ({n} seed{'s, mean ± std' if n > 1 else ''})")
    ax.legend()
  ev.savefig(fig, "imp_accuracy_vs_sparsity.png")

  # ---- Ticket vs re-init vs prune & fine-tune at an equal budget; correlation vs eta.
  fig, axs = panels(len(tvf_ds))
  fig2, ax2 = plt.subplots(figsize=(5, 3.6))
  for ax, ds in zip(axs, tvf_ds):
    seeds = [s for s in SEEDS if S[f"tvf_{ds}_s{s}"]]
    summaries = [S[f"tvf_{ds}_s{s}"] for s in seeds]
    if not summaries:
      continue
    sp = summaries[0]["sparsity"]
    lines += [f"#### Ticket vs re-init vs prune & fine-tune on {ds}, {100 * sp:.0f}% sparse, "
              f"equal budget ({summaries[0]['sparse_epochs']:g} "
              f"epoch{'' if summaries[0]['sparse_epochs'] == 1 else 's'} each; "
              f"{_seeds(seeds)})", "",
              "| eta | dense | ticket | re-init | prune & fine-tune | ticket - re-init | "
              "fine-tune - ticket | r(theta_0, theta_T) all | kept |",
              "|---|---|---|---|---|---|---|---|---|"]
    rates = [r["learning_rate"] for r in summaries[0]["by_learning_rate"]]
    series = {k: [] for k in ("dense_test_accuracy", "ticket", "reinit", "finetune")}
    corr_all, corr_kept = [], []
    for rate in rates:
      rows = [next(r for r in s["by_learning_rate"] if r["learning_rate"] == rate)
              for s in summaries]
      vals = {k: [r[k] for r in rows] for k in series}
      for k in series:
        series[k].append(ev.stats(vals[k]))
      ca = [r["correlation"]["all"] for r in rows]
      ck = [r["correlation"]["kept"] for r in rows]
      corr_all.append(ev.stats(ca))
      corr_kept.append(ev.stats(ck))
      v1 = ev.verdict(vals["ticket"], vals["reinit"])
      v2 = ev.verdict(vals["finetune"], vals["ticket"])
      lines.append(
          f"| {rate:g} | {ev.pm(vals['dense_test_accuracy'])} | {ev.pm(vals['ticket'])} | "
          f"{ev.pm(vals['reinit'])} | {ev.pm(vals['finetune'])} | {100 * v1[1]:+.2f} ({v1[0]}) | "
          f"{100 * v2[1]:+.2f} ({v2[0]}) | {ev.pm(ca, 1, 3)} | {ev.pm(ck, 1, 3)} |")
    lines.append("")
    for (k, st), label, style in zip(series.items(),
                                     ("dense", "ticket", "re-init", "prune & fine-tune"),
                                     (":", "o-", "s--", "^-")):
      m = np.array([100 * s[0] for s in st])
      sd = np.nan_to_num(np.array([100 * s[1] for s in st]))
      ax.errorbar(rates, m, yerr=sd, fmt=style, label=label, capsize=3, ms=4)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate eta")
    ax.set_ylabel("test accuracy (%)")
    n = len(summaries)
    ax.set_title(f"{ds}, {100 * sp:.0f}% sparse "
                 f"({n} seed{'s, mean ± std' if n > 1 else ''})")
    ax.legend(fontsize=8)
    for st, label, style in ((corr_all, f"{ds}: all weights", "o-"),
                             (corr_kept, f"{ds}: kept weights", "s--")):
      m = np.array([s[0] for s in st])
      sd = np.nan_to_num(np.array([s[1] for s in st]))
      ax2.errorbar(rates, m, yerr=sd, fmt=style, label=label, capsize=3, ms=4)
  ev.savefig(fig, "imp_ticket_vs_finetune.png")
  ax2.set_xscale("log")
  ax2.set_xlabel("learning rate eta")
  ax2.set_ylabel("Pearson r(theta_0, theta_T)")
  ax2.set_title("Initial vs final weights against eta")
  ax2.legend(fontsize=8)
  ev.savefig(fig2, "imp_correlation_vs_lr.png")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("action", choices=["commands", "run", "collect", "store", "subset"])
  ap.add_argument("names", nargs="*")
  ap.add_argument("--root", default=os.path.join("runs", "imp_results"),
                  help="relative paths are relative to the repository root")
  args = ap.parse_args()
  if args.action == "commands":
    ev.print_commands(ev.select(args.names, runs()), args.root, command)
  elif args.action == "subset":
    write_subset()
  elif args.action == "run":
    run(ev.select(args.names, runs()), args.root)
  elif args.action == "store":
    for name in ev.select(args.names, runs()):
      store(args.root, name)
  else:
    print(collect(args.root))


if __name__ == "__main__":
  main()
