"""Ticket vs re-initialisation vs prune & fine-tune at an equal budget (seed 002's
protocol, ALGORITHMS.md section 3) on scikit-learn digits (embedded, no download),
sweeping the learning rate over three values as stages of one run.

Per learning rate: dense pretraining from theta_0 for 8 epochs to theta_T, the
one-shot 95% global magnitude mask m of theta_T, then 8 epochs each of the ticket
(m * theta_0), a re-initialisation (m * theta_0') and prune & fine-tune
(m * theta_T), with Pearson r(theta_0, theta_T) per layer and overall.

  python -m lottery_jax.main --config=configs/ticket_vs_finetune_quick.py \
      --workdir=runs/ticket_vs_finetune_quick

The argument `:mnist1d` swaps in MNIST-1D (generated offline) and its 1-D CNN (batch
128, 30 epochs of pretraining and 30 of each arm); benchmarks/imp_results.py runs it
with several seeds.

Measured (2026-12-02, one process, a 2-core CPU shared with other jobs: 1 min 30 s
wall; seed 0, 360 test images, so one image is 0.28 points):

  lr        dense    ticket   reinit   finetune  r(all)  r(kept)
  0.01       93.61%   90.00%   76.94%   91.94%    0.963    0.975
  0.1        98.06%   97.50%   97.22%   98.61%    0.807    0.863
  0.3        99.17%   98.89%   97.78%   98.33%    0.642    0.771

The correlation of theta_0 and theta_T falls as eta grows; the ticket beats
re-initialisation clearly only at the smallest eta (as Liu et al. claim), and prune &
fine-tune matches or beats the ticket at 0.01 and 0.1 but not at 0.3 (one seed, a
tiny net and data set: no claim about CIFAR-scale behaviour).
"""

from lottery_jax import data, recipes
from lottery_jax.engine.config import base_config


def get_config(arg: str = "digits"):
  c = base_config()
  c.experiment = "ticket_vs_finetune"
  c.seed = 0
  c.model.name = "digits_cnn"
  c.model.kwargs = {"widths": (16, 32, 64)}
  c.data = data.default_config("digits")
  c.data.batch_size = 64

  c.num_epochs = 8.0                     # T, the pretraining
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.sparsity = 0.95
  c.allocation = "global_magnitude"
  c.ticket_vs_finetune.learning_rates = (0.01, 0.1, 0.3)
  c.ticket_vs_finetune.sparse_epochs = 8.0

  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  c.tensorboard = False
  if arg == "mnist1d":
    c.model.kwargs = {}
    c.ticket_vs_finetune.sparse_epochs = 0.0   # = num_epochs, as for digits
  return recipes.embedded_data(c, arg, mnist1d_epochs=30.0)
