"""Small networks: the quickstart CNN on 8x8 digits (more small nets to come)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lottery_jax.models.registry import register


class DigitsCNN(nn.Module):
  """Three 3x3 convs with BatchNorm, global average pooling, a dense classifier."""

  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64, 128)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), use_bias=False, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name=f"bn{i}")(x)
      x = nn.relu(x)
      if i == 0:
        x = nn.max_pool(x, (2, 2), (2, 2)) if x.shape[1] >= 8 else x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="classifier")(x)


@register("digits_cnn", input_shape=(8, 8, 1), classifier=("classifier",), family="small")
def digits_cnn(num_classes: int = 10, **kw):
  return DigitsCNN(num_classes=num_classes, **kw)
