"""IMP on CIFAR-10 with Frankle & Carbin's (ICLR 2019) Conv-2, Conv-4 or Conv-6:
Adam, batch 60, 20K / 25K / 30K iterations at lr 2e-4 / 3e-4 / 3e-4, layer-wise
pruning per level of 10% of the convolutions, 20% of the dense layers and 10% of
the output layer, every level rewound to the initialisation; both controls.

  python -m lottery_jax.main \
      --config=configs/imp_conv_cifar10.py:conv2,folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/imp_conv2_cifar10

The argument is the net (`conv2`, `conv4`, `conv6`), then optionally `,folder=PATH`
(an image folder or zip; without it TFDS cifar10) and `,subset` (below). No
augmentation, as the paper.
Differences from the paper: exact per-layer counts (`prune_count(1-(1-q)^L, n)`)
instead of rounding each level; CIFAR-10 mean/std normalisation; 15 levels (about
10% of the dense weights and 20% of the convolutions left). The batch of 60 needs a
device count that divides it (1, 2, 3, 4, 6).

`,subset` is the reduced scale RESULTS.md's CIFAR-10 IMP evidence runs on 2 CPU cores
(benchmarks/imp_results.py, runs `imp_cifar10_s<seed>`, on a class-balanced 10k-image
train subset that `imp_results.py subset` writes, scored on the full 10k test set):
600 iterations per training (3.6 epochs of the subset), 4 levels at twice the paper's
rates (25% of the convolutions and the output layer, 50% of fc1/fc2 per level: 6.3%
of the dense weights left at level 4), both controls.

Measured: the full-scale recipe has not run (20K iterations x 46 trainings). `,subset`
(2026-12-03, 2-core CPU, model.conv="auto", 170-340 s a training), seeds 0, 1 and 2,
full 10k test set, mean over the three seeds (RESULTS.md has the spreads and tests):

  level  weights left  ticket  re-init  random pruning
      0       100.00%  54.23%        -               -
      1        50.24%  55.46%   49.98%          49.51%
      2        25.30%  55.58%   44.55%          44.70%
      3        12.78%  54.98%   39.96%          39.76%
      4         6.49%  54.12%   37.48%          36.94%

`conv4,...,subset` and `conv6,...,subset` with `--config.imp.levels=2` (runs
`imp_cifar10_conv4_s<seed>`, `imp_cifar10_conv6_s<seed>`; 2026-12-04, 250-324 s a Conv-4
training and 331-776 s a Conv-6 one on the 2-core CPU, the slower ones beside other
jobs; about 35-40 and 50-60 minutes a seed), full 10k test set; Conv-4 seeds 0 / 1 / 2,
Conv-6 seeds 0 / 1:

  net    level  left     ticket                  re-init                 random pruning
  Conv-4     0  100.00%  55.51 / 54.32 / 53.69%  -                       -
  Conv-4     1   52.70%  56.72 / 56.36 / 54.99%  51.22 / 50.24 / 49.37%  49.30 / 49.10 / 49.88%
  Conv-4     2   28.38%  56.56 / 57.21 / 55.98%  44.92 / 43.90 / 44.09%  45.81 / 43.74 / 43.40%
  Conv-6     0  100.00%  49.82 / 51.13%          -                       -
  Conv-6     1   62.68%  53.23 / 51.25%          45.45 / 47.23%          44.09 / 46.48%
  Conv-6     2   40.85%  54.77 / 53.38%          42.90 / 41.94%          41.77 / 42.65%
"""

from lottery_jax import recipes

# model -> (learning rate, iterations), Frankle & Carbin Figure 2.
PAPER = {"conv2": (2e-4, 20_000), "conv4": (3e-4, 25_000), "conv6": (3e-4, 30_000)}


def get_config(arg: str = "conv2"):
  model, *rest = arg.split(",")
  data_arg, options = recipes.split_options(rest, flags=("subset",))
  subset = "subset" in options
  if model not in PAPER:
    raise ValueError(f"config argument {arg!r}: expected one of {sorted(PAPER)}, "
                     "optionally followed by ',folder=PATH' and ',subset'")
  lr, steps = PAPER[model]
  c = recipes.cifar_pretrain(data_arg, model=model)
  c.experiment = "imp"
  c.data.augment = False
  c.data.batch_size = 60
  c.data.eval_batch_size = 500
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = lr
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.optimizer.milestones = ()
  c.num_steps = steps

  c.prune_classifier = True
  c.imp.levels = 15
  c.imp.scope = "layerwise"
  c.imp.prune_fraction = 0.2                      # the dense layers fc1, fc2
  c.imp.layer_fractions = (("conv", 0.1), ("fc3", 0.1))
  c.imp.rewind_step = 0
  c.imp.controls = True
  c.eval_every_epochs = 0.0
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 1
  if subset:
    c.num_steps = 600
    c.imp.levels = 4
    c.imp.prune_fraction = 0.5
    c.imp.layer_fractions = (("conv", 0.25), ("fc3", 0.25))
    c.log_every_steps = 100
    c.checkpoint_every_steps = 300
  return c
