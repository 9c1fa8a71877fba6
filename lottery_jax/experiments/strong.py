"""The "strong_ticket" experiment: one stage of the "strong_ticket" mask program (edge-
popup over frozen random weights with a frozen partition, `lottery_jax.search.strong`),
then the ticket stored as the paper counts it: `strong_ticket.json` (seeds, init,
partition fractions, architecture) and `strong_ticket.safetensors` (one bit per
searchable entry, BatchNorm statistics), per sibling with a sibling axis. Read it
back with `lottery_jax.search.load_strong_ticket(workdir)`."""

from __future__ import annotations

from lottery_jax.engine.loop import sibling_dir
from lottery_jax.engine.stages import Stage, run_stages
from lottery_jax.experiments.registry import register
from lottery_jax.search import strong


@register("strong_ticket")
def strong_ticket(config, workdir: str) -> dict:
  out = run_stages([Stage("", config)], workdir)
  summary = dict(out[""])
  if config.siblings.count:
    summary["ticket"] = [strong.write_ticket(workdir, sibling_dir(workdir, i))
                         for i in range(config.siblings.count)]
  else:
    summary["ticket"] = strong.write_ticket(workdir)
  return summary
