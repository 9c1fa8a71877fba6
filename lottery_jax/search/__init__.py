"""Score-based search: the jackpot swap rule with its short restriction
(`swap_update`, `update_masks`, rate schedules), and the jackpot's initialisation
and analysis (`lottery_jax.search.jackpot`)."""

from lottery_jax.search.schedules import constant_rate, decaying_rate
from lottery_jax.search.swap import swap_update, update_masks

__all__ = ["constant_rate", "decaying_rate", "swap_update", "update_masks"]
