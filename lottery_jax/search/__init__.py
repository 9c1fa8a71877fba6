"""Score-based search: the jackpot swap rule with its short restriction, and the
jackpot's initialisation and analysis (`lottery_jax.search.jackpot`)."""

from lottery_jax.search.swap import swap_update, update_masks

__all__ = ["swap_update", "update_masks"]
