"""Mask programs: what a method declares and the engine runs.

Every method of the library is a choice of

* a **layout**: which leaves carry masks, the exact prune count of each, and an
  optional frozen partition (`masks.freeze`: pruned / locked / searchable);
* an **init**: the masks (and scores) a run starts from;
* **what trains**: the weights (dense training, fine-tuning, IMP, siblings) or
  one score per weight of the masked leaves (jackpots, strong tickets);
* an **update rule**: how masks change after each optimiser step ("fixed",
  "swap" for the jackpot rule with its short restriction, "topk" for edge-popup).

A method registers a program factory under a name (`@register_program("jackpot")`);
the config picks it with `config.mask.program`. Update rules register the same
way (`@register_update_rule`). The engine looks both up by name and holds no
branch on a method: it builds the layout, runs the init, trains what the program
says and calls the update rule inside the jitted step.

This module defines the engine's own programs: "dense" (nothing masked, weights
train) and "given" (masks read from another run, weights train under them, e.g.
the jackpot's "+T" stage and retraining a combined sibling mask), and the rules
"fixed" and "topk".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lottery_jax import masks as mask_algebra
from lottery_jax.engine.errors import ConfigError

TRAINS = ("weights", "scores")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static facts of a run's masks (they shape the compiled step).

  Attributes:
    masked: pytree of Python bools like the params; True on leaves that carry a
      mask (and, when scores train, a score).
    prune_counts: pytree of Python ints: exact number of pruned entries per leaf
      (frozen-pruned entries included).
    sparsities: pytree of Python floats (`prune_count / size`).
    partition: None, or a pytree like the params of int8 `masks.freeze` codes
      (`masks.PRUNED`, `masks.LOCKED`, `masks.SEARCHABLE`), held here as NumPy
      (a host copy: the device copy lives in the train state,
      `TrainState.partition`, and so in every checkpoint).
  """

  masked: Any
  prune_counts: Any
  sparsities: Any
  partition: Any = None

  def __post_init__(self):
    if self.partition is not None:
      object.__setattr__(self, "partition", jax.tree.map(
          lambda c: np.asarray(jax.device_get(c), np.int8), self.partition))

  def to_json(self) -> dict[str, Any]:
    """A JSON description, stored in every checkpoint and compared on resume."""
    counts = {mask_algebra.path_str(p): int(k)
              for p, k in jax.tree_util.tree_flatten_with_path(self.prune_counts)[0]}
    masked = {mask_algebra.path_str(p): bool(m)
              for p, m in jax.tree_util.tree_flatten_with_path(self.masked)[0]}
    out: dict[str, Any] = {"masked": sorted(k for k, v in masked.items() if v),
                           "prune_counts": {k: v for k, v in counts.items() if masked[k]}}
    if self.partition is not None:
      digest = hashlib.sha256()
      for leaf in jax.tree.leaves(self.partition):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
      out["partition_sha256"] = digest.hexdigest()
    return out


def dense_layout(params) -> Layout:
  return Layout(masked=jax.tree.map(lambda _: False, params),
                prune_counts=jax.tree.map(lambda _: 0, params),
                sparsities=jax.tree.map(lambda _: 0.0, params))


def layout_from_sparsities(params, sparsities, where, partition=None) -> Layout:
  """The layout of `where`'s leaves at per-leaf `sparsities` (exact floor counts)."""
  masked = jax.tree_util.tree_map_with_path(lambda p, w: bool(where(p, w)), params)
  sparsities = jax.tree.map(lambda s, m: float(s) if m else 0.0, sparsities, masked)
  counts = mask_algebra.prune_counts(params, sparsities)
  counts = jax.tree.map(lambda k, m: int(k) if m else 0, counts, masked)
  return Layout(masked, counts, sparsities, partition)


def layout_from_masks(masks, where) -> Layout:
  """The layout that `masks` (bool, like the params) have on `where`'s leaves."""
  masked = jax.tree_util.tree_map_with_path(lambda p, m: bool(where(p, m)), masks)
  counts = jax.tree.map(lambda m, f: int(np.size(m) - np.sum(np.asarray(m))) if f else 0,
                        masks, masked)
  sparsities = jax.tree.map(lambda k, m: k / max(np.size(m), 1), counts, masks)
  return Layout(masked, counts, sparsities)


