"""CIFAR-10 evidence for RESULTS.md: subset data, pretraining, searches, tables, plots.

  python benchmarks/cifar_results.py subset    # class-balanced subset zip (see below)
  python benchmarks/cifar_results.py commands  # print every run's command line
  python benchmarks/cifar_results.py run NAME [NAME ...]  # run them (resumable)
  python benchmarks/cifar_results.py collect   # tables (markdown) + PNGs in figures/

Everything reads `--zip` (default ../shared/datasets/cifar10-jpeg.zip, CIFAR-10 as
`train|test/<class>/*.jpg`) and writes run workdirs under `--root` (default
runs/cifar, git-ignored). The pretrained ResNet-20 that the searches start from is
committed in benchmarks/checkpoints/resnet20_cifar10 (`run pretrain` + `export`
rebuild it).

Why a subset zip: `data.max_train_examples=N` / `max_eval_examples=N` keep the
*first* N records, and the image-folder source lists records class by class
(airplane first), so on a folder they select 1-2 classes, not a random subset.
`subset` therefore writes a zip with a random, class-balanced subset (fixed seed)
of the train split (1000 per class = 10k images) and of the test split
(500 per class = 5k images); the searches read that zip in full.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402  (commands, runs, summaries, mean ± std)
from _evidence import REPO  # noqa: E402

CKPT = os.path.join("benchmarks", "checkpoints", "resnet20_cifar10")


def make_subset(src: str, dst: str, train_per_class: int, test_per_class: int,
                seed: int = 0) -> None:
  """Writes `dst`, a zip of `train_per_class` / `test_per_class` random images per class."""
  rng = np.random.default_rng(seed)
  with zipfile.ZipFile(src) as zin:
    tree: dict[tuple[str, str], list[str]] = {}
    for name in zin.namelist():
      parts = name.split("/")
      if len(parts) == 3 and parts[2].lower().endswith((".jpg", ".jpeg", ".png")):
        tree.setdefault((parts[0], parts[1]), []).append(name)
    tmp = dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
      for (split, cls), names in sorted(tree.items()):
        k = {"train": train_per_class, "test": test_per_class}.get(split, 0)
        names = sorted(names)
        if k <= 0 or k >= len(names):
          chosen = names
        else:
          chosen = [names[i] for i in sorted(rng.choice(len(names), k, replace=False))]
        for n in chosen:
          zout.writestr(n, zin.read(n))
    os.replace(tmp, dst)
  print(f"wrote {dst}")


# ------------------------------------------------------------------ the runs
FULL_ZIP = "../shared/datasets/cifar10-jpeg.zip"
SUB_ZIP = "runs/cifar/cifar10-sub.zip"
SEARCH_EPOCHS = 1.0   # passes over the 10k-image subset (39 steps of batch 256)


PRETRAIN_EPOCHS = 10.0  # of the full 50k train split (the recipe's 160 do not fit here)


def pretrain_args(zip_path: str) -> list[str]:
  return [f"--config=configs/pretrain_resnet20_cifar10.py:folder={zip_path}",
          f"--config.num_epochs={PRETRAIN_EPOCHS}", "--config.optimizer.schedule=cosine",
          "--config.eval_every_epochs=2.5", "--config.log_every_steps=50",
          "--config.checkpoint_every_steps=200"]


def search_args(sub_zip: str, sparsity: float, epochs: float = SEARCH_EPOCHS,
                eval_every: float = 0.0, extra: tuple[str, ...] = ()) -> list[str]:
  """The reference search recipe on ResNet-20 from the committed checkpoint."""
  return [f"--config=configs/jackpot_r32_cifar10.py:folder={sub_zip}",
          "--config.model.name=cifar_resnet20", f"--config.pretrained={CKPT}",
          f"--config.sparsity={sparsity}", f"--config.num_epochs={epochs}",
          f"--config.eval_every_epochs={eval_every}", "--config.log_every_steps=3",
          "--config.checkpoint_every_steps=12", *extra]


# The engine's "magnitude" program: the same magnitude mask, frozen, weights train (the
# +T hyperparameters: lr 0.01, no weight decay).
FINETUNE = ("--config.mask.program=magnitude", "--config.mask.update_rule=",
            "--config.optimizer.learning_rate=0.01", "--config.optimizer.weight_decay=0.0")
# Dense reference on the same 5k test subset: a weights run at sparsity 0 whose
# initial_eval (taken before its single lr-0 step) is the pretrained network's accuracy.
DENSE = ("--config.mask.program=dense", "--config.mask.update_rule=",
         "--config.optimizer.learning_rate=0.0", "--config.num_steps=1",
         "--config.analysis.enabled=False")
CAP = int(os.environ.get("CIFAR_RESULTS_CAP", "2"))  # max_swaps per layer per step


def runs(sub_zip: str = SUB_ZIP, full_zip: str = FULL_ZIP) -> dict[str, list[str]]:
  return {**subset_runs(sub_zip, full_zip), **full_runs(full_zip), **bn_runs(full_zip)}


def subset_runs(sub_zip: str = SUB_ZIP, full_zip: str = FULL_ZIP) -> dict[str, list[str]]:
  """The reduced-scale runs of RESULTS.md's older sections (10k-image subset)."""
  return {
      "pretrain_resnet20": pretrain_args(full_zip),
      "dense_eval": search_args(sub_zip, 0.0, extra=DENSE),
      "jackpot90": search_args(sub_zip, 0.9, eval_every=0.25),
      "finetune90": search_args(sub_zip, 0.9, extra=FINETUNE),
      "jackpot95": search_args(sub_zip, 0.95, eval_every=0.5),
      "finetune95": search_args(sub_zip, 0.95, extra=FINETUNE),
      # Magnitude mask frozen (update_rule=fixed) but the network still runs in
      # training mode for the same steps: BatchNorm re-estimation alone.
      "bnrecal90": search_args(sub_zip, 0.9, extra=("--config.mask.update_rule=fixed",)),
      "bnrecal95": search_args(sub_zip, 0.95, extra=("--config.mask.update_rule=fixed",)),
      "random90": search_args(sub_zip, 0.9, eval_every=0.25,
                              extra=("--config.mask.score_init=random",)),
      "decay90": search_args(sub_zip, 0.9, extra=("--config.mask.rate_schedule=decay",)),
      f"cap{CAP}_90": search_args(sub_zip, 0.9, extra=(f"--config.mask.max_swaps={CAP}",)),
      # Second seed (data order, augmentation; the magnitude mask is deterministic).
      "jackpot90_s1": search_args(sub_zip, 0.9, extra=("--config.seed=1",)),
      "finetune90_s1": search_args(sub_zip, 0.9, extra=(*FINETUNE, "--config.seed=1")),
      # Three subset epochs (117 steps; the per-epoch cosine gives lr x1, x0.75, x0.25).
      "jackpot90_e3": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5),
      "random90_e3": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5,
                                 extra=("--config.mask.score_init=random",)),
      "finetune90_e3": search_args(sub_zip, 0.9, epochs=3.0, extra=FINETUNE),
      "bnrecal90_e3": search_args(sub_zip, 0.9, epochs=3.0,
                                  extra=("--config.mask.update_rule=fixed",)),
      # The restriction ablation and a second seed at the longer budget.
      "decay90_e3": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5,
                                extra=("--config.mask.rate_schedule=decay",)),
      f"cap{CAP}_90_e3": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5,
                                     extra=(f"--config.mask.max_swaps={CAP}",)),
      "jackpot90_e3_s1": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5,
                                     extra=("--config.seed=1",)),
      "finetune90_e3_s1": search_args(sub_zip, 0.9, epochs=3.0,
                                      extra=(*FINETUNE, "--config.seed=1")),
      # Ten subset epochs (390 steps): does the search keep climbing past fine-tuning?
      "jackpot90_e10": search_args(sub_zip, 0.9, epochs=10.0, eval_every=1.0),
      "finetune90_e10": search_args(sub_zip, 0.9, epochs=10.0, extra=FINETUNE),
      "jackpot90_e3_s2": search_args(sub_zip, 0.9, epochs=3.0, eval_every=0.5,
                                     extra=("--config.seed=2",)),
      "finetune90_e3_s2": search_args(sub_zip, 0.9, epochs=3.0,
                                      extra=(*FINETUNE, "--config.seed=2")),
  }


