"""A few-step jackpot search on a small digits subset, for the engine's tests.

  python -m lottery_jax.main --config=tests/configs/tiny_search.py --workdir=/tmp/x \
      --config.pretrained=<a dense run's workdir>
"""

from lottery_jax import data
from lottery_jax.engine.config import base_config


def tiny(c):
  """`c` on the tiny digits CNN and a digits subset, logging often (in place; returns c).
  tests/configs/fault_campaign.py builds on it too."""
  c.model.name = "digits_cnn"
  c.model.kwargs = {"widths": (8, 16, 16)}
  c.data = data.default_config("digits")
  c.data.batch_size = 32
  c.data.eval_batch_size = 128
  c.data.max_train_examples = 256
  c.data.max_eval_examples = 200
  c.log_every_steps = 2
  c.checkpoint_every_steps = 3
  c.analysis.saliency_batches = 1
  c.tensorboard = False
  return c


def get_config():
  c = tiny(base_config())
  c.mask.program = "jackpot"
  c.sparsity = 0.9
  c.mask.update_rule = "swap"
  c.num_steps = 6
  return c
