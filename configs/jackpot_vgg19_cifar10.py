"""Lottery jackpot in the reference's CIFAR VGG-19 (BN, single 512 -> 10 classifier),
90% sparsity, 30 search epochs, reference hyperparameters (ALGORITHMS.md s.1).

  python -m lottery_jax.main --config=configs/jackpot_vgg19_cifar10.py \
      --workdir=runs/jackpot_vgg19 --config.pretrained=runs/pretrain_vgg19_cifar10

Data as in jackpot_r32_cifar10.py (TFDS, or `:folder=<path>`).
Published (paper, 30 search epochs): 93.88% top-1 at 90% sparsity.
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  return recipes.cifar_search(arg, model="jackpot_vgg19")
