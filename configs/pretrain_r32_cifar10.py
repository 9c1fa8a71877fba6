"""Dense pretraining of the reference's wide ResNet-32 on CIFAR-10 (the starting
point of configs/jackpot_r32_cifar10.py): SGD 0.1, momentum 0.9, wd 5e-4, batch
128, 160 epochs, lr x0.1 at epochs 80 and 120.

  python -m lottery_jax.main --config=configs/pretrain_r32_cifar10.py \
      --workdir=runs/pretrain_r32_cifar10
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  return recipes.cifar_pretrain(arg, model="jackpot_resnet32")
