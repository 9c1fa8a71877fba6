"""IMP with rewinding on scikit-learn digits (embedded, no download): a dense run,
7 levels pruning half of the surviving weights each (global magnitude), every level
rewound to the initialisation, with both controls per level (random
re-initialisation, random pruning at the same per-layer sparsities).

  python -m lottery_jax.main --config=configs/imp_quick.py --workdir=runs/imp_quick

The argument `:mnist1d` swaps in MNIST-1D (generated offline) and its 1-D CNN (batch
128, 30 epochs per level); benchmarks/imp_results.py runs it with several seeds.

Measured (2026-12-02, one process, XLA's convolutions on a 2-core CPU shared with
other jobs: 2 min 30 s wall, 135 s CPU; seed 0, the 360-image digits test split, so
one image is 0.28 points and a binomial standard error near 98% is about 0.7):

  level  sparsity  ticket   reinit   random
      0     0.00%   98.06%        -        -
      1    50.00%   98.61%   98.06%   98.89%
      2    75.00%   98.61%   99.17%   98.89%
      3    87.50%   99.44%   98.06%   98.61%
      4    93.75%   99.17%   97.22%   98.33%
      5    96.87%   98.33%   97.22%   96.39%
      6    98.43%   98.61%   91.94%   93.06%
      7    99.21%   94.44%   73.06%   51.67%
  r(theta_0, theta_T): all 0.807, on the weights level 7 keeps 0.834

Up to 94% sparsity the three are within noise; from 98% the ticket holds near dense
accuracy while re-initialisation and random pruning fall away (one seed). Re-running
the command returns the finished run; `--config.imp.levels=8` adds level 8 only.
"""

from lottery_jax import data, recipes
from lottery_jax.engine.config import base_config


def get_config(arg: str = "digits"):
  c = base_config()
  c.experiment = "imp"
  c.seed = 0
  c.model.name = "digits_cnn"
  c.model.kwargs = {"widths": (16, 32, 64)}
  c.data = data.default_config("digits")
  c.data.batch_size = 64

  c.num_epochs = 8.0
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"

  c.imp.levels = 7
  c.imp.prune_fraction = 0.5
  c.imp.scope = "global"
  c.imp.rewind_step = 0
  c.imp.controls = True

  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  c.tensorboard = False
  if arg == "mnist1d":
    c.model.kwargs = {}
  return recipes.embedded_data(c, arg, mnist1d_epochs=30.0)
