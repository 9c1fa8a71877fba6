"""Experiments: what `python -m lottery_jax.main` runs, by `config.experiment`.

Each is a few lines over the one engine (`lottery_jax.engine.loop.run`).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable

import ml_collections

from lottery_jax.engine.errors import ConfigError

_EXPERIMENTS: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {}


def register(name: str):
  def wrap(fn):
    _EXPERIMENTS[name] = fn
    return fn
  return wrap


def get(name: str):
  if name not in _EXPERIMENTS:
    raise ConfigError(f"config.experiment={name!r} is unknown; expected one of "
                      f"{sorted(_EXPERIMENTS)}")
  return _EXPERIMENTS[name]


@register("train")
def train(config, workdir: str) -> dict:
  """One run of the engine: dense training, a jackpot search, or fine-tuning; a
  search with `finetune.num_epochs > 0` adds the "+T" stage in `<workdir>/finetune`."""
  from lottery_jax.engine.loop import run
  summary = run(config, workdir)
  if config.train == "scores" and config.finetune.num_epochs > 0:
    tune = finetune_config(config, pretrained=workdir)
    summary["finetune"] = run(tune, os.path.join(workdir, "finetune"))
  return summary


def finetune_config(config, pretrained: str) -> ml_collections.ConfigDict:
  """The "+T" stage: the found mask frozen, surviving weights and BN trained."""
  tune = copy.deepcopy(config)
  with tune.unlocked():
    tune.pretrained = pretrained
    tune.train = "weights"
    tune.mask.update_rule = "fixed"
    tune.mask.from_pretrained = True
    tune.num_epochs = config.finetune.num_epochs
    tune.num_steps = 0
    tune.optimizer.learning_rate = config.finetune.learning_rate
    tune.optimizer.weight_decay = config.finetune.weight_decay
    tune.finetune.num_epochs = 0.0
  return tune


@register("quickstart")
def quickstart(config, workdir: str) -> dict:
  """Dense pretraining, then a jackpot search on the result; prints the table."""
  from lottery_jax.engine.loop import run
  dense_cfg = copy.deepcopy(config)
  with dense_cfg.unlocked():
    dense_cfg.update_from_flattened_dict(_flat(config.pretrain))
    dense_cfg.train = "weights"
    dense_cfg.sparsity = 0.0
    dense_cfg.mask.update_rule = "fixed"
  dense = run(dense_cfg, os.path.join(workdir, "pretrain"))
  search_cfg = copy.deepcopy(config)
  with search_cfg.unlocked():
    search_cfg.pretrained = os.path.join(workdir, "pretrain")
  jackpot = run(search_cfg, os.path.join(workdir, "jackpot"))
  table = quickstart_table(dense, jackpot, config.sparsity)
  print(table)
  out = {"dense": dense["final_eval"], "magnitude_no_search": jackpot["initial_eval"],
         "jackpot": jackpot["final_eval"],
         "iou_with_magnitude": jackpot["mask_analysis"]["iou_magnitude"],
         "sparsity": jackpot["sparsity"]["of_pruned_layers"], "table": table}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


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
