"""The config schema shared by every experiment, and its validation.

Config files start from `base_config()` and change what they need; every field is
overridable on the command line (`--config.sparsity=0.95`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import ml_collections

from lottery_jax.engine.errors import ConfigError

# Fields that may change between a run and its resumption without changing results.
RESUME_NEUTRAL = (
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "checkpoint_release_memory", "malloc_arena_max", "progress_bar",
    "allow_config_change", "data.num_workers", "analysis.saliency_batches",
    "tensorboard",
)

ALLOCATIONS = ("global_magnitude", "uniform", "erk")
SCORE_INITS = ("magnitude", "abs", "random")
RATE_SCHEDULES = ("constant", "decay")
IMP_SCOPES = ("global", "layerwise")
CONV_IMPLS = ("xla", "torch", "unrolled")
WEIGHT_INITS = ("", "kaiming_uniform", "kaiming_normal", "signed_constant")
FREEZE_DISTRIBUTIONS = ("uniform", "erk")
OPTIMIZERS = ("sgd", "adamw")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "train"        # registered experiment (lottery_jax.experiments)
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "digits_cnn"
  c.model.kwargs = ml_collections.ConfigDict()
  # Convolution lowering (lottery_jax.models.conv): "xla" everywhere by default;
  # "torch" (PyTorch's oneDNN convolutions as XLA:CPU custom calls) is an opt-in
  # for one-device CPU processes, recorded here and checked on resume like any field.
  # "unrolled" (opt-in, for siblings on a CPU): XLA's convolutions, but under the
  # sibling axis's vmap one ordinary convolution per copy instead of one grouped
  # convolution (benchmarks/siblings.py measures both on the CPU).
  c.model.conv = "xla"
  # Random starting weights drawn by a program that asks for them (strong tickets,
  # lottery_jax.search.strong): "" = the model's own init; "kaiming_uniform"
  # U(+-sqrt(6/fan_in)), "kaiming_normal" N(0, 2/fan_in), "signed_constant"
  # +-sqrt(2/fan_in) with random signs.
  c.model.weight_init = ""

  c.data = ml_collections.ConfigDict()  # filled from lottery_jax.data.default_config(name)

  # Where the starting weights come from: "" (fresh init), a run's workdir, or a
  # checkpoint file (.pt/.pth torch, .safetensors, .npz).
  c.pretrained = ""
  c.search_random_weights = False  # allow a jackpot search without pretrained weights
                                   # (strong tickets); jackpots need pretrained ones

  # What the run does with masks: a registered mask program (lottery_jax.engine.
  # programs): "dense", "given" (masks of `mask.source`, weights train), and the
  # methods' own (lottery_jax.search: "jackpot"; lottery_jax.tickets: "magnitude").
  c.mask = ml_collections.ConfigDict()
  c.mask.program = "dense"
  c.mask.update_rule = ""       # "" = the program's default; "fixed", "swap", "topk"
  c.mask.source = ""            # a finished run's workdir whose masks a program reads,
                                # or a .safetensors file of packed masks (io.save_masks)
  c.mask.score_init = "magnitude"  # "magnitude" (1.0 kept / 0.99 pruned), "abs", "random"
  c.mask.rate = 1.0             # swap-rule rate in (0, 1]: 1 reproduces the reference
  c.mask.rate_schedule = "constant"  # or "decay": rate * (1 - t/T)^power
  c.mask.rate_power = 4.0
  c.mask.max_swaps = 0          # cap on swaps per layer per step; 0 = no cap

  c.sparsity = 0.0              # global target sparsity of the masked leaves
  c.allocation = "global_magnitude"
  c.exclude = ("classifier",)   # path patterns never pruned (the model's classifier
                                # is added automatically unless prune_classifier)
  c.prune_classifier = False

  # Where the stage starts: a full checkpoint of another stage (params, BatchNorm
  # statistics, step, data position, RNG, and the optimiser state unless
  # `start.optimizer=False`). `start.step`: -1 = that stage's latest checkpoint, k =
  # its kept checkpoint or rewind point at step k.
  c.start = ml_collections.ConfigDict()
  c.start.workdir = ""
  c.start.step = -1
  c.start.optimizer = True
  c.start.weights = True        # False: keep this stage's own starting weights and
                                # BatchNorm statistics (fresh init, or `pretrained`) and
                                # take only step, data position and RNG (and the
                                # optimiser, per start.optimizer) from the fork

  c.rewind_step = -1            # k >= 0: keep the full state at step k in <workdir>/rewind
  c.stop_epochs = 0.0           # > 0: stop after this many epochs of the schedule

  # A leading axis of S independent copies of the state, trained by one vmapped step;
  # copy i reads its own data order (seed `data_seed(config.seed, i)`).
  c.siblings = ml_collections.ConfigDict()
  c.siblings.count = 0          # 0: no sibling axis
  c.siblings.mesh_axis = 0      # > 0: spread the copies over this many devices
  # The "siblings" experiment (lottery_jax.experiments.siblings; ALGORITHMS.md s.2):
  # `shared_epochs` of shared dense training, then `count` copies that differ only in
  # data order, one-shot global magnitude masks at each of `sparsities` (() = the
  # config's `sparsity`), their overlap, union and intersection, each retrained.
  c.siblings.shared_epochs = 0.0
  c.siblings.shared_epochs_sweep = ()  # several k: one sub-experiment each, <workdir>/k<k>
  c.siblings.sparsities = ()
  c.siblings.vmap = True        # one vmapped program (False: one stage per sibling)
  c.siblings.retrain_from = "shared"  # or "init": where combined masks are retrained from

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.per_epoch = False
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.milestones = ()
  c.optimizer.decay_factor = 0.1

  c.num_epochs = 1.0
  c.num_steps = 0               # if > 0, overrides num_epochs

  # The optional "+T" stage of a jackpot: freeze the mask, fine-tune the surviving
  # weights and BatchNorm (the paper's lr 0.01, wd 0).
  c.finetune = ml_collections.ConfigDict()
  c.finetune.num_epochs = 0.0
  c.finetune.learning_rate = 0.01
  c.finetune.weight_decay = 0.0

  # Iterative magnitude pruning with rewinding (experiment "imp", lottery_jax.tickets;
  # ALGORITHMS.md section 3). Level 0 trains densely; level L prunes a fraction
  # `prune_fraction` of level L-1's surviving weights (ranked by level L-1's final
  # |w|) and retrains the survivors from the rewind point.
  c.imp = ml_collections.ConfigDict()
  c.imp.levels = 0              # pruning levels after the dense level 0 (in a stage's
                                # config: the level that stage prunes to)
  c.imp.prune_fraction = 0.2    # of the surviving weights, per level
  c.imp.scope = "global"        # "global": one |w| ranking over the prunable leaves;
                                # "layerwise": each leaf prunes its own fraction
  c.imp.classifier_half_rate = False  # the classifier pruned on its own at
                                      # prune_fraction / 2 (needs prune_classifier)
  c.imp.layer_fractions = ()    # ((path pattern, fraction), ...): matching leaves are
                                # pruned on their own at that fraction per level
  c.imp.rewind_step = 0         # every level restarts from the dense run's step k
                                # (0 = its initialisation)
  c.imp.rewind_epoch = 0.0      # > 0: the rewind point in epochs (instead of rewind_step)
  c.imp.controls = True         # per level: random re-initialisation, random pruning

  # Ticket vs re-initialisation vs prune & fine-tune at an equal budget (experiment
  # "ticket_vs_finetune", seed 002): per learning rate, dense pretraining for
  # `num_epochs`, a one-shot `sparsity` mask by `allocation`, three sparse arms.
  c.ticket_vs_finetune = ml_collections.ConfigDict()
  c.ticket_vs_finetune.learning_rates = ()  # the sweep; () = optimizer.learning_rate
  c.ticket_vs_finetune.sparse_epochs = 0.0  # each arm's length; 0 = num_epochs

  # A random frozen partition of the masked leaves (strong tickets in partially frozen
  # networks, ALGORITHMS.md section 4; masks.freeze): a fraction `prune_fraction` p
  # stays pruned, `lock_fraction` r stays kept, the search runs over the rest. Frozen
  # entries count toward `sparsity`, so each layer needs p_l <= s_l <= 1 - r_l.
  c.freeze = ml_collections.ConfigDict()
  c.freeze.prune_fraction = 0.0
  c.freeze.lock_fraction = 0.0
  c.freeze.distribution = "uniform"  # per-layer fractions: "uniform" or "erk"
  c.freeze.seed = -1            # the partition's seed; -1 = config.seed

  c.analysis = ml_collections.ConfigDict()
  c.analysis.enabled = True
  c.analysis.saliency_batches = 2

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  # Before each checkpoint save, hand the allocator's free memory back to the OS
  # (glibc's malloc_trim; a no-op elsewhere): Orbax saves in new threads whose malloc
  # arenas otherwise keep their high-water marks (docs/reliability.md, "Soak").
  c.checkpoint_release_memory = True
  # glibc's malloc arenas capped at this many (mallopt M_ARENA_MAX, set by
  # lottery_jax.main before JAX starts its threads); 0: glibc's default (8 per core).
  # Opt-in: engine/malloc.py, docs/reliability.md ("Soak").
  c.malloc_arena_max = 0
  c.eval_every_epochs = 0.0     # 0: evaluate at the start and the end only
  c.progress_bar = True         # shown only when stdout is a terminal
  c.tensorboard = True
  c.multihost = False           # call jax.distributed.initialize()
  c.allow_config_change = False  # resume even if the workdir's config differs
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field, its value and what is expected."""

  def need(cond, field, value, expected):
    if not cond:
      raise ConfigError(f"config.{field}={value!r} is invalid: expected {expected}")

  for key, value in flatten(c).items():
    if isinstance(value, float):
      need(math.isfinite(value), key, value, "a finite number")
  need(isinstance(c.experiment, str) and c.experiment, "experiment", c.experiment,
       "the name of a registered experiment")
  need(isinstance(c.model.name, str) and c.model.name, "model.name", c.model.name,
       "the name of a registered model")
  need(c.model.get("conv", "xla") in CONV_IMPLS, "model.conv", c.model.get("conv"),
       f"one of {CONV_IMPLS}")
  opt = c.optimizer
  need(opt.get("name", "sgd") in OPTIMIZERS, "optimizer.name", opt.get("name"),
       f"one of {OPTIMIZERS}")
  need(isinstance(opt.learning_rate, (int, float)) and opt.learning_rate >= 0,
       "optimizer.learning_rate", opt.learning_rate, "a number >= 0")
  need(opt.get("weight_decay", 0.0) >= 0, "optimizer.weight_decay",
       opt.get("weight_decay"), "a number >= 0")
  need(0.0 <= opt.get("momentum", 0.0) < 1.0, "optimizer.momentum", opt.get("momentum"),
       "a number in [0, 1)")
  need(opt.get("warmup_epochs", 0.0) >= 0, "optimizer.warmup_epochs",
       opt.get("warmup_epochs"), "a number >= 0")
  need(opt.get("decay_factor", 0.1) > 0, "optimizer.decay_factor",
       opt.get("decay_factor"), "a number > 0")
  need(all(isinstance(m, (int, float)) and m >= 0 for m in opt.get("milestones", ())),
       "optimizer.milestones", opt.get("milestones"), "a tuple of epochs >= 0")
  if "batch_size" in c.data:
    need(isinstance(c.data.batch_size, int) and c.data.batch_size >= 1, "data.batch_size",
         c.data.batch_size, "an int >= 1")
  if "eval_batch_size" in c.data:
    need(isinstance(c.data.eval_batch_size, int) and c.data.eval_batch_size >= 0,
         "data.eval_batch_size", c.data.eval_batch_size,
         "an int >= 1, or 0 for the train batch size")
  need(isinstance(c.mask.program, str) and c.mask.program, "mask.program", c.mask.program,
       "the name of a registered mask program")
  need(isinstance(c.sparsity, (int, float)) and 0.0 <= c.sparsity < 1.0, "sparsity",
       c.sparsity, "a number in [0, 1)")
  need(c.allocation in ALLOCATIONS, "allocation", c.allocation, f"one of {ALLOCATIONS}")
  need(c.mask.score_init in SCORE_INITS, "mask.score_init", c.mask.score_init,
       f"one of {SCORE_INITS}")
  need(isinstance(c.mask.rate, (int, float)) and 0.0 < c.mask.rate <= 1.0, "mask.rate",
       c.mask.rate, "a number in (0, 1]")
  need(c.mask.rate_schedule in RATE_SCHEDULES, "mask.rate_schedule",
       c.mask.rate_schedule, f"one of {RATE_SCHEDULES}")
  need(c.mask.rate_power > 0, "mask.rate_power", c.mask.rate_power, "a number > 0")
  need(isinstance(c.mask.max_swaps, int) and c.mask.max_swaps >= 0, "mask.max_swaps",
       c.mask.max_swaps, "an int >= 0 (0 = no cap)")
  need(c.num_epochs > 0 or c.num_steps > 0, "num_epochs", c.num_epochs,
       "> 0 (or num_steps > 0)")
  need(c.num_steps >= 0, "num_steps", c.num_steps, ">= 0")
  need(c.stop_epochs >= 0, "stop_epochs", c.stop_epochs, ">= 0 (0 = train to the end)")
  need(isinstance(c.rewind_step, int) and c.rewind_step >= -1, "rewind_step",
       c.rewind_step, "an int >= 0, or -1 for none")
  need(isinstance(c.start.step, int) and c.start.step >= -1, "start.step", c.start.step,
       "an int >= 0, or -1 for the latest checkpoint")
  need(isinstance(c.siblings.count, int) and c.siblings.count >= 0, "siblings.count",
       c.siblings.count, "an int >= 0 (0 = no sibling axis)")
  need(isinstance(c.siblings.mesh_axis, int) and c.siblings.mesh_axis >= 0,
       "siblings.mesh_axis", c.siblings.mesh_axis, "an int >= 0")
  if c.siblings.mesh_axis:
    need(c.siblings.count > 0 and c.siblings.count % c.siblings.mesh_axis == 0,
         "siblings.mesh_axis", c.siblings.mesh_axis,
         f"a divisor of siblings.count={c.siblings.count}")
  need(c.siblings.shared_epochs >= 0, "siblings.shared_epochs", c.siblings.shared_epochs,
       "a number >= 0 (0 = siblings start at the initialisation)")
  need(all(isinstance(k, (int, float)) and k >= 0 for k in c.siblings.shared_epochs_sweep),
       "siblings.shared_epochs_sweep", c.siblings.shared_epochs_sweep,
       "a tuple of numbers >= 0")
  need(all(isinstance(x, (int, float)) and 0 < x < 1 for x in c.siblings.sparsities),
       "siblings.sparsities", c.siblings.sparsities, "a tuple of numbers in (0, 1)")
  need(isinstance(c.siblings.vmap, bool), "siblings.vmap", c.siblings.vmap, "True or False")
  need(c.siblings.retrain_from in ("shared", "init"), "siblings.retrain_from",
       c.siblings.retrain_from, "'shared' or 'init'")
  need(isinstance(c.start.weights, bool), "start.weights", c.start.weights, "True or False")
  imp = c.get("imp")
  if imp is not None:
    need(isinstance(imp.levels, int) and imp.levels >= 0, "imp.levels", imp.levels,
         "an int >= 0")
    need(isinstance(imp.prune_fraction, (int, float)) and 0.0 < imp.prune_fraction < 1.0,
         "imp.prune_fraction", imp.prune_fraction, "a number in (0, 1)")
    need(imp.scope in IMP_SCOPES, "imp.scope", imp.scope, f"one of {IMP_SCOPES}")
    need(isinstance(imp.rewind_step, int) and imp.rewind_step >= 0, "imp.rewind_step",
         imp.rewind_step, "an int >= 0 (0 = rewind to the initialisation)")
    need(isinstance(imp.rewind_epoch, (int, float)) and imp.rewind_epoch >= 0,
         "imp.rewind_epoch", imp.rewind_epoch, "a number >= 0 (0 = use imp.rewind_step)")
    need(not (imp.rewind_epoch > 0 and imp.rewind_step > 0), "imp.rewind_epoch",
         imp.rewind_epoch, f"0 when imp.rewind_step={imp.rewind_step} is set (give one)")
    need(all(isinstance(e, (tuple, list)) and len(e) == 2 and isinstance(e[0], str)
             and isinstance(e[1], (int, float)) and 0.0 < e[1] < 1.0
             for e in imp.layer_fractions), "imp.layer_fractions", imp.layer_fractions,
         "a tuple of (path pattern, fraction in (0, 1)) pairs")
    need(not imp.classifier_half_rate or c.prune_classifier, "imp.classifier_half_rate",
         imp.classifier_half_rate, "False unless prune_classifier=True (a classifier "
         "that is not pruned has no rate)")
  tvf = c.get("ticket_vs_finetune")
  if tvf is not None:
    rates = tuple(tvf.learning_rates)
    need(all(isinstance(r, (int, float)) and r > 0 for r in rates),
         "ticket_vs_finetune.learning_rates", rates, "a tuple of numbers > 0")
    need(len(set(rates)) == len(rates), "ticket_vs_finetune.learning_rates", rates,
         "distinct values")
    need(tvf.sparse_epochs >= 0, "ticket_vs_finetune.sparse_epochs", tvf.sparse_epochs,
         ">= 0 (0 = num_epochs)")
  need(c.model.get("weight_init", "") in WEIGHT_INITS, "model.weight_init",
       c.model.get("weight_init"), f"one of {WEIGHT_INITS}")
  frz = c.get("freeze")
  if frz is not None:
    p, r = frz.prune_fraction, frz.lock_fraction
    need(isinstance(p, (int, float)) and 0.0 <= p < 1.0, "freeze.prune_fraction", p,
         "a number in [0, 1)")
    need(isinstance(r, (int, float)) and 0.0 <= r < 1.0, "freeze.lock_fraction", r,
         "a number in [0, 1)")
    need(p + r < 1.0, "freeze.lock_fraction", r,
         f"< 1 - freeze.prune_fraction = {1.0 - p!r} (p + r < 1: something must be "
         "searchable)")
    need(frz.distribution in FREEZE_DISTRIBUTIONS, "freeze.distribution",
         frz.distribution, f"one of {FREEZE_DISTRIBUTIONS}")
    need(isinstance(frz.seed, int) and frz.seed >= -1, "freeze.seed", frz.seed,
         "an int >= 0, or -1 for config.seed")
  need(c.finetune.num_epochs >= 0, "finetune.num_epochs", c.finetune.num_epochs, ">= 0")
  need(c.log_every_steps >= 1, "log_every_steps", c.log_every_steps, ">= 1")
  need(c.checkpoint_every_steps >= 1, "checkpoint_every_steps",
       c.checkpoint_every_steps, ">= 1")
  need(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, ">= 1")
  need(isinstance(c.checkpoint_release_memory, bool), "checkpoint_release_memory",
       c.checkpoint_release_memory, "True or False")
  arena_max = c.get("malloc_arena_max", 0)
  need(isinstance(arena_max, int) and not isinstance(arena_max, bool) and arena_max >= 0,
       "malloc_arena_max", arena_max, "an int >= 0 (0: glibc's default)")


def flatten(c: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  d = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def to_json(c: ml_collections.ConfigDict) -> str:
  return json.dumps(flatten(c), indent=1, sort_keys=True, default=str)


def _same(a, b) -> bool:
  return json.dumps(a, default=str) == json.dumps(b, default=str)


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Fields whose values differ (ignoring the resume-neutral ones)."""
  diffs = []
  defaults = flatten(base_config())
  for key in sorted(set(saved) | set(current)):
    if any(key == n or key.startswith(n + ".") for n in RESUME_NEUTRAL):
      continue
    if key not in saved and key in defaults and _same(current.get(key), defaults[key]):
      continue  # a field added to the schema since that run, at its default
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if json.dumps(a, default=str) != json.dumps(b, default=str):
      diffs.append(f"{key}: checkpoint has {a!r}, config has {b!r}")
  return diffs
