"""Score-based search over frozen weights.

* `lottery_jax.search.swap`: the jackpot swap rule with its short restriction
  (`swap_update`, `update_masks`) and `schedules` (rate schedules), pure JAX;
* `lottery_jax.search.jackpot`: the "jackpot" mask program, the "swap" update rule
  and the "jackpot_overlap" analysis, registered with the engine on import;
* `lottery_jax.search.strong`: strong tickets (edge-popup over frozen random weights
  with a frozen partition, ALGORITHMS.md section 4): the "strong_ticket" mask
  program, its bit-accounting analyses, `write_ticket` and `load_strong_ticket`.
"""

from lottery_jax.search import jackpot  # noqa: F401  (registers the program)
from lottery_jax.search import strong  # noqa: F401  (registers "strong_ticket")
from lottery_jax.search.schedules import constant_rate, decaying_rate
from lottery_jax.search.strong import load_strong_ticket
from lottery_jax.search.swap import swap_update, update_masks

__all__ = ["constant_rate", "decaying_rate", "jackpot", "load_strong_ticket", "strong",
           "swap_update", "update_masks"]