# ------------------------------------------------------------ full-data runs (issue 12)
# The headline experiment on the full 50k train / 10k test split, from the ResNet-20
# pretrained in two cosine cycles (configs/pretrain_resnet20_cifar10{,_restart}.py).
# Searches: the reference recipe (configs/jackpot_r32_cifar10.py with ResNet-20:
# batch 256, SGD 0.1 momentum 0.9, wd 5e-4 on the scores, cosine stepped per epoch,
# global magnitude allocation, magnitude score init, swap rule at rate 1), 10 full
# epochs (1,950 steps), PyTorch's convolutions (config.model.conv=torch, recorded in
# each run's config.json). Run names "full/<arm><sparsity>_<variant>"; `run full`
# runs them all in FULL_ORDER (resumable: re-run the same command).
FULL_CKPT = os.path.join("benchmarks", "checkpoints", "resnet20_cifar10_restart")
FULL_EPOCHS = 10.0
FULL_SEEDS = (0, 1, 2)


def full_args(full_zip: str, sparsity: float, seed: int, epochs: float = FULL_EPOCHS,
              eval_every: float = 1.0, extra: tuple[str, ...] = ()) -> list[str]:
  return [f"--config=configs/jackpot_r32_cifar10.py:folder={full_zip}",
          "--config.model.name=cifar_resnet20", f"--config.pretrained={FULL_CKPT}",
          "--config.model.conv=torch", f"--config.sparsity={sparsity}",
          f"--config.num_epochs={epochs}", f"--config.eval_every_epochs={eval_every}",
          f"--config.seed={seed}", "--config.log_every_steps=25",
          "--config.checkpoint_every_steps=100", "--config.keep_checkpoints=1",
          "--config.progress_bar=False", *extra]


