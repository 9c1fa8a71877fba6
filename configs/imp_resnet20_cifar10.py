"""IMP with late rewinding on CIFAR-10 ResNet-20, open_lth's `cifar_resnet_20`
recipe: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 160 epochs, lr x0.1
at epochs 80 and 120, flip + pad-4 crop; global magnitude pruning of 20% of the
surviving weights per level, classifier included (open_lth ignores no layer for
ResNets); every level rewound to iteration 500 (open_lth README's example
`--rewinding_steps=500it`; the published stable rewind points are not verified
here); both controls.

  python -m lottery_jax.main \
      --config=configs/imp_resnet20_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/imp_resnet20_cifar10

Without the `:folder=` argument it reads TFDS cifar10. Differences from open_lth:
exact counts `prune_count(1-(1-p)^L, n)` rather than `ceil(p * surviving)` per level;
the zoo's ResNet-20 has option-A (identity, zero-padded) shortcuts where open_lth
has 1x1 convolution projections; CIFAR-10 mean/std normalisation instead of
ImageNet's. 10 levels (about 11% of the weights left).

Measured: the full recipe has not run; its cost on the 2-core CPU is the reason. A
60-step smoke of the same config (2026-12-03; `--config.num_steps=60
--config.imp.levels=1 --config.imp.controls=False --config.imp.rewind_step=20
--config.imp.rewind_epoch=0.0`, on the 10k-image subset zip that `python
benchmarks/imp_results.py subset` writes) ran both stages end to end at about 1.0 s
a step beside another CPU job (0.3-0.65 s quiet, BENCHMARKS.md's ResNet-20 steps), so
one 160-epoch training is 62,560 steps, 5-11 quiet hours, and the 31 trainings (dense,
10 levels, 2 controls each) 7-15 CPU-days. RESULTS.md's CIFAR-10 IMP
evidence uses Conv-2 (`imp_conv_cifar10.py:conv2,...,subset`) instead.

`,subset` after the folder (`:folder=PATH,subset`) is a 2-core CPU scale for the 10k-image
train subset of `python benchmarks/imp_results.py subset`: 4 epochs per training (312
steps, lr x0.1 at 50% and 75%), 3 levels of 50% global pruning, every level rewound to
step 20, both controls (`imp_results.py` runs `imp_cifar10_resnet20_s<seed>`, with
`--config.model.conv=torch`). Measured (2026-12-04, full 10k test set, seeds 0 / 1 / 2,
26 min a seed on the quiet 2-core CPU):

  level  weights left  ticket                 re-init                random pruning
      0       100.00%  45.99 / 50.63 / 45.85  -                      -
      1        50.00%  51.26 / 54.77 / 51.90  45.46 / 47.21 / 46.15  45.73 / 50.92 / 47.60
      2        25.00%  56.27 / 58.02 / 56.94  46.80 / 45.67 / 49.77  46.35 / 49.43 / 43.87
      3        12.50%  58.02 / 59.51 / 59.04  46.80 / 45.54 / 47.74  46.68 / 49.37 / 46.20

The same network trained densely in one run for level 3's cumulative 1,248 steps
(`--config.experiment=train --config.num_epochs=16.0
"--config.optimizer.milestones=(8.0,12.0)"`, runs `dense16_cifar10_resnet20_s<seed>`)
reaches 67.22 / 68.63 / 66.93% (seeds 0 / 1 / 2): the ticket beats its controls and the
equal-per-level dense network, not the longer-trained one (RESULTS.md). Rewound to step
0 instead (`--config.imp.rewind_step=0`, runs `imp_cifar10_resnet20_rw0_s<seed>`, seeds 0,
1, 2) the ticket scores 50.68 / 56.21 / 58.64% (seed 0), 55.07 / 59.44 / 61.41% (seed 1)
and 52.41 / 56.68 / 59.52% (seed 2) at levels 1-3, within -0.6 to +1.9 points of late
rewinding in the same seed: late rewinding is not needed at this scale.
"""

from lottery_jax import recipes


# `,subset` (2-core CPU scale): epochs of the 10k-image subset per training, levels,
# the fraction pruned per level and the rewind step.
SUBSET_EPOCHS = 4.0
SUBSET_LEVELS = 3
SUBSET_PRUNE_FRACTION = 0.5
SUBSET_REWIND_STEP = 20


def get_config(arg: str = ""):
  data_arg, options = recipes.split_options(arg.split(",") if arg else [],
                                            flags=("subset",))
  subset = "subset" in options
  c = recipes.cifar_pretrain(data_arg, model="cifar_resnet20")
  c.experiment = "imp"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = (80, 120)
  c.num_epochs = 160.0

  c.prune_classifier = True
  c.imp.levels = 10
  c.imp.scope = "global"
  c.imp.prune_fraction = 0.2
  c.imp.rewind_step = 500
  c.imp.controls = True
  c.eval_every_epochs = 20.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 1
  if subset:
    # The full recipe's decay points at the same fractions of the shorter training.
    c.optimizer.milestones = tuple(m * SUBSET_EPOCHS / c.num_epochs
                                   for m in c.optimizer.milestones)
    c.num_epochs = SUBSET_EPOCHS
    c.imp.levels = SUBSET_LEVELS
    c.imp.prune_fraction = SUBSET_PRUNE_FRACTION
    c.imp.rewind_step = SUBSET_REWIND_STEP
    c.eval_every_epochs = 0.0
    c.log_every_steps = 50
    c.checkpoint_every_steps = 100
  return c