@dataclasses.dataclass(frozen=True)
class Context:
  """What a program's layout and init may look at (no I/O happens in programs).

  Attributes:
    config: the stage's config.
    params: the starting weights (after `config.pretrained` / a fork).
    where: the prunable-leaf predicate of this model and config (classifier and
      `config.exclude` removed unless `config.prune_classifier`).
    key: PRNG key reserved for the program (masks, scores, partitions).
    source: `{"params", "batch_stats", "masks"}` of the run named by
      `config.mask.source` (NumPy), or None.
  """

  config: ml_collections.ConfigDict
  params: Any
  where: Callable
  key: jax.Array
  source: dict | None = None


UpdateFn = Callable[..., tuple[list, list]]


@dataclasses.dataclass(frozen=True)
class MaskProgram:
  """A registered method's mask program (static: it shapes the compiled step).

  Attributes:
    name: registry name (`config.mask.program`).
    trains: "weights" or "scores".
    layout: `layout(ctx) -> Layout`.
    init: `init(ctx, layout) -> (masks, scores)`: bool masks like the params
      (all-True on unmasked leaves) and float32 scores on masked leaves when scores
      train (a scalar 0 placeholder elsewhere, or everywhere when weights train).
    update: the update rule (`UpdateRule`).
    analyses: names of registered analyses (`lottery_jax.engine.analyses`) to run
      on the finished stage.
    params: optional `params(ctx) -> params`: the program's own starting weights,
      with the structure and shapes of `ctx.params` (e.g. strong tickets draw random
      weights from `config.model.weight_init`). `loop.build` calls it before
      `layout` and `init`, which then see the returned weights in `ctx.params`;
      None keeps the model's fresh init (or `config.pretrained`, or a fork's).
  """

  name: str
  trains: str
  layout: Callable[[Context], Layout]
  init: Callable[[Context, Layout], tuple[Any, Any]]
  update: "UpdateRule"
  analyses: tuple[str, ...] = ()
  params: Callable[[Context], Any] | None = None

  def __post_init__(self):
    if self.trains not in TRAINS:
      raise ConfigError(f"mask program {self.name!r}: trains={self.trains!r}, expected one "
                        f"of {TRAINS}")
    if self.update.needs_scores and self.trains != "scores":
      raise ConfigError(f"mask.update_rule={self.update.name!r} changes masks from scores; "
                        f"mask program {self.name!r} trains {self.trains}")

  @property
  def train_scores(self) -> bool:
    return self.trains == "scores"


@dataclasses.dataclass(frozen=True)
class UpdateRule:
  """How masks change after each optimiser step.

  `apply(scores, masks, counts, partitions, step)` gets the masked leaves only, as
  lists (float32 scores, bool masks, Python-int prune counts, int8 partition codes
  or None) and returns `(new_masks, changes)`, `changes[i]` an int32 scalar (the
  number of entries revived in leaf i, which equals the number dropped). `ranked`
  (optional) is the elementwise function of the scores the rule ranks; the train
  step's straight-through estimator runs through it.
  """

  name: str
  apply: UpdateFn | None = None   # None: masks never change
  needs_scores: bool = False
  # What the rule ranks, as a function of the raw scores (None: the scores as they
  # are). The forward's straight-through estimator runs through it, so the scores'
  # gradient is the ranked quantity's: "topk" ranks |score| and, as edge-popup's
  # `GetSubnet.apply(scores.abs())`, gets dL/dS = sign(S) dL/dW_eff W.
  ranked: Callable[[jax.Array], jax.Array] | None = None

  @property
  def changes_masks(self) -> bool:
    return self.apply is not None


# ---------------------------------------------------------------- registries
_PROGRAMS: dict[str, Callable[[ml_collections.ConfigDict, int], MaskProgram]] = {}
_RULES: dict[str, Callable[[ml_collections.ConfigDict, int], UpdateRule]] = {}


def register_program(name: str):
  """Decorator: `factory(config, total_steps) -> MaskProgram` under `name`."""
  def wrap(factory):
    if name in _PROGRAMS:
      raise ValueError(f"mask program {name!r} is registered twice")
    _PROGRAMS[name] = factory
    return factory
  return wrap


def register_update_rule(name: str):
  """Decorator: `factory(config, total_steps) -> UpdateRule` under `name`."""
  def wrap(factory):
    if name in _RULES:
      raise ValueError(f"update rule {name!r} is registered twice")
    _RULES[name] = factory
    return factory
  return wrap


def program_names() -> list[str]:
  return sorted(_PROGRAMS)


def rule_names() -> list[str]:
  return sorted(_RULES)


def get_program(config: ml_collections.ConfigDict, total_steps: int) -> MaskProgram:
  name = config.mask.program
  if name not in _PROGRAMS:
    raise ConfigError(f"config.mask.program={name!r} is unknown; registered mask programs: "
                      f"{program_names()} (a method's program registers when its module is "
                      "imported: run through lottery_jax.experiments, or import lottery_jax.search "
                      "and lottery_jax.tickets)")
  return _PROGRAMS[name](config, total_steps)