# magnitude + fine-tuning with the pretraining's own recipe (lr 0.1, wd 5e-4) instead of
# the +T's lr 0.01 / wd 0: the one other learning rate tried (not tuned on the test set).
FINETUNE_LR01 = ("--config.mask.program=magnitude", "--config.mask.update_rule=",
                 "--config.optimizer.learning_rate=0.1", "--config.optimizer.weight_decay=5e-4")


def full_runs(full_zip: str = FULL_ZIP) -> dict[str, list[str]]:
  out: dict[str, list[str]] = {}
  for sp in (90, 95):
    d = sp / 100
    for seed in FULL_SEEDS:
      # Seed 0's jackpot is evaluated every half epoch (the search-cost curve).
      out[f"full/jackpot{sp}_s{seed}"] = full_args(
          full_zip, d, seed, eval_every=0.5 if seed == 0 else 1.0)
      out[f"full/finetune{sp}_s{seed}"] = full_args(full_zip, d, seed, extra=FINETUNE)
    out[f"full/bnrecal{sp}_s0"] = full_args(full_zip, d, 0,
                                            extra=("--config.mask.update_rule=fixed",))
    out[f"full/finetune{sp}_lr0.1_s0"] = full_args(full_zip, d, 0, extra=FINETUNE_LR01)
    # The jackpot, then a short +T stage (1 epoch, lr 0.01, wd 0) in <workdir>/finetune.
    out[f"full/jackpot{sp}_T_s0"] = full_args(full_zip, d, 0,
                                              extra=("--config.finetune.num_epochs=1.0",))
  for seed in FULL_SEEDS:
    # Random score init at the jackpot's budget (search cost at equal budgets).
    out[f"full/random90_s{seed}"] = full_args(
        full_zip, 0.9, seed, eval_every=0.5 if seed == 0 else 1.0,
        extra=("--config.mask.score_init=random",))
  # Random score init run 3x longer: the independent mask for the overlap test.
  out["full/random90_e30_s0"] = full_args(full_zip, 0.9, 0, epochs=30.0,
                                          extra=("--config.mask.score_init=random",))
  return out


# BatchNorm re-estimation on a finished run's final network (diagnosis of jackpot95_s0,
# 2026-12-03: its final eval read 69.25% against 78.58% ten steps earlier). The run's
# exported network (masked weights and BN statistics) is loaded as `pretrained`, then
# half an epoch (98 steps of batch 256, the search's augmented train stream) runs in
# training mode at learning rate 0: weights, masks and BN scale/shift stay bitwise
# as they were, and only the running statistics (PyTorch momentum 0.1) follow the
# final mask. No weight is trained. The controls are networks whose statistics were
# already gathered under their final mask: the dense pretrained network, the fine-tuned
# arms (mask fixed, weights trained) and the BN-re-estimation arms (mask fixed).
BN_REESTIMATE = ("--config.mask.program=dense", "--config.sparsity=0.0",
                 "--config.mask.update_rule=", "--config.optimizer.learning_rate=0.0",
                 "--config.optimizer.weight_decay=0.0", "--config.analysis.enabled=False")
BN_SOURCES = tuple(f"{arm}{sp}_s{s}" for sp in (90, 95) for arm in ("jackpot", "finetune")
                   for s in FULL_SEEDS) + (
    "bnrecal90_s0", "bnrecal95_s0", "random90_s0", "random90_s1", "random90_s2",
    "random90_e30_s0")


def bn_runs(full_zip: str = FULL_ZIP) -> dict[str, list[str]]:
  """`full/bn/<source>`: BN re-estimation of finished run `full/<source>`, and
  `full/bn/dense` of the pretrained network. `{root}` in an argument is the --root."""
  def args(pretrained: str) -> list[str]:
    a = full_args(full_zip, 0.0, 0, epochs=0.5, eval_every=0.0, extra=BN_REESTIMATE)
    return [f"--config.pretrained={pretrained}" if x.startswith("--config.pretrained=")
            else x for x in a]
  out = {"full/bn/dense": args(FULL_CKPT)}
  for src in BN_SOURCES:
    out[f"full/bn/{src}"] = args(os.path.join("{root}", "full", src))
  return out


