"""Lottery jackpot in a torchvision ResNet-50 on ImageNet: 90% sparsity, 30 search
epochs, reference hyperparameters (SGD 0.1, momentum 0.9, wd 1e-4 on the scores,
cosine stepped per epoch, global batch 256 = 16 per device on the 16 chips of a
TPU v4-32 slice; scale per_device_batch_size for other slices).

  python -m lottery_jax.main --config=configs/jackpot_r50.py --workdir=/mnt/shared/runs/r50 \
      --config.pretrained=/path/to/resnet50-0676ba61.pth

ImageNet from TFDS (`tfds build imagenet2012 --file_format=array_record
--manual_dir=...`); on a pod see launch/tpu_pod.sh (multihost=True; the workdir must be a
filesystem every host sees: Filestore/NFS, or a GCS bucket mounted with gcsfuse).
Published (paper): 72.43% top-1 at 90% sparsity after 30 search epochs, 74.62%
with 10 more tuning epochs (set finetune.num_epochs=10).
"""

from lottery_jax import data, recipes
from lottery_jax.engine.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet50"
  c.data = data.default_config("imagenet2012")
  c.data.per_device_batch_size = 16
  c.data.eval_batch_size = 1024
  c.data.num_workers = 8
  c.pretrained = ""   # torchvision weights: set --config.pretrained=...pth
  recipes.jackpot_search(c, sparsity=0.9, weight_decay=1e-4, num_epochs=30.0)
  c.finetune.num_epochs = 0.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 5.0
  c.multihost = False  # launch/tpu_pod.sh sets True on a pod
  return c