def update_rule(config: ml_collections.ConfigDict, total_steps: int, default: str,
                allowed: Sequence[str]) -> UpdateRule:
  """The rule `config.mask.update_rule` names ("" = the program's `default`)."""
  name = config.mask.update_rule or default
  if name not in allowed:
    raise ConfigError(f"config.mask.update_rule={name!r} is invalid for mask program "
                      f"{config.mask.program!r}: expected one of {tuple(allowed)}")
  if name not in _RULES:
    raise ConfigError(f"config.mask.update_rule={name!r} is unknown; registered rules: "
                      f"{rule_names()}")
  return _RULES[name](config, total_steps)


def prunable_where(config: ml_collections.ConfigDict, classifier: Sequence[str]):
  """Leaves a program may mask: `masks.prunable` minus `config.exclude` and, unless
  `config.prune_classifier`, the model's classifier."""
  patterns = list(config.exclude)
  if not config.prune_classifier:
    patterns.append("/".join(classifier))
  else:
    patterns = [p for p in patterns if p not in ("classifier", "/".join(classifier))]
  return mask_algebra.prunable_except(*patterns) if patterns else mask_algebra.prunable


def score_placeholders(params):
  return jax.tree.map(lambda w: jnp.zeros((), jnp.float32), params)


def all_kept(params):
  return jax.tree.map(lambda w: jnp.ones(np.shape(w), bool), params)


# ---------------------------------------------------------------- built-in rules
@register_update_rule("fixed")
def _fixed_rule(config, total_steps):
  del config, total_steps
  return UpdateRule("fixed")


@register_update_rule("topk")
def _topk_rule(config, total_steps):
  """Edge-popup: after each step the mask is the top-(n - k) of |score| (edge-popup
  ranks |S|, `utils/conv_type.py` of allenai/hidden-networks), within the
  searchable entries of the partition: frozen-pruned stay pruned, locked stay kept,
  and the leaf's prune count stays exact. Ties: the lower flat index is pruned
  first (`masks.topk`)."""
  del config, total_steps

  def apply(scores, masks, counts, partitions, step):
    del step
    out, changes = [], []
    for s, m, k, part in zip(scores, masks, counts, partitions):
      new = _topk_leaf(jnp.abs(s), k, part)
      out.append(new)
      changes.append(jnp.sum(new & ~m).astype(jnp.int32))
    return out, changes

  return UpdateRule("topk", apply=apply, needs_scores=True, ranked=jnp.abs)


def _topk_leaf(score, prune_count: int, partition):
  """Top-(n - k) of `score` (ties: lower flat index pruned first), within `partition`."""
  part = None if partition is None else {"s": partition}
  # (k / n) * n is exactly k under the library's count rule (masks.prune_count).
  return mask_algebra.topk({"s": score}, {"s": prune_count / score.size}, partition=part,
                           where=lambda path, leaf: True)["s"]


# ---------------------------------------------------------------- built-in programs
@register_program("dense")
def _dense(config, total_steps):
  """Dense training: nothing masked, the weights train."""
  if config.sparsity:
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid for mask program "
                      "'dense': expected 0 (pick a pruning program, e.g. 'magnitude')")

  def init(ctx, layout):
    del layout
    return all_kept(ctx.params), score_placeholders(ctx.params)

  return MaskProgram("dense", trains="weights", layout=lambda ctx: dense_layout(ctx.params),
                     init=init, update=update_rule(config, total_steps, "fixed", ("fixed",)))


@register_program("given")
def _given(config, total_steps):
  """The masks of the run in `config.mask.source`, frozen; the weights train under
  them (pruned weights held at exactly zero)."""
  if not config.mask.source:
    raise ConfigError("config.mask.source='' is invalid for mask program 'given': expected "
                      "the workdir of a finished run whose masks to train under")

  def layout(ctx):
    return layout_from_masks(_source_masks(ctx), ctx.where)

  def init(ctx, layout):
    del layout
    return _source_masks(ctx), score_placeholders(ctx.params)

  return MaskProgram("given", trains="weights", layout=layout, init=init,
                     update=update_rule(config, total_steps, "fixed", ("fixed",)))


def _source_masks(ctx: Context):
  return jax.tree.map(lambda m: jnp.asarray(m, bool), ctx.source["masks"])


def layout_json_equal(a: dict, b: dict) -> bool:
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
