"""Score-based search over frozen weights.

* `lottery_jax.search.swap`: the jackpot swap rule with its short restriction
  (`swap_update`, `update_masks`) and `schedules` (rate schedules), pure JAX;
* `lottery_jax.search.jackpot`: the "jackpot" mask program, the "swap" update rule
  and the "jackpot_overlap" analysis, registered with the engine on import.
"""

from lottery_jax.search import jackpot  # noqa: F401  (registers the program)
from lottery_jax.search.schedules import constant_rate, decaying_rate
from lottery_jax.search.swap import swap_update, update_masks

__all__ = ["constant_rate", "decaying_rate", "jackpot", "swap_update", "update_masks"]
