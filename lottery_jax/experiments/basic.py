"""The engine's own experiments: "train" (one stage, plus the optional "+T" stage)
and "quickstart" (dense pretraining, then a jackpot search; the README's main job)."""

from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections

from lottery_jax.engine import io
from lottery_jax.engine.stages import Stage, derive, run_stages
from lottery_jax.experiments.registry import register


@register("train")
def train(config, workdir: str) -> dict:
  """One stage of the engine (dense training, a jackpot search, fine-tuning...) in
  `workdir`; `finetune.num_epochs > 0` adds the "+T" stage in `<workdir>/finetune`."""
  stages = [Stage("", config)]
  if config.finetune.num_epochs > 0:
    stages.append(Stage("finetune", finetune_config(config, source=workdir)))
  out = run_stages(stages, workdir)
  summary = dict(out[""])
  if "finetune" in out:
    summary["finetune"] = out["finetune"]
  return summary


def finetune_config(config, source: str) -> ml_collections.ConfigDict:
  """The "+T" stage: the mask of `source` frozen, surviving weights and BN trained
  (the paper's lr 0.01, wd 0)."""
  return derive(config, **{
      "pretrained": source, "mask.program": "given", "mask.source": source,
      "mask.update_rule": "", "sparsity": 0.0, "num_epochs": config.finetune.num_epochs,
      "num_steps": 0, "optimizer.learning_rate": config.finetune.learning_rate,
      "optimizer.weight_decay": config.finetune.weight_decay, "finetune.num_epochs": 0.0,
      "start.workdir": "", "rewind_step": -1, "stop_epochs": 0.0})


@register("quickstart")
def quickstart(config, workdir: str) -> dict:
  """Dense pretraining, then a jackpot search on the result; prints the table."""
  dense_cfg = copy.deepcopy(config)
  with dense_cfg.unlocked():
    dense_cfg.update_from_flattened_dict(_flat(config.pretrain))
    dense_cfg.mask.program = "dense"
    dense_cfg.mask.update_rule = ""
    dense_cfg.sparsity = 0.0
  search_cfg = derive(config, pretrained=os.path.join(workdir, "pretrain"))
  out = run_stages([Stage("pretrain", dense_cfg), Stage("jackpot", search_cfg)], workdir)
  dense, jackpot = out["pretrain"], out["jackpot"]
  table = quickstart_table(dense, jackpot, config.sparsity)
  print(table)
  summary = {"dense": dense["final_eval"], "magnitude_no_search": jackpot["initial_eval"],
             "jackpot": jackpot["final_eval"],
             "iou_with_magnitude": jackpot["mask_analysis"]["iou_magnitude"],
             "sparsity": jackpot["sparsity"]["of_pruned_layers"], "table": table}
  if io.is_lead():
    io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def quickstart_table(dense: dict, jackpot: dict, sparsity: float) -> str:
  rows = [
      ("dense (pretrained here)", dense["final_eval"]["accuracy"]),
      (f"magnitude-pruned {sparsity:.0%}, no search", jackpot["initial_eval"]["accuracy"]),
      (f"jackpot {sparsity:.0%} ({jackpot['epochs']:.0f} search epochs)",
       jackpot["final_eval"]["accuracy"]),
  ]
  width = max(len(r[0]) for r in rows)
  lines = [f"{'model':<{width}}  test accuracy", f"{'-' * width}  -------------"]
  lines += [f"{name:<{width}}  {acc * 100:12.2f}%" for name, acc in rows]
  ma = jackpot["mask_analysis"]
  lines.append(f"jackpot mask IoU with the magnitude mask: {ma['iou_magnitude']:.3f} "
               f"(random masks at these densities: {ma['iou_chance']:.3f}); "
               f"{ma['fraction_changed_from_init'] * 100:.2f}% of weights changed state")
  return "\n".join(lines)


def _flat(c: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
