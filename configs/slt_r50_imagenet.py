"""Strong lottery ticket in a partially frozen random ResNet-50 on ImageNet, sized for
a TPU pod: signed-constant weights (+-sqrt(2/fan_in), edge-popup's best ImageNet
init) never trained, non-affine BatchNorm, every conv and the classifier masked;
70% sparsity (30% of the weights kept, edge-popup's published setting) with 50% of
each layer's weights frozen pruned and 20% locked by ERK, so 70% of the network is
frozen and 30% searched and stored (the paper's "freezing 70%": about 3.3x fewer
stored bits than the dense-source ticket).

  python -m lottery_jax.main --config=configs/slt_r50_imagenet.py \
      --workdir=/mnt/shared/runs/slt_r50

Global batch 256 = 16 per device on the 16 chips of a TPU v4-32 slice (scale
per_device_batch_size for other slices). ImageNet from TFDS (`tfds build imagenet2012
--file_format=array_record --manual_dir=...`); on a pod see launch/tpu_pod.sh
(multihost=True; the workdir must be a filesystem every host sees).
References' training (edge-popup `configs/largescale/subnetonly/resnet50-*`): SGD lr
0.256, momentum 0.875, wd 3.0517578125e-5 on the scores, 5 warmup epochs then cosine,
100 epochs, batch 256. Differences: no label smoothing (the engine's loss has none);
no `dynamic_scaled` rescaling of W_eff by 1/sqrt(layer density); ERK in place of the
frozen-network code's `epl` distribution; top-k per layer.
Published (edge-popup README, dense source, signed constant, 30% kept): 68.6% top-1;
the frozen-network paper's per-table numbers: not verified.

Measured: not run (needs a pod).
"""

from lottery_jax import data, recipes
from lottery_jax.engine.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet50"
  c.model.kwargs = {"bn_affine": False}
  c.data = data.default_config("imagenet2012")
  c.data.per_device_batch_size = 16
  c.data.eval_batch_size = 1024
  c.data.num_workers = 8
  recipes.strong_ticket(c, sparsity=0.7, prune_fraction=0.5, lock_fraction=0.2,
                        distribution="erk", weight_init="signed_constant",
                        learning_rate=0.256, momentum=0.875,
                        weight_decay=3.0517578125e-5)
  c.optimizer.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 5.0
  c.multihost = False  # launch/tpu_pod.sh sets True on a pod
  return c
