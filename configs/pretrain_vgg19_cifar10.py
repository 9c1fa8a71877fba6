"""Dense pretraining of the reference's CIFAR VGG-19 (BN) on CIFAR-10: SGD 0.1,
momentum 0.9, wd 5e-4, batch 128, 160 epochs, lr x0.1 at epochs 80 and 120.

  python -m lottery_jax.main --config=configs/pretrain_vgg19_cifar10.py \
      --workdir=runs/pretrain_vgg19_cifar10
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  return recipes.cifar_pretrain(arg, model="jackpot_vgg19")
