"""Pretrained weights in (PyTorch state dicts) and sparse results out.

* `load_torch_state_dict(path_or_dict, model_name, num_classes)`: torchvision
  ResNet-18/34/50 and MobileNetV2, the lottery-jackpots checkpoints (wide
  ResNet-32, VGG-19, ResNet-50, with their scores/masks), from `.pt`/`.pth`
  (needs torch), `.safetensors` or `.npz`, into `{"params", "batch_stats"}`.
* `export_torch_state_dict(variables, model_name, path, masks=None)`: a
  PyTorch-compatible safetensors state dict with masked weights, and the masks
  bit-packed beside it.
"""

from lottery_jax.convert.pytorch import (TORCH_HINT, export_torch_state_dict,
                                         load_torch_state_dict, read_packed_masks,
                                         read_state_dict, torch_key)

__all__ = ["TORCH_HINT", "export_torch_state_dict", "load_torch_state_dict",
           "read_packed_masks", "read_state_dict", "torch_key"]
