"""A second cosine cycle (warm restart) for the CIFAR-10 ResNet-20 of
`configs/pretrain_resnet20_cifar10.py` (issue 12).

Cycle 1, 50 epochs of cosine from lr 0.1 (Nesterov, coupled wd 5e-4, batch 128),
ended at 87.89% on the full 10k test set (train-mode accuracy 95.6%, loss 0.13 over
its last 100 steps): three points short of the 91% the searches need. This cycle
starts from cycle 1's weights and BatchNorm statistics with a fresh optimiser and
runs another cosine decay from lr 0.05 over 40 epochs (SGDR-style restart; same
augmentation, weight decay and batch).

  python -m lottery_jax.main \
      --config=configs/pretrain_resnet20_cifar10_restart.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=benchmarks/checkpoints/resnet20_cifar10_restart

`--config.model.conv=torch` runs PyTorch's convolutions (one-device CPU; ~2x faster
here, recorded in config.json). The run is resumable: re-run the command.

Measured (2026-12-02, full 50k train / 10k test, PyTorch's convolutions, resumed
twice): **88.42%** test accuracy (loss 0.381) after 15,600 steps; test accuracy at
epochs 5/10/15/20/30/35: 75.4, 81.8, 82.5, 84.7, 86.6, 88.0; train-mode accuracy over
the last 100 steps 97.1%. Half a point above cycle 1 and still 2.6 points short of
the 91% target (RESULTS.md "Status" discusses why). Its weights are the starting
point of the full-data searches (benchmarks/cifar_results.py, FULL_CKPT).
"""

from lottery_jax import recipes

CYCLE1 = "benchmarks/checkpoints/resnet20_cifar10_full"


def get_config(arg: str = ""):
  c = recipes.cifar_pretrain(arg, model="cifar_resnet20")
  c.pretrained = CYCLE1
  c.optimizer.learning_rate = 0.05
  c.optimizer.schedule = "cosine"
  c.optimizer.milestones = ()
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.num_epochs = 40.0
  c.eval_every_epochs = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 1
  return c
