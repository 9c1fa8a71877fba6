"""Dense pretraining of CIFAR ResNet-20 (16/32/64, option A) on CIFAR-10, the
recipe of ALGORITHMS.md s.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 160
epochs, lr x0.1 at 80 and 120.

  python -m lottery_jax.main --config=configs/pretrain_resnet20_cifar10.py \
      --workdir=runs/pretrain_resnet20_cifar10

Add `:folder=../shared/datasets/cifar10-jpeg.zip` to the config path to read an
image folder or zip instead of TFDS. Expect about 92% test accuracy.
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  c = recipes.cifar_pretrain(arg, model="cifar_resnet20")
  c.optimizer.weight_decay = 1e-4
  return c
