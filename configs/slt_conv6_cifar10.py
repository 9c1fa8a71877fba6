"""Strong lottery ticket in a partially frozen random Conv-6 on CIFAR-10 (Otsuka et al.
with edge-popup as its base, ALGORITHMS.md section 4): Kaiming-uniform weights never
trained, Kaiming-normal scores, top-k of |score| per layer through the STE, every
conv and dense layer masked (classifier included), no BatchNorm (as the references'
Conv-6); 25% of each layer frozen pruned, 25% locked, 50% sparsity (the frozen-network
README's Conv6 example), so half of the weights are searched and stored.

  python -m lottery_jax.main \
      --config=configs/slt_conv6_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/slt_conv6_cifar10

The argument is `folder=PATH` (an image folder or zip) or `tfds`. Other (p, r):
`--config.freeze.prune_fraction=0.5 --config.freeze.lock_fraction=0.0` (the randomly
pruned source), both 0 (the dense source). References' training: SGD lr 0.1,
momentum 0.9, wd 1e-4 on the scores, cosine per epoch, 100 epochs, batch 128.
Differences: top-k per layer (the frozen-network configs use one global threshold,
`global_ep`); Conv-6 here is Frankle & Carbin's with biases, zeroed by the program
(the references' have none); no 80/20 train/val split (the test set is reported at
the end, no best-validation checkpoint).

Measured: not run at this scale (12 s a step on the 2-core CPU). At a quarter of the
width (`--config.model.kwargs="{'widths': (16, 32, 64)}"`), 5,000 training images and
4 epochs (benchmarks/slt_results.py, RESULTS.md "Strong lottery tickets"): 21.0 +- 2.2%
test accuracy (seeds 0, 1) for these fractions, 21.2 +- 3.9% for (0.4, 0), 22.4% for the
dense source (seed 0): far too short a search to learn much.
"""

from lottery_jax import recipes


def get_config(arg: str = "tfds"):
  return recipes.cifar_strong_ticket(arg, "conv6", batch_size=128, distribution="uniform",
                                     weight_decay=1e-4)
