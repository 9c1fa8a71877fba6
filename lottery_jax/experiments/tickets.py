"""Lottery-ticket experiments as stages of the one engine (ALGORITHMS.md section 3).

* **"imp"**: iterative magnitude pruning with rewinding, as open_lth's `lottery`
  runner does it. Stage `level_0` trains densely and keeps its state at the rewind
  step k (`imp.rewind_step`, or `imp.rewind_epoch` epochs; 0 = the
  initialisation). Stage `level_L` (L = 1..`imp.levels`) takes the mask of IMP
  level L from level L-1 (mask program "imp": prune `imp.prune_fraction` of the
  survivors by level L-1's final |w|, `imp.scope` global or layerwise) and
  retrains from level 0's state at step k: weights and BatchNorm statistics of
  step k, step counter, learning-rate schedule and data order continued, a fresh
  optimiser (open_lth does not rewind momentum). With `imp.controls`, each level
  adds two stages from the same mask:

  - `reinit_L`: the level's mask on a fresh initialisation (seed
    `reinit_seed(config.seed)`), trained from step k with the same data order
    (open_lth's `randomly_reinitialize`);
  - `random_L`: a random mask with the level's per-layer counts (mask program
    "random"), rewound to the same state at step k (`randomly_prune`, layerwise).

  `<workdir>/summary.json` holds `levels` (`level`, `sparsity` = the measured
  fraction of prunable weights pruned, `test_accuracy`, `workdir` relative to the
  run's), `controls.reinit` and `controls.random_prune`, and `correlation` between
  the rewind weights and level 0's final weights (Pearson r over all prunable
  weights, over the last level's kept weights, per layer).

* **"ticket_vs_finetune"**: seed 002's comparison at an equal budget. For each
  learning rate eta (`ticket_vs_finetune.learning_rates`): `lr_<eta>/pretrain`
  trains densely from theta_0 for `num_epochs` to theta_T; the one-shot mask m is
  the `sparsity` magnitude mask of theta_T (`allocation`); three arms train for
  `ticket_vs_finetune.sparse_epochs` (0 = `num_epochs`) at eta: `ticket` (m *
  theta_0, forked from the pretraining's step 0), `reinit` (m * theta_0', a fresh
  initialisation, same data order) and `finetune` (m * theta_T, prune & fine-tune).
  The summary adds Pearson r(theta_0, theta_T) per eta (all, kept, per layer).

Stage configs record only what their stage depends on (`imp.levels` is the
stage's own level; the sweep's `learning_rates` is the stage's own eta), so adding
levels or learning rates to a finished run reuses the finished stages.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from lottery_jax import data as data_lib
from lottery_jax import masks as mask_algebra
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import io, loop
from lottery_jax.engine.checkpoint import Checkpointer
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.stages import Stage, derive, run_stages
from lottery_jax.experiments.registry import register
from lottery_jax.tickets.correlation import weight_correlation
from lottery_jax.tickets.imp import level_sparsity

REINIT_SALT = 1


def reinit_seed(seed: int) -> int:
  """The weight seed of the re-initialisation controls of a run with `seed`."""
  return int(np.random.SeedSequence([int(seed), REINIT_SALT]).generate_state(1)[0] >> 1)


def _data_seed(config) -> int:
  """The data-order seed of `config` (kept when a control changes `config.seed`)."""
  s = int(config.data.get("seed", -1))
  return s if s >= 0 else int(config.seed)


def _need(cond: bool, field: str, value, expected: str, experiment: str) -> None:
  if not cond:
    raise ConfigError(f"config.{field}={value!r} is invalid for experiment "
                      f"{experiment!r}: expected {expected}")


def _steps_per_epoch(config) -> int:
  return data_lib.build(config.data, mesh=loop.make_mesh(), seed=config.seed).steps_per_epoch


def rewind_step(config) -> int:
  """The rewind step k of an IMP config (`imp.rewind_epoch` turned into steps,
  rounded to the nearest step), checked against the schedule's length."""
  imp = config.imp
  if imp.rewind_epoch <= 0 and imp.rewind_step == 0:
    return 0
  steps_per_epoch = None
  if imp.rewind_epoch > 0:
    steps_per_epoch = _steps_per_epoch(config)
    k = int(round(imp.rewind_epoch * steps_per_epoch))
  else:
    k = int(imp.rewind_step)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:
    total = loop.total_steps_of(config, steps_per_epoch or _steps_per_epoch(config))
  field = "imp.rewind_epoch" if imp.rewind_epoch > 0 else "imp.rewind_step"
  _need(k < total, field, imp.rewind_epoch if imp.rewind_epoch > 0 else imp.rewind_step,
        f"a rewind point before the end of the {total}-step schedule (it is step {k})",
        "imp")
  return k


