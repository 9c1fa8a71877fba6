"""Lottery jackpot in a torchvision ResNet-50 on ImageNet: 90% sparsity, 30 search
epochs, reference hyperparameters (SGD 0.1, momentum 0.9, wd 1e-4 on the scores,
cosine stepped per epoch, global batch 256 = 8 per device on a v4-32's 32 chips).

  python -m lottery_jax.main --config=configs/jackpot_r50.py --workdir=gs://.../r50 \
      --config.pretrained=/path/to/resnet50-0676ba61.pth

ImageNet from TFDS (`tfds build imagenet2012 --file_format=array_record
--manual_dir=...`); on a pod see launch/tpu_pod.sh (multihost=True).
Published (paper): 72.43% top-1 at 90% sparsity after 30 search epochs, 74.62%
with 10 more tuning epochs (set finetune.num_epochs=10).
"""

from lottery_jax import data
from lottery_jax.engine.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet50"
  c.data = data.default_config("imagenet2012")
  c.data.per_device_batch_size = 8
  c.data.eval_batch_size = 1024
  c.data.num_workers = 8
  c.pretrained = ""   # torchvision weights: set --config.pretrained=...pth
  c.train = "scores"
  c.sparsity = 0.9
  c.allocation = "global_magnitude"
  c.mask.update_rule = "swap"
  c.mask.score_init = "magnitude"
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.per_epoch = True
  c.num_epochs = 30.0
  c.finetune.num_epochs = 0.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 5.0
  c.multihost = False  # launch/tpu_pod.sh sets True on a pod
  return c
