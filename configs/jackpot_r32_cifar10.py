"""Lottery jackpot in the reference's wide CIFAR ResNet-32 (widths 32/64/128),
90% sparsity, 30 search epochs, reference hyperparameters (ALGORITHMS.md s.1).

  python -m lottery_jax.main --config=configs/jackpot_r32_cifar10.py \
      --workdir=runs/jackpot_r32 --config.pretrained=runs/pretrain_r32_cifar10

`pretrained` is a workdir of configs/pretrain_r32_cifar10.py or an original
lottery-jackpots checkpoint (.pt). CIFAR-10 comes from TFDS (prepare it with
`tfds build cifar10 --file_format=array_record`) or, with the config argument
`folder=<path>`, from an image folder or zip:

  --config=configs/jackpot_r32_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip

Published (paper, 30 search epochs): 93.70% top-1 at 90% sparsity.
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  c = recipes.cifar_search(arg, model="jackpot_resnet32")
  return c