def imp_stages(config, workdir: str) -> list[Stage]:
  """The stages of an IMP run in `workdir` (see the module docstring)."""
  config_lib.validate(config)
  name = "imp"
  _need(isinstance(config.imp.levels, int) and config.imp.levels >= 1, "imp.levels",
        config.imp.levels, "an int >= 1 (the pruning levels after the dense level 0)", name)
  _need(config.siblings.count == 0, "siblings.count", config.siblings.count,
        "0 (the levels fork from one dense run)", name)
  k = rewind_step(config)
  d = lambda stage: os.path.join(workdir, stage)  # noqa: E731

  def base(level: int):
    return derive(config, **{
        "imp.levels": level, "imp.rewind_step": k, "imp.rewind_epoch": 0.0,
        "imp.controls": True, "mask.update_rule": "", "finetune.num_epochs": 0.0,
        "start.weights": True})

  stages = [Stage("level_0", derive(base(0), **{
      "mask.program": "dense", "mask.source": "", "sparsity": 0.0, "rewind_step": k,
      "start.workdir": "", "start.step": -1, "start.optimizer": True}))]
  for level in range(1, config.imp.levels + 1):
    ticket = derive(base(level), **{
        "mask.program": "imp", "mask.source": d(f"level_{level - 1}"),
        "sparsity": level_sparsity(config.imp.prune_fraction, level), "rewind_step": -1,
        "pretrained": "", "start.workdir": d("level_0"), "start.step": k,
        "start.optimizer": False})
    stages.append(Stage(f"level_{level}", ticket))
    if config.imp.controls:
      stages.append(Stage(f"reinit_{level}", derive(ticket, **{
          "mask.program": "given", "mask.source": d(f"level_{level}"),
          "seed": reinit_seed(config.seed), "data.seed": _data_seed(config),
          "start.weights": False})))
      stages.append(Stage(f"random_{level}", derive(ticket, **{
          "mask.program": "random", "mask.source": d(f"level_{level}")})))
  return stages


def _pruned_fraction(summary: dict) -> float:
  return float(summary["sparsity"]["of_pruned_layers"])


def rewind_params(stage_workdir: str, step: int):
  """The params a stage kept at its rewind point `step` (NumPy)."""
  ckpt = Checkpointer(os.path.join(stage_workdir, loop.REWIND_DIR), keep=None,
                      create=False)
  try:
    state, _, _ = ckpt.restore_host(step)
  finally:
    ckpt.close()
  return state["params"]


@register("imp")
def imp(config, workdir: str) -> dict:
  """IMP with rewinding and its two controls; writes `<workdir>/summary.json`."""
  start = time.time()
  stages = imp_stages(config, workdir)
  out = run_stages(stages, workdir)
  k = stages[0].config.rewind_step
  levels, reinit, random_prune = [], [], []
  for s in stages:
    kind, level = s.name.rsplit("_", 1)
    row = {"level": int(level), "sparsity": _pruned_fraction(out[s.name]),
           "test_accuracy": float(out[s.name]["final_eval"]["accuracy"])}
    if kind == "level":
      levels.append({**row, "workdir": s.name})
    else:
      (reinit if kind == "reinit" else random_prune).append(row)
  dense_dir = os.path.join(workdir, "level_0")
  theta_k = rewind_params(dense_dir, k)
  theta_T = io.load_run(dense_dir)["params"]
  last = len(levels) - 1
  masks_by_level = [io.load_run(os.path.join(workdir, f"level_{i}"))["masks"]
                    for i in range(1, last + 1)]
  corr = weight_correlation(theta_k, theta_T, masks_by_level[-1], mask_algebra.prunable)
  corr = {"theta_0": f"level_0 at the rewind step {k}", "theta_T": "level_0 final",
          "kept_mask": f"level_{last}", **corr,
          "kept_by_level": [
              {"level": i + 1, "kept": weight_correlation(theta_k, theta_T, m,
                                                          mask_algebra.prunable)["kept"]}
              for i, m in enumerate(masks_by_level)]}
  summary: dict[str, Any] = {
      "experiment": "imp", "prune_fraction": config.imp.prune_fraction,
      "scope": config.imp.scope, "rewind_step": k,
      "classifier_half_rate": bool(config.imp.classifier_half_rate),
      "levels": levels,
      "controls": {"reinit": reinit, "random_prune": random_prune},
      "correlation": corr,
      "wall_time_s": time.time() - start,
  }
  summary["table"] = imp_table(summary)
  print(summary["table"])
  if io.is_lead():
    io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def imp_table(summary: dict) -> str:
  by_level = {r["level"]: r for r in summary["controls"]["reinit"]}
  rnd = {r["level"]: r for r in summary["controls"]["random_prune"]}
  lines = ["level  sparsity  ticket   reinit   random",
           "-----  --------  -------  -------  -------"]
  for r in summary["levels"]:
    cells = [f"{r['test_accuracy'] * 100:6.2f}%"]
    for table in (by_level, rnd):
      c = table.get(r["level"])
      cells.append(f"{c['test_accuracy'] * 100:6.2f}%" if c else "      -")
    lines.append(f"{r['level']:5d}  {r['sparsity'] * 100:7.2f}%  " + "  ".join(cells))
  corr = summary["correlation"]
  lines.append(f"r(theta_rewind, theta_T): all {_fmt(corr['all'])}, kept by "
               f"{corr['kept_mask']} {_fmt(corr['kept'])}")
  return "\n".join(lines)


