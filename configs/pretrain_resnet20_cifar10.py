"""Dense pretraining of CIFAR ResNet-20 (16/32/64, option A) on the full CIFAR-10
train split, sized for a 2-core CPU (issue 12): SGD lr 0.1, momentum 0.9 (Nesterov),
coupled weight decay 5e-4, batch 128, 50 epochs, cosine decay every step, pad-4
crop + flip. He et al.'s recipe (160 epochs, wd 1e-4, lr x0.1 at 80/120) reaches
91.25%; the short cosine schedule with the larger weight decay is meant to reach
>= 91% in a third of the epochs.

  python -m lottery_jax.main \
      --config=configs/pretrain_resnet20_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=benchmarks/checkpoints/resnet20_cifar10_full

Without the `:folder=` argument it reads TFDS cifar10. Measured (2026-12-02, full
50k train / 10k test; PyTorch's convolutions from step 18,200, before that the code's
default "auto" lowering, which picked PyTorch's in a one-device process): **87.89%**
test accuracy (loss 0.388) after 19,500 steps; test accuracy at epochs 5/10/.../45:
70.7, 71.9, 77.2, 74.8, 79.1, 81.0, 83.0, 85.7, 87.5. Short of the 91% target:
`configs/pretrain_resnet20_cifar10_restart.py` continues it with a second cosine cycle
(88.42%). The zip is JPEG quality 75 with 4:2:0 chroma; one more step of compression
(75 -> 50) costs this network 2.2 points at 10 epochs (benchmarks/jpeg_quality.py), so
91.25% on lossless images plausibly reads 89-90% on the zip: an extrapolation, argued
in RESULTS.md's status.
The run is resumable: re-run the command.
"""

from lottery_jax import recipes


def get_config(arg: str = ""):
  c = recipes.cifar_pretrain(arg, model="cifar_resnet20")
  c.optimizer.schedule = "cosine"
  c.optimizer.milestones = ()
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.num_epochs = 50.0
  c.eval_every_epochs = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 1
  return c