# The order `run full` takes: one seed of every 90% arm first, then the other seeds.
FULL_ORDER = (
    "full/jackpot90_s0", "full/finetune90_s0", "full/bnrecal90_s0", "full/random90_s0",
    "full/jackpot90_s1", "full/finetune90_s1", "full/jackpot90_s2", "full/finetune90_s2",
    "full/jackpot90_T_s0", "full/finetune90_lr0.1_s0", "full/random90_e30_s0",
    "full/jackpot95_s0", "full/finetune95_s0", "full/bnrecal95_s0",
    "full/jackpot95_s1", "full/finetune95_s1", "full/jackpot95_s2", "full/finetune95_s2",
    "full/jackpot95_T_s0", "full/finetune95_lr0.1_s0",
    "full/random90_s1", "full/random90_s2",
)


def command(name: str, root: str, **kw) -> list[str]:
  return ev.command([a.replace("{root}", root) for a in runs(**kw)[name]], root, name)


def run(names: list[str], root: str, **kw) -> None:
  ev.run(names, root, lambda name, root: command(name, root, **kw))


def export(root: str) -> None:
  """Copies the pretrained run's small files into benchmarks/checkpoints/."""
  src = os.path.join(root, "pretrain_resnet20")
  dst = os.path.join(REPO, CKPT)
  os.makedirs(dst, exist_ok=True)
  for f in ("variables.safetensors", "masks.safetensors", "summary.json", "config.json"):
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
  print(f"copied {src} -> {dst}")


