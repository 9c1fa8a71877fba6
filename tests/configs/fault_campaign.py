"""Tiny multi-stage runs of every method for the fault-injection campaign
(tests/test_reliability.py): a few seconds of training each on a digits subset.

  python -m lottery_jax.main --config=tests/configs/fault_campaign.py:<method> --workdir=DIR

<method>: "jackpot" (quickstart: dense pretraining, then a 90% jackpot search),
"imp" (level 0 and one IMP level, rewinding to step 3), "siblings" (one shared
epoch, 2 vmapped siblings, union / intersection / one-shot retrained), "strong"
(a strong ticket in a partially frozen random network, stored as seeds + bits).
"""

import importlib.util
import os

import ml_collections

from lottery_jax import recipes
from lottery_jax.engine.config import base_config

METHODS = ("jackpot", "imp", "siblings", "strong")

# The model and data of tests/configs/tiny_search.py (a config file, loaded by path).
_spec = importlib.util.spec_from_file_location(
    "tiny_search", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_search.py"))
tiny_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_search)


def _tiny(c):
  c = tiny_search.tiny(c)
  c.data.max_eval_examples = 128
  c.checkpoint_every_steps = 4
  c.tensorboard = True
  c.progress_bar = False
  return c


def get_config(method: str = "jackpot"):
  if method == "siblings":
    c = _tiny(recipes.digits_siblings())
    c.siblings.count = 2
    c.siblings.shared_epochs = 1.0
    c.num_epochs = 2.0            # 8 steps per epoch
    c.sparsity = 0.7
    c.optimizer.learning_rate = 0.05
    c.analysis.enabled = False
    return c
  c = _tiny(base_config())
  c.seed = 0
  if method == "jackpot":
    c.experiment = "quickstart"
    recipes.jackpot_search(c, sparsity=0.9, weight_decay=5e-4, num_epochs=1.0,
                           per_epoch=False)
    c.num_steps = 10
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.num_steps = 14
    c.pretrain.optimizer = ml_collections.ConfigDict(
        {"learning_rate": 0.05, "weight_decay": 5e-4})
  elif method == "imp":
    c.experiment = "imp"
    c.num_steps = 10
    c.optimizer.learning_rate = 0.05
    c.imp.levels = 1
    c.imp.prune_fraction = 0.5
    c.imp.rewind_step = 3
    c.imp.controls = False
  elif method == "strong":
    c.experiment = "strong_ticket"
    c.model.weight_init = "kaiming_uniform"
    c.mask.program = "strong_ticket"
    c.sparsity = 0.5
    c.allocation = "uniform"
    c.prune_classifier = True
    c.freeze.prune_fraction = 0.25
    c.freeze.lock_fraction = 0.25
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.num_steps = 14
  else:
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")
  return c
