"""lottery_jax: lottery jackpots and the lottery-ticket family in JAX/Flax.

`lottery_jax.masks` is the functional mask algebra over pytrees and imports
nothing but JAX; everything else builds on it.
"""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy so `from lottery_jax import masks` stays light (no Flax, no Orbax).
  if name == "load_run":
    from lottery_jax.engine.io import load_run
    return load_run
  if name in ("api", "masks", "models", "data", "search", "engine", "convert", "tickets"):
    import importlib
    return importlib.import_module(f"lottery_jax.{name}")
  raise AttributeError(f"module 'lottery_jax' has no attribute {name!r}")
