"""Flax (linen) models behind a registry.

Convention for every model: `model.apply(variables, x, train=bool, mutable=...)`,
NHWC input, `variables = {"params": ..., "batch_stats": ...}`. In training mode
BatchNorm uses batch statistics and updates its running averages.
"""

from lottery_jax.models.registry import ModelSpec, get, names, register, spec
from lottery_jax.models import small  # noqa: F401  (registers models)
from lottery_jax.models import cifar  # noqa: F401
from lottery_jax.models import mobilenet  # noqa: F401
from lottery_jax.models import resnet  # noqa: F401
from lottery_jax.models.layers import BatchNorm

__all__ = ["BatchNorm", "ModelSpec", "get", "names", "register", "spec"]