def _fmt(r) -> str:
  return "n/a" if r is None else f"{r:.3f}"


# ------------------------------------------------------------- ticket vs fine-tune
def _rate_name(rate: float) -> str:
  return f"lr_{rate:g}"


def ticket_vs_finetune_stages(config, workdir: str) -> list[Stage]:
  """Per learning rate: pretrain, then the ticket, re-init and fine-tune arms."""
  config_lib.validate(config)
  name = "ticket_vs_finetune"
  _need(isinstance(config.sparsity, (int, float)) and 0 < config.sparsity < 1, "sparsity",
        config.sparsity, "the one-shot sparsity in (0, 1)", name)
  _need(config.siblings.count == 0, "siblings.count", config.siblings.count,
        "0 (the arms fork from one dense run)", name)
  rates = tuple(config.ticket_vs_finetune.learning_rates) or (
      float(config.optimizer.learning_rate),)
  sparse_epochs = float(config.ticket_vs_finetune.sparse_epochs or config.num_epochs)
  stages = []
  for rate in rates:
    folder = _rate_name(rate)
    pre_dir = os.path.join(workdir, folder, "pretrain")
    pre = derive(config, **{
        "optimizer.learning_rate": float(rate),
        "ticket_vs_finetune.learning_rates": (float(rate),),
        "ticket_vs_finetune.sparse_epochs": sparse_epochs,
        "mask.program": "dense", "mask.update_rule": "", "mask.source": "",
        "sparsity": 0.0, "rewind_step": 0, "start.workdir": "", "start.step": -1,
        "finetune.num_epochs": 0.0})
    arm = derive(pre, **{"mask.program": "magnitude", "mask.source": pre_dir,
                         "sparsity": float(config.sparsity), "rewind_step": -1,
                         "num_epochs": sparse_epochs})
    stages += [
        Stage(f"{folder}/pretrain", pre),
        Stage(f"{folder}/ticket", derive(arm, **{
            "start.workdir": pre_dir, "start.step": 0, "start.optimizer": False})),
        Stage(f"{folder}/reinit", derive(arm, **{
            "seed": reinit_seed(config.seed), "data.seed": _data_seed(config),
            "pretrained": ""})),
        Stage(f"{folder}/finetune", derive(arm, **{"pretrained": pre_dir})),
    ]
  return stages


@register("ticket_vs_finetune")
def ticket_vs_finetune(config, workdir: str) -> dict:
  """Ticket vs re-init vs prune & fine-tune per learning rate; writes the summary."""
  start = time.time()
  stages = ticket_vs_finetune_stages(config, workdir)
  out = run_stages(stages, workdir)
  rows = []
  for i in range(0, len(stages), 4):
    folder = stages[i].name.split("/")[0]
    rate = stages[i].config.optimizer.learning_rate
    acc = {arm: float(out[f"{folder}/{arm}"]["final_eval"]["accuracy"])
           for arm in ("pretrain", "ticket", "reinit", "finetune")}
    pre_dir = os.path.join(workdir, folder, "pretrain")
    masks = io.load_run(os.path.join(workdir, folder, "ticket"))["masks"]
    corr = weight_correlation(rewind_params(pre_dir, 0), io.load_run(pre_dir)["params"],
                              masks, mask_algebra.prunable)
    rows.append({"learning_rate": rate, "dense_test_accuracy": acc["pretrain"],
                 "ticket": acc["ticket"], "reinit": acc["reinit"],
                 "finetune": acc["finetune"],
                 "sparsity": _pruned_fraction(out[f"{folder}/ticket"]),
                 "workdir": folder, "correlation": corr})
  summary = {"experiment": "ticket_vs_finetune", "sparsity": float(config.sparsity),
             "pretrain_epochs": stages[0].config.num_epochs,
             "sparse_epochs": stages[1].config.num_epochs,
             "num_steps": int(config.num_steps), "by_learning_rate": rows,
             "wall_time_s": time.time() - start}
  summary["table"] = ticket_vs_finetune_table(summary)
  print(summary["table"])
  if io.is_lead():
    io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def ticket_vs_finetune_table(summary: dict) -> str:
  lines = ["lr        dense    ticket   reinit   finetune  r(all)  r(kept)",
           "--------  -------  -------  -------  --------  ------  -------"]
  for r in summary["by_learning_rate"]:
    accs = "  ".join(f"{r[k] * 100:6.2f}%" for k in ("dense_test_accuracy", "ticket",
                                                       "reinit", "finetune"))
    lines.append(f"{r['learning_rate']:<8g}  {accs}   {_fmt(r['correlation']['all']):>6}"
                 f"  {_fmt(r['correlation']['kept']):>7}")
  return "\n".join(lines)
