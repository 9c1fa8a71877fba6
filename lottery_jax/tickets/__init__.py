"""Weight-training methods on the engine: pruning & fine-tuning (one-shot
magnitude masks), iterative magnitude pruning with rewinding and random pruning
(`imp`), and the weight-correlation analysis of seed 002 (`correlation`).

Importing the package registers their mask programs with the engine.
"""

from lottery_jax.tickets import correlation  # noqa: F401
from lottery_jax.tickets import imp  # noqa: F401  (registers "imp" and "random")
from lottery_jax.tickets import pruning  # noqa: F401  (registers "magnitude")
from lottery_jax.tickets import siblings  # noqa: F401  (sibling masks: overlap, union)

__all__ = ["correlation", "imp", "pruning", "siblings"]
