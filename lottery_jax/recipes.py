"""Shared recipes of the config files (reference hyperparameters, ALGORITHMS.md)."""

from lottery_jax import data
from lottery_jax.engine.config import base_config


def cifar_data(arg: str):
  """CIFAR-10 from TFDS, or from an image folder/zip with the argument `folder=PATH`."""
  if arg.startswith("folder="):
    d = data.default_config("folder")
    d.path = arg.split("=", 1)[1]
    d.preprocess = "cifar"
    d.pad = 4
    d.flip = True
    d.mean = (0.4914, 0.4822, 0.4465)
    d.std = (0.2470, 0.2435, 0.2616)
  elif arg in ("", "tfds"):
    d = data.default_config("cifar10")
  else:
    raise ValueError(f"config argument {arg!r} is unknown; use 'tfds' or 'folder=PATH'")
  d.batch_size = 128
  d.eval_batch_size = 512
  return d


def split_options(parts: list[str], flags: tuple[str, ...] = (),
                  valued: tuple[str, ...] = ()) -> tuple[str, dict]:
  """Splits a config argument's comma-separated `parts` into the data argument that
  `cifar_data` reads (the parts left, joined) and the config's own options: a bare
  `flag` maps to True, `name=value` of a `valued` name to its value string (the last
  one wins)."""
  data_parts, options = [], {}
  for part in parts:
    key, eq, value = part.partition("=")
    if (not eq and key in flags) or (eq and key in valued):
      options[key] = value if eq else True
    else:
      data_parts.append(part)
  return ",".join(data_parts), options


def jackpot_search(c, *, sparsity: float, weight_decay: float, num_epochs: float,
                   per_epoch: bool = True):
  """Sets `c` up as a lottery-jackpot search with the reference's choices: global
  magnitude allocation, magnitude-initialised scores (1.0 / 0.99), the swap rule at
  rate 1, SGD lr 0.1 momentum 0.9 with coupled weight decay on the scores, cosine
  decay (stepped once per epoch in the reference)."""
  c.mask.program = "jackpot"
  c.sparsity = sparsity
  c.allocation = "global_magnitude"
  c.mask.update_rule = "swap"
  c.mask.score_init = "magnitude"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "cosine"
  c.optimizer.per_epoch = per_epoch
  c.num_epochs = num_epochs
  return c


def strong_ticket(c, *, sparsity: float, prune_fraction: float, lock_fraction: float,
                  distribution: str, weight_init: str, learning_rate: float = 0.1,
                  momentum: float = 0.9, weight_decay: float, num_epochs: float = 100.0):
  """Sets `c` up as a strong-ticket search (edge-popup on a partially frozen random
  network, ALGORITHMS.md section 4): weights drawn by `weight_init` and never trained,
  scores trained by SGD with a cosine schedule, top-k of |score| per layer, every layer
  masked (the classifier included, as edge-popup does); `prune_fraction` of each layer
  frozen pruned and `lock_fraction` frozen kept, sparsity and the partition both
  allocated by `distribution` ("uniform" or "erk")."""
  c.experiment = "strong_ticket"
  c.model.weight_init = weight_init
  c.mask.program = "strong_ticket"
  c.sparsity = sparsity
  c.allocation = distribution
  c.prune_classifier = True
  c.freeze.prune_fraction = prune_fraction
  c.freeze.lock_fraction = lock_fraction
  c.freeze.distribution = distribution
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = momentum
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "cosine"
  c.num_epochs = num_epochs
  return c


def cifar_strong_ticket(arg: str, model: str, *, batch_size: int, distribution: str,
                        weight_decay: float):
  """A CIFAR-10 strong-ticket search with the references' small-scale recipe: Kaiming-
  uniform weights, 50% sparsity with 25% frozen pruned and 25% locked, SGD lr 0.1
  momentum 0.9 on the scores, cosine decayed per epoch over 100 epochs."""
  c = base_config()
  c.model.name = model
  c.data = cifar_data(arg)
  c.data.batch_size = batch_size
  strong_ticket(c, sparsity=0.5, prune_fraction=0.25, lock_fraction=0.25,
                distribution=distribution, weight_init="kaiming_uniform",
                weight_decay=weight_decay)
  c.optimizer.per_epoch = True
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 10.0
  return c


def cifar_search(arg: str, model: str):
  c = base_config()
  c.model.name = model
  c.data = cifar_data(arg)
  c.data.batch_size = 256
  jackpot_search(c, sparsity=0.9, weight_decay=5e-4, num_epochs=30.0)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.eval_every_epochs = 5.0
  return c


def cifar_pretrain(arg: str, model: str):
  c = base_config()
  c.model.name = model
  c.data = cifar_data(arg)
  c.mask.program = "dense"
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = (80, 120)
  c.num_epochs = 160.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_epochs = 10.0
  return c


def digits_siblings():
  """The siblings experiment on scikit-learn digits shared by configs/siblings_*.py:
  the digits CNN, batch 64, SGD 0.1 (wd 5e-4, cosine), 15 epochs, S = 4 siblings in
  one vmapped program, 80% sparsity."""
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
  c.siblings.vmap = True
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.tensorboard = False
  return c


def embedded_data(c, arg: str, *, mnist1d_epochs: float):
  """Points `c` at an embedded data set by the config argument: `digits` (scikit-learn
  digits, the digits CNN, batch 64; `c` unchanged) or `mnist1d` (MNIST-1D generated
  offline, its 1-D CNN, batch 128, `mnist1d_epochs` epochs)."""
  if arg not in ("digits", "mnist1d"):
    raise ValueError(f"config argument {arg!r} is unknown; use 'digits' or 'mnist1d'")
  if arg == "mnist1d":
    c.model.name = "mnist1d_cnn"
    c.data = data.default_config("mnist1d")
    c.data.batch_size = 128
    c.num_epochs = mnist1d_epochs
  return c