# ---------------------------------------------------------------- collecting
def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars of the TensorBoard event files in `logdir` (TFRecord framing, no TF)."""
  import struct
  from tensorboardX.proto import event_pb2
  out: dict[str, list[tuple[int, float]]] = {}
  if not os.path.isdir(logdir):
    return out
  for fname in sorted(os.listdir(logdir)):
    if "tfevents" not in fname:
      continue
    with open(os.path.join(logdir, fname), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      body = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      ev = event_pb2.Event()
      ev.ParseFromString(body)
      for v in ev.summary.value:
        out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
  return {k: sorted(dict(v).items()) for k, v in out.items()}


def load(root: str, name: str) -> dict | None:
  s = ev.load(name, root)
  if s is None:
    return None
  s["tb"] = read_scalars(os.path.join(root, name, "tensorboard"))
  return s


def eval_curve(s: dict) -> list[tuple[int, float]]:
  """(step, eval accuracy): initial eval, the periodic evals, the final eval."""
  pts = [(0, s["initial_eval"]["accuracy"])] + list(s["tb"].get("eval/accuracy", []))
  pts.append((int(s["steps"]), s["final_eval"]["accuracy"]))
  return sorted(dict(pts).items())


def pct(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def collect(root: str) -> str:
  plt = ev.pyplot()
  S = {n: load(root, n) for n in runs()}
  lines = []
  p = S["pretrain_resnet20"]
  if p:
    lines += ["### Pretraining", "",
              f"ResNet-20, {p['epochs']:.2f} epochs ({p['steps']} steps of 128), "
              f"full 50k train / {p['final_eval']['examples']} test: test accuracy "
              f"**{pct(p['final_eval']['accuracy'])}%** (loss {p['final_eval']['loss']:.4f}), "
              f"wall {p['wall_time_s'] / 60:.1f} min. Test accuracy during training "
              "(step: %): " + ", ".join(f"{st}: {pct(a)}" for st, a in eval_curve(p)) + ".",
              ""]
  dense = S["dense_eval"]["initial_eval"]["accuracy"] if S["dense_eval"] else None
  lines += ["### Jackpots vs magnitude pruning (5k test subset)", "",
            "| sparsity | subset epochs | dense | magnitude, no search | jackpot (search) | "
            "magnitude + BN re-estimation only | magnitude + fine-tune | search steps | "
            "jackpot wall (s) | fine-tune wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for sp, suf in ((90, ""), (95, ""), (90, "_e3"), (90, "_e10")):
    j, ft = S.get(f"jackpot{sp}{suf}"), S.get(f"finetune{sp}{suf}")
    bn = S.get(f"bnrecal{sp}{suf}")
    mag = (j or ft or {}).get("initial_eval", {}).get("accuracy")
    fin = lambda r: pct(r["final_eval"]["accuracy"]) if r else "-"
    wall = lambda r: f"{r['wall_time_s']:.0f}" if r else "-"
    lines.append(f"| {sp}% | {int(suf[2:]) if suf else 1} | {pct(dense)} | {pct(mag)} | {fin(j)} | {fin(bn)} | {fin(ft)} | "
                 f"{j['steps'] if j else '-'} | {wall(j)} | {wall(ft)} |")
  lines.append("")

  # search cost: magnitude vs random scores
  lines += ["### Search cost: magnitude vs random score init (90%)", "",
            "| run | steps | (step: eval accuracy %) | steps for magnitude init to reach "
            "random init's final accuracy |", "|---|---|---|---|"]
  fig, axs = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, suf, title in ((axs[0], "", "1 subset epoch"), (axs[1], "_e3", "3 subset epochs")):
    mag, rnd = S.get(f"jackpot90{suf}"), S.get(f"random90{suf}")
    reach = "-"
    if mag and rnd:
      target = eval_curve(rnd)[-1][1]
      hit = [st for st, a in eval_curve(mag) if a >= target]
      reach = (f"{hit[0]} (of {rnd['steps']}; random init ends at {pct(target)}%; "
               "first eval point at or above it)") if hit else "not reached"
    for name, label in ((f"jackpot90{suf}", "magnitude init"), (f"random90{suf}", "random init")):
      if S.get(name):
        c = eval_curve(S[name])
        lines.append(f"| {label}, {title} | {S[name]['steps']} | "
                     + ", ".join(f"{st}: {pct(a)}" for st, a in c)
                     + f" | {reach if label == 'magnitude init' else ''} |")
        ax.plot([st for st, _ in c], [100 * a for _, a in c], "o-", label=label)
    for name, label, marker in ((f"bnrecal90{suf}", "magnitude mask, BN re-estimated", "s"),
                                (f"finetune90{suf}", "magnitude mask, fine-tuned", "^")):
      if S.get(name):
        ax.plot([S[name]["steps"]], [100 * S[name]["final_eval"]["accuracy"]], marker,
                label=label)
    if dense is not None:
      ax.axhline(100 * dense, color="gray", ls="--", label="dense")
    ax.set_xlabel("search step (batch 256)")
    ax.set_ylabel("test accuracy (%), 5k subset")
    ax.set_title(f"ResNet-20, 90%, {title}")
    ax.legend(fontsize=7)
  ev.savefig(fig, "search_cost.png")
  lines.append("")

  # restriction ablation
  abl = [x for suf, tag in (("", ", 1 subset epoch"), ("_e3", ", 3 subset epochs"))
         for x in ((f"jackpot90{suf}", f"rate 1 (constant){tag}"),
                   (f"decay90{suf}", f"rate decay (power 4){tag}"),
                   (f"cap{CAP}_90{suf}", f"max_swaps={CAP} per layer{tag}"))]
  lines += ["### Short restriction ablation (90%)", "",
            "| rule | final accuracy | final train loss (last interval) | "
            "mean swaps/step: first interval | peak interval | last interval | total swaps |",
            "|---|---|---|---|---|---|---|"]
  fig, axs = plt.subplots(1, 2, figsize=(9, 3.5))
  for name, label in abl:
    # Plot the longer runs when they exist.
    plot = name.endswith("_e3") or not any(n.endswith("_e3") and S.get(n) for n, _ in abl)
    s = S[name]
    if not s:
      continue
    h = s["history"]
    steps = [r["step"] for r in h]
    prev = [0] + steps[:-1]
    total = sum(r["swaps/total"] * (b - a) for r, a, b in zip(h, prev, steps))
    lines.append(f"| {label} | {pct(s['final_eval']['accuracy'])} | "
                 f"{h[-1]['train/loss']:.4f} | {h[0]['swaps/total']:.1f} | "
                 f"{max(r['swaps/total'] for r in h):.1f} | "
                 f"{h[-1]['swaps/total']:.1f} | {total:.0f} |")
    if plot:
      axs[0].plot(steps, [r["train/loss"] for r in h], label=label)
      axs[1].plot(steps, [r["swaps/total"] for r in h], label=label)
  axs[0].set_xlabel("step"); axs[0].set_ylabel("train loss")
  axs[1].set_xlabel("step"); axs[1].set_ylabel("swaps per step (all layers)")
  axs[1].set_yscale("symlog")
  axs[0].legend()
  ev.savefig(fig, "restriction_ablation.png")
  lines.append("")

  # overlap
  keys = ("iou_magnitude", "iou_random", "iou_saliency", "iou_chance",
          "fraction_changed_from_init")
  lines += ["### Mask overlap (IoU of kept weights)", "",
            "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name in ("jackpot90", "jackpot95", "random90", "decay90", f"cap{CAP}_90",
               "jackpot90_e3", "random90_e3", "decay90_e3", f"cap{CAP}_90_e3",
               "jackpot90_e3_s1"):
    s = S[name]
    if s and "mask_analysis" in s:
      m = s["mask_analysis"]
      lines.append(f"| {name} | " + " | ".join(
          f"{m[k]:.4f}" if k in m else "-" for k in keys) + " |")
  lines.append("")
  lines += ["### Seeds (90%, data order and augmentation; the magnitude mask is the same)", "",
            "| method | subset epochs | seed 0 | seed 1 | seed 2 | mean |", "|---|---|---|---|---|---|"]
  for label, ep, names in (
      ("jackpot", 1, ("jackpot90", "jackpot90_s1")),
      ("magnitude + fine-tune", 1, ("finetune90", "finetune90_s1")),
      ("jackpot", 3, ("jackpot90_e3", "jackpot90_e3_s1", "jackpot90_e3_s2")),
      ("magnitude + fine-tune", 3, ("finetune90_e3", "finetune90_e3_s1", "finetune90_e3_s2"))):
    accs = [S[n]["final_eval"]["accuracy"] if S.get(n) else None for n in names]
    accs += [None] * (3 - len(accs))
    done = [a for a in accs if a is not None]
    mean = pct(sum(done) / len(done)) if done else "-"
    lines.append(f"| {label} | {ep} | " + " | ".join(pct(a) for a in accs) + f" | {mean} |")
  lines.append("")
  lines += ["### Every run", "", "| run | initial eval | final eval | steps | wall (s) |",
            "|---|---|---|---|---|"]
  for name, s in S.items():
    if s:
      lines.append(f"| {name} | {pct(s['initial_eval']['accuracy'])} | "
                   f"{pct(s['final_eval']['accuracy'])} | {s['steps']} | "
                   f"{s['wall_time_s']:.0f} |")
  text = "\n".join(lines)
  print(text)
  return text


# ------------------------------------------------------------ full-data collection
def _iou(a, b) -> float:
  """IoU of the kept entries of two mask trees over their common masked leaves."""
  import jax
  inter = union = 0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    if x.all() and y.all():   # leaves nobody prunes (classifier, BN): not searched
      continue
    inter += int(np.sum(x & y))
    union += int(np.sum(x | y))
  return inter / max(union, 1)


def steps_to_reach(curve, target):
  hit = [st for st, a in curve if a >= target]
  return hit[0] if hit else None


def collect_full(root: str, dense: float | None) -> str:
  """Tables and figures of the full-data experiment (issue 12) from what has finished."""
  plt = ev.pyplot()
  S = {n: load(root, n) for n in full_runs()}
  acc = lambda n: S[n]["final_eval"]["accuracy"] if S.get(n) else None  # noqa: E731
  lines = ["### Full data: jackpots against the controls (10 search epochs, full 10k test)",
           "", f"Dense (the pretrained ResNet-20, full test): **{pct(dense)}%**. "
           "Mean ± sample std over seeds (n = number of finished seeds).", "",
           "| sparsity | dense | magnitude, no search | magnitude + BN re-estimation | "
           "jackpot (no weight training) | jackpot + 1-epoch +T | magnitude + fine-tune "
           "(lr 0.01, wd 0) | magnitude + fine-tune (lr 0.1, wd 5e-4) | jackpot - dense |",
           "|---|---|---|---|---|---|---|---|---|"]
  for sp in (90, 95):
    jack = [acc(f"full/jackpot{sp}_s{s}") for s in FULL_SEEDS]
    ft = [acc(f"full/finetune{sp}_s{s}") for s in FULL_SEEDS]
    first = next((S[n] for n in (f"full/jackpot{sp}_s0", f"full/finetune{sp}_s0")
                  if S.get(n)), None)
    mag = first["initial_eval"]["accuracy"] if first else None
    t = S.get(f"full/jackpot{sp}_T_s0")
    plus_t = t["finetune"]["final_eval"]["accuracy"] if t and "finetune" in t else None
    if plus_t is None:   # the workdir's summary.json is the search stage's; +T has its own
      tft = ev.load("finetune", os.path.join(root, f"full/jackpot{sp}_T_s0"))
      if tft is not None:
        plus_t = tft["final_eval"]["accuracy"]
    jack_stats = ev.stats(jack)
    gap = ("-" if jack_stats is None or dense is None
           else f"{100 * (jack_stats[0] - dense):+.2f}")
    lines.append(f"| {sp}% | {pct(dense)} | {pct(mag)} | {pct(acc(f'full/bnrecal{sp}_s0'))} | "
                 f"{ev.pm(jack)} | {pct(plus_t)} | {ev.pm(ft)} | "
                 f"{pct(acc(f'full/finetune{sp}_lr0.1_s0'))} | {gap} |")
  lines.append("")

  # BatchNorm re-estimation of each finished network on its final mask (bn_runs).
  B = {n: load(root, n) for n in bn_runs()}
  rows = [("dense (the pretrained network)", "full/bn/dense")] + [
      (f"full/{src}", f"full/bn/{src}") for src in BN_SOURCES]
  done_rows = [(label, n) for label, n in rows if B.get(n)]
  if done_rows:
    lines += ["### Full data: BatchNorm re-estimation on the final mask", "",
              "Each finished network's running statistics re-estimated on its own final "
              f"mask: {B[done_rows[0][1]]['steps']} steps (half an epoch, batch 256, "
              "augmented train images) in "
              "training mode at learning rate 0, so weights, masks and BN scale/shift are "
              "bitwise unchanged (`full/bn/<run>`, seed 0 data order). Before = the run's "
              "own final evaluation (its exported network), after = the same network with "
              "re-estimated statistics, full 10k test set.", "",
              "| network | before | after | after - before |", "|---|---|---|---|"]
    for label, n in done_rows:
      b, a = B[n]["initial_eval"]["accuracy"], B[n]["final_eval"]["accuracy"]
      lines.append(f"| {label} | {pct(b)} | {pct(a)} | {100 * (a - b):+.2f} |")
    lines.append("")
    bn_acc = lambda src: (B[f"full/bn/{src}"]["final_eval"]["accuracy"]  # noqa: E731
                          if B.get(f"full/bn/{src}") else None)
    lines += ["| sparsity | dense | jackpot, own statistics | jackpot + BN re-estimation "
              "(no weight training) | magnitude + fine-tune (lr 0.01) + BN re-estimation | "
              "paired jackpot+BN - fine-tune+BN |", "|---|---|---|---|---|---|"]
    for sp in (90, 95):
      jb = [bn_acc(f"jackpot{sp}_s{s}") for s in FULL_SEEDS]
      fb = [bn_acc(f"finetune{sp}_s{s}") for s in FULL_SEEDS]
      word, diff, se, npairs = ev.verdict(jb, fb)
      vtxt = ("-" if npairs == 0 else
              f"{100 * diff:+.2f}" + ("" if npairs < 2 else f" ± {100 * se:.2f}")
              + f" (n={npairs}): {word}")
      lines.append(f"| {sp}% | {pct(dense)} | "
                   f"{ev.pm([acc(f'full/jackpot{sp}_s{s}') for s in FULL_SEEDS])} | "
                   f"{ev.pm(jb)} | {ev.pm(fb)} | {vtxt} |")
    lines.append("")

  # Accuracy against search steps, seed bands, dense line.
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, label, color in (("jackpot", "jackpot (scores only)", "C0"),
                            ("finetune", "magnitude + fine-tune", "C1"),
                            ("random", "random-init search", "C2")):
    summaries = [S[n] for n in (f"full/{arm}90_s{s}" for s in FULL_SEEDS) if S.get(n)]
    if not summaries:
      continue
    # Evaluations every half epoch land on step floor(k * 97.5) and every epoch on
    # k * 195: key each point by its half-epoch so that the seeds line up.
    spe = summaries[0]["steps"] / summaries[0]["epochs"]
    curves = [{round(2 * st / spe) / 2: a for st, a in eval_curve(s)} for s in summaries]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    x = [e * spe for e in common]
    vals = np.asarray([[c[e] for e in common] for c in curves]) * 100
    ax.plot(x, vals.mean(0), "o-", ms=3, color=color, label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
      ax.fill_between(x, vals.min(0), vals.max(0), color=color, alpha=0.2)
  if dense is not None:
    ax.axhline(100 * dense, color="gray", ls="--", label="dense")
  ax.set_xlabel("search / fine-tune step (batch 256)")
  ax.set_ylabel("test accuracy (%), full 10k")
  ax.set_title("ResNet-20, CIFAR-10, 90% sparse (band: min-max over seeds)")
  ax.legend(fontsize=7)
  ev.savefig(fig, "full_accuracy_vs_steps.png")

  # Accuracy against sparsity.
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for arm, label in (("jackpot", "jackpot"), ("finetune", "magnitude + fine-tune"),
                     ("bnrecal", "magnitude + BN re-estimation")):
    xs, ms, es = [], [], []
    for sp in (90, 95):
      st = ev.stats([acc(f"full/{arm}{sp}_s{s}") for s in FULL_SEEDS])
      if st is not None:
        m, sd, n = st
        xs.append(sp); ms.append(100 * m); es.append(100 * sd if n > 1 else 0.0)
    if xs:
      ax.errorbar(xs, ms, yerr=es, fmt="o-", capsize=3, label=label)
  if dense is not None:
    ax.axhline(100 * dense, color="gray", ls="--", label="dense")
  ax.set_xlabel("sparsity (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=7)
  ev.savefig(fig, "full_accuracy_vs_sparsity.png")

  # Search cost: steps to reach 95% of the converged random-init accuracy.
  lines += ["### Full data: search cost, magnitude vs random score init (90%)", "",
            "| run | final accuracy | steps to reach 95% of the converged random-init "
            "accuracy |", "|---|---|---|"]
  conv = S.get("full/random90_e30_s0")
  target = 0.95 * conv["final_eval"]["accuracy"] if conv else None
  for name in ("full/jackpot90_s0", "full/random90_s0", "full/random90_e30_s0"):
    if S.get(name):
      reach = steps_to_reach(eval_curve(S[name]), target) if target else None
      lines.append(f"| {name} | {pct(acc(name))} | "
                   f"{'-' if target is None else (reach if reach is not None else 'not reached')} |")
  jm = ev.pm([acc(f"full/jackpot90_s{s}") for s in FULL_SEEDS])
  rm = ev.pm([acc(f"full/random90_s{s}") for s in FULL_SEEDS])
  lines += ["", f"Equal budget (10 epochs): magnitude init {jm}, random init {rm}.",
            f"Target (95% of the 30-epoch random-init accuracy): {pct(target)}.", ""]

  # The independent overlap test.
  lines += ["### Full data: overlap of an independently searched mask (90%)", ""]
  if conv and "mask_analysis" in conv:
    from lottery_jax.engine.io import load_run
    m = conv["mask_analysis"]
    bars = {"magnitude": m["iou_magnitude"], "saliency |g*w|": m.get("iou_saliency"),
            "random mask": m["iou_random"], "chance": m["iou_chance"]}
    if S.get("full/jackpot90_s0"):
      bars["jackpot (seed 0)"] = _iou(load_run(os.path.join(root, "full/random90_e30_s0"))["masks"],
                                      load_run(os.path.join(root, "full/jackpot90_s0"))["masks"])
    lines += ["IoU of the kept weights of the 30-epoch random-init search with:", "",
              "| reference mask | IoU |", "|---|---|"]
    lines += [f"| {k} | {'-' if v is None else f'{v:.4f}'} |" for k, v in bars.items()]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = [k for k, v in bars.items() if v is not None]
    ax.bar(ks, [bars[k] for k in ks], color="C2")
    ax.set_ylabel("IoU with the random-init mask")
    ax.tick_params(axis="x", labelsize=7)
    ev.savefig(fig, "full_overlap.png")
  else:
    lines.append("(full/random90_e30_s0 has not finished)")
  for sp in (90, 95):
    j = S.get(f"full/jackpot{sp}_s0")
    if j and "mask_analysis" in j:
      ma = j["mask_analysis"]
      lines.append(f"- jackpot {sp}% (seed 0): {100 * ma['fraction_changed_from_init']:.2f}% of "
                   f"entries changed from its magnitude init; IoU with the magnitude mask "
                   f"{ma['iou_magnitude']:.4f} (chance {ma['iou_chance']:.4f}).")
  lines.append("")
  lines += ["### Full data: every finished run", "",
            "| run | initial eval | final eval | steps | wall (s) |", "|---|---|---|---|---|"]
  for name in FULL_ORDER:
    s = S.get(name)
    if s:
      lines.append(f"| {name} | {pct(s['initial_eval']['accuracy'])} | "
                   f"{pct(s['final_eval']['accuracy'])} | {s['steps']} | {s['wall_time_s']:.0f} |")
    else:
      lines.append(f"| {name} | not run yet | | | |")
  text = "\n".join(lines)
  print(text)
  return text


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("what", choices=("subset", "commands", "run", "export", "collect",
                                   "collect_full"))
  ap.add_argument("names", nargs="*")
  ap.add_argument("--zip", default=FULL_ZIP)
  ap.add_argument("--sub-zip", default=SUB_ZIP)
  ap.add_argument("--root", default="runs/cifar")
  a = ap.parse_args()
  os.chdir(REPO)
  kw = dict(sub_zip=a.sub_zip, full_zip=a.zip)
  if a.what == "subset":
    os.makedirs(os.path.dirname(a.sub_zip) or ".", exist_ok=True)
    make_subset(a.zip, a.sub_zip, train_per_class=1000, test_per_class=500)
  elif a.what == "commands":
    ev.print_commands(ev.select(a.names, runs()), a.root, lambda name, root: command(name, root, **kw))
  elif a.what == "run":
    names = []
    for n in ev.select(a.names, runs(), aliases=("full", "bn")):
      if n == "full":
        names += list(FULL_ORDER)
      elif n == "bn":   # the re-estimations whose source run has finished
        names += ["full/bn/dense"] + [f"full/bn/{src}" for src in BN_SOURCES
                                      if ev.done(a.root, f"full/{src}")]
      else:
        names.append(n)
    run(names, a.root, **kw)
  elif a.what == "export":
    export(a.root)
  elif a.what == "collect_full":
    pretrained = ev.load(os.path.basename(FULL_CKPT), os.path.dirname(FULL_CKPT))
    collect_full(a.root, None if pretrained is None else pretrained["final_eval"]["accuracy"])
  else:
    collect(a.root)


if __name__ == "__main__":
  main()
