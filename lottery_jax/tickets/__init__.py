"""Weight-training methods on the engine: pruning & fine-tuning (one-shot
magnitude masks), and next IMP with rewinding and siblings.

Importing the package registers their mask programs with the engine.
"""

from lottery_jax.tickets import pruning  # noqa: F401  (registers the programs)

__all__ = ["pruning"]
