"""One-shot magnitude pruning, then training the survivors (prune & fine-tune).

Registers the mask program "magnitude": the layout allocates `config.sparsity`
over the prunable leaves (`config.allocation`: global magnitude, uniform or ERK)
of the starting weights; the mask is their magnitude mask (exact floor counts,
ties by flat index, `masks.magnitude`); the weights train under it with pruned
weights held at exactly zero. With `config.mask.source` set, the magnitude is
ranked on that run's final weights instead of the starting ones (prune the end of
one run, train another start: tickets and rewinding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lottery_jax import masks as mask_algebra
from lottery_jax.engine import programs
from lottery_jax.engine.errors import ConfigError


def ranking_params(ctx: programs.Context):
  """The weights whose magnitudes decide the mask: the source run's, else the start."""
  if ctx.source is not None:
    return ctx.source["params"]
  return ctx.params


@programs.register_program("magnitude")
def magnitude_program(config, total_steps: int) -> programs.MaskProgram:
  if not config.sparsity > 0:
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid: expected > 0 for "
                      "mask program 'magnitude' (use 'dense' for no pruning)")

  def layout(ctx: programs.Context) -> programs.Layout:
    ranked = ranking_params(ctx)
    sparsities = mask_algebra.allocate(ranked, config.sparsity, method=config.allocation,
                                       where=ctx.where)
    return programs.layout_from_sparsities(ranked, sparsities, ctx.where)

  def init(ctx: programs.Context, layout: programs.Layout):
    ranked = jax.tree.map(jnp.asarray, ranking_params(ctx))
    masks = mask_algebra.magnitude(ranked, layout.sparsities, where=ctx.where)
    return masks, programs.score_placeholders(ctx.params)

  return programs.MaskProgram(
      "magnitude", trains="weights", layout=layout, init=init,
      update=programs.update_rule(config, total_steps, "fixed", ("fixed",)))
