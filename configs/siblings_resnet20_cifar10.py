"""Siblings at the paper's scale (seed 001; ALGORITHMS.md section 2): CIFAR-10
ResNet-20 with open_lth's `cifar_resnet_20` recipe (SGD lr 0.1, momentum 0.9, wd 1e-4,
batch 128, 160 epochs, lr x0.1 at epochs 80 and 120, pad-4 crop + flip), S=10
siblings in one vmapped program, shared epochs k in {0, 1, 2, 5, 10}, one-shot global
magnitude masks at the IMP densities 0.8^L (L = 1..10), union / intersection /
one-shot retrained from theta_k.

  python -m lottery_jax.main \
      --config=configs/siblings_resnet20_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/siblings_r20

Sized for an accelerator: 10 siblings x 160 epochs, plus 3 x 10 retrainings per k.
On a 2-core CPU use fewer (`--config.siblings.count=4 --config.num_epochs=...`); on
several devices spread the siblings with `--config.siblings.mesh_axis=<devices>`
(a divisor of the count). Without `:folder=` it reads TFDS cifar10.
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  c = recipes.cifar_pretrain(arg, model="cifar_resnet20")
  c.experiment = "siblings"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = (80, 120)
  c.optimizer.decay_factor = 0.1
  c.data.batch_size = 128
  c.num_epochs = 160.0
  c.siblings.count = 10
  c.siblings.shared_epochs_sweep = (0.0, 1.0, 2.0, 5.0, 10.0)
  c.siblings.sparsities = tuple(round(1 - 0.8 ** level, 6) for level in range(1, 11))
  c.sparsity = c.siblings.sparsities[0]
  c.eval_every_epochs = 20.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
