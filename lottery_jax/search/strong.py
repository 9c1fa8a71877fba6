"""Strong lottery tickets in partially frozen random networks (ALGORITHMS.md section 4).

Edge-popup (Ramanujan et al. 2020) searches a subnetwork of a *never-trained* random
network: one score per weight trains through the straight-through estimator and
the forward pass uses the top-k of |score| in each layer. Otsuka et al. freeze part
of the network first: a random fraction p of each masked layer stays pruned, a
fraction r stays kept ("locked"), and top-k runs over the rest; the frozen entries
count toward the target sparsity. Weights and partition regenerate from seeds, so a
ticket stores one bit per *searchable* weight.

This lives in `lottery_jax.search` because it is a score search over frozen weights,
like the jackpot (only where the weights come from differs). Registered on import:

* mask program "strong_ticket": `params` draws the weights from
  `config.model.weight_init` (the engine's `MaskProgram.params` hook); `layout`
  allocates `config.sparsity` ("uniform" or "erk") and freezes a partition
  (`config.freeze.*`, `masks.freeze`); `init` draws Kaiming-normal scores and takes
  their top-k within the partition; the update rule is the engine's "topk" ("fixed":
  the random-mask control, no search);
* analyses "stored_bits" and "dense_source_bits" (scalars in `summary.json`) and
  "strong_ticket" (the partition's fractions and counts, the bit accounting, the
  ticket's header).

`write_ticket(workdir)` stores a finished run as the paper counts it (the
"strong_ticket" experiment calls it after the stage): `strong_ticket.json` (the
header: weight seed and init, partition seed and fractions, the architecture) and
`strong_ticket.safetensors` (the packed bits of the searchable entries only, and the
BatchNorm running statistics, which are learned from data and cannot regenerate).
`load_strong_ticket(workdir)` regenerates weights and partition from those two files
and rebuilds the masks; the logits equal the run's bitwise on the same backend.

Choices, where the references differ or are silent:
* Weights (`random_weights`): every prunable kernel (`masks.prunable`, the
  classifier included) is redrawn with fan_in = prod(kernel.shape[:-1]) and gain
  sqrt(2); biases are set to zero (the references' networks have none, and a zero
  bias is no bias); other leaves keep the model's init (an affine BatchNorm stays at
  scale 1, shift 0 since only scores train, which is non-affine BatchNorm). No
  `--scale-fan` / `dynamic_scaled` rescaling (not implemented).
* The partition's per-layer fractions follow `masks.freeze`: "erk" puts the pruned
  fraction p by ERK and locks the same share r / (1 - p) of each layer's unpruned
  weights (the frozen-network code instead takes r_l = ERK(p + r)_l - ERK(p)_l).
* Top-k is per layer (the frozen-network code's `local_ep`; its configs use
  `global_ep`, one threshold across layers): exact per-layer counts, ties by flat
  index.
* Infeasible targets raise (`p_l <= s_l <= 1 - r_l` per layer as allocated); the
  reference silently searches nothing (ALGORITHMS.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath

from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import analyses, io, programs
from lottery_jax.engine.config import WEIGHT_INITS
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.loop import stage_keys

PROGRAM = "strong_ticket"
ALLOCATIONS = ("uniform", "erk")
GAIN = float(np.sqrt(2.0))

# Independent streams of the program's key (`loop.stage_keys(seed)[1]`).
WEIGHT_STREAM, SCORE_STREAM, PARTITION_STREAM = 0, 1, 2

TICKET_JSON = "strong_ticket.json"
TICKET_TENSORS = "strong_ticket.safetensors"
FORMAT = "lottery_jax strong ticket v1"

# What a ticket's header must hold to regenerate the network, in bits: a seed is a
# JAX key (two uint32), the init and the distribution are one-byte codes, p and r
# float32. The architecture, sparsity and allocation are the recipe every ticket of
# the model shares, as the dense-source ticket does, so neither counts them.
HEADER_BITS = {"weight_seed": 64, "weight_init": 8, "partition_seed": 64,
               "prune_fraction": 32, "lock_fraction": 32, "distribution": 8}
DENSE_SOURCE_HEADER_BITS = {"weight_seed": 64, "weight_init": 8}


# ---------------------------------------------------------------- weights, partition
def weight_key(seed: int) -> jax.Array:
  return jax.random.fold_in(stage_keys(seed)[1], WEIGHT_STREAM)


def partition_key(seed: int) -> jax.Array:
  return jax.random.fold_in(stage_keys(seed)[1], PARTITION_STREAM)


def partition_seed(config) -> int:
  return int(config.freeze.seed) if config.freeze.seed >= 0 else int(config.seed)


def _fan_in(shape) -> int:
  return int(np.prod(shape[:-1]))


def draw_kernel(key: jax.Array, shape, weight_init: str) -> jax.Array:
  """One kernel from `weight_init` (fan_in = prod(shape[:-1]), gain sqrt(2))."""
  std = GAIN / np.sqrt(_fan_in(shape))
  if weight_init == "kaiming_normal":
    return jax.random.normal(key, shape, jnp.float32) * jnp.float32(std)
  if weight_init == "kaiming_uniform":
    bound = jnp.float32(std * np.sqrt(3.0))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  if weight_init == "signed_constant":
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), jnp.float32(std),
                     jnp.float32(-std))
  raise ConfigError(f"config.model.weight_init={weight_init!r} is invalid for mask program "
                    f"{PROGRAM!r}: expected one of {WEIGHT_INITS[1:]}")


def random_weights(key: jax.Array, params, weight_init: str):
  """`params` with every prunable kernel redrawn from `weight_init` (leaf i from
  `fold_in(key, i)`, flatten order) and every bias zeroed; other leaves as given."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(params)[0])
  out = []
  for i, (path, w) in enumerate(zip(paths, leaves)):
    name = mask_algebra.path_str(path)
    if mask_algebra.prunable(path, w):
      out.append(draw_kernel(jax.random.fold_in(key, i), np.shape(w), weight_init)
                 .astype(jnp.asarray(w).dtype))
    elif name.split("/")[-1] == "bias":
      out.append(jnp.zeros_like(w))
    else:
      out.append(jnp.asarray(w))
  return jax.tree.unflatten(jax.tree.structure(params), out)


def kaiming_normal_scores(key: jax.Array, params, masked):
  """N(0, 2 / fan_in) scores on masked leaves (the frozen-network code's init)."""
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(masked)
  return treedef.unflatten([
      draw_kernel(jax.random.fold_in(key, i), np.shape(w), "kaiming_normal") if f
      else jnp.zeros((), jnp.float32) for i, (w, f) in enumerate(zip(leaves, flags))])


def _where_masked(masked):
  flags = {mask_algebra.path_str(p): bool(f)
           for p, f in jax.tree_util.tree_flatten_with_path(masked)[0]}
  return lambda path, leaf: flags.get(mask_algebra.path_str(path), False)


def strong_layout(params, *, sparsity: float, allocation: str, prune_fraction: float,
                  lock_fraction: float, distribution: str, key: jax.Array,
                  where) -> programs.Layout:
  """The allocation of `sparsity` over `where`'s leaves and a frozen partition of them.

  Raises:
    ConfigError: a layer whose frozen entries make its allocated count impossible
      (`sparsity` below the pruned fraction, or above 1 - the locked fraction).
  """
  sparsities = mask_algebra.allocate(params, sparsity, method=allocation, where=where)
  partition = mask_algebra.freeze(key, params, prune_fraction, lock_fraction,
                                  distribution=distribution, where=where)
  layout = programs.layout_from_sparsities(params, sparsities, where, partition)
  flat = zip(jax.tree_util.tree_flatten_with_path(layout.masked)[0],
             jax.tree.leaves(layout.prune_counts), jax.tree.leaves(layout.partition))
  for (path, is_masked), k, codes in flat:
    if not is_masked:
      continue
    n, pruned = codes.size, int(np.sum(codes == mask_algebra.PRUNED))
    locked = int(np.sum(codes == mask_algebra.LOCKED))
    if not pruned <= k <= n - locked:
      raise ConfigError(
          f"config.sparsity={sparsity!r} is infeasible with freeze.prune_fraction="
          f"{prune_fraction!r}, freeze.lock_fraction={lock_fraction!r} "
          f"(freeze.distribution={distribution!r}, allocation={allocation!r}): leaf "
          f"'{mask_algebra.path_str(path)}' has {n} entries, {pruned} frozen pruned and "
          f"{locked} locked, and its allocated sparsity prunes {k}; each layer needs "
          f"frozen pruned <= pruned <= entries - locked (p <= s <= 1 - r)")
  return layout


def initial_masks(scores, layout: programs.Layout):
  """Top-k of |score| per masked leaf within the partition (the "topk" rule's mask)."""
  full = jax.tree.map(lambda s, c, f: jnp.abs(s) if f else jnp.zeros(c.shape),
                      scores, layout.partition, layout.masked)
  return mask_algebra.topk(full, layout.sparsities, partition=layout.partition,
                           where=_where_masked(layout.masked))


# ---------------------------------------------------------------- the program
@programs.register_program(PROGRAM)
def strong_ticket_program(config, total_steps: int) -> programs.MaskProgram:
  """Edge-popup over random weights with a frozen random partition."""
  if config.model.weight_init not in WEIGHT_INITS[1:]:
    raise ConfigError(f"config.model.weight_init={config.model.weight_init!r} is invalid "
                      f"for mask program {PROGRAM!r}: expected one of {WEIGHT_INITS[1:]} "
                      "(strong tickets search random weights)")
  if config.pretrained:
    raise ConfigError(f"config.pretrained={config.pretrained!r} is invalid for mask program "
                      f"{PROGRAM!r}: expected '' (the weights are drawn from "
                      "model.weight_init and never trained)")
  if config.allocation not in ALLOCATIONS:
    raise ConfigError(f"config.allocation={config.allocation!r} is invalid for mask program "
                      f"{PROGRAM!r}: expected one of {ALLOCATIONS}")
  if not config.sparsity > 0:
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid for mask program "
                      f"{PROGRAM!r}: expected > 0 (a search)")
  p, r = float(config.freeze.prune_fraction), float(config.freeze.lock_fraction)
  if config.sparsity < p or config.sparsity > 1.0 - r:
    # The model-wide bound; strong_layout checks every layer as allocated.
    raise ConfigError(
        f"config.sparsity={config.sparsity!r} is infeasible with freeze.prune_fraction="
        f"{p!r} and freeze.lock_fraction={r!r}: expected prune_fraction <= sparsity <= "
        f"1 - lock_fraction = {1.0 - r!r} (frozen entries count toward the sparsity)")

  def params(ctx: programs.Context):
    return random_weights(weight_key(int(config.seed)), ctx.params,
                          config.model.weight_init)

  def layout(ctx: programs.Context) -> programs.Layout:
    return strong_layout(ctx.params, sparsity=config.sparsity, allocation=config.allocation,
                         prune_fraction=p, lock_fraction=r,
                         distribution=config.freeze.distribution,
                         key=partition_key(partition_seed(config)), where=ctx.where)

  def init(ctx: programs.Context, layout: programs.Layout):
    scores = kaiming_normal_scores(jax.random.fold_in(ctx.key, SCORE_STREAM), ctx.params,
                                   layout.masked)
    return initial_masks(scores, layout), scores

  return programs.MaskProgram(
      PROGRAM, trains="scores", layout=layout, init=init, params=params,
      update=programs.update_rule(config, total_steps, "topk", ("topk", "fixed")),
      analyses=("stored_bits", "dense_source_bits", "strong_ticket"))


# ---------------------------------------------------------------- accounting
def partition_counts(layout: programs.Layout) -> dict[str, Any]:
  """Entries of the masked leaves in each part of the partition, per leaf and total."""
  per_layer = {}
  flat = zip(jax.tree_util.tree_flatten_with_path(layout.masked)[0],
             jax.tree.leaves(layout.partition), jax.tree.leaves(layout.prune_counts))
  for (path, is_masked), codes, k in flat:
    if is_masked:
      codes = np.asarray(codes)
      per_layer[mask_algebra.path_str(path)] = {
          "size": int(codes.size),
          "pruned": int(np.sum(codes == mask_algebra.PRUNED)),
          "locked": int(np.sum(codes == mask_algebra.LOCKED)),
          "searchable": int(np.sum(codes == mask_algebra.SEARCHABLE)),
          "prune_count": int(k)}
  total = {key: sum(v[key] for v in per_layer.values())
           for key in ("size", "pruned", "locked", "searchable", "prune_count")}
  return {"total": total, "per_layer": per_layer}


def bit_accounting(layout: programs.Layout, batch_stats) -> dict[str, int]:
  """`stored_bits` = one bit per searchable entry + the header; `dense_source_bits` =
  one bit per masked entry + a dense-source ticket's header (weight seed and init);
  `batch_stats_bits`: the BatchNorm running statistics both must store as well. With
  nothing frozen (p = r = 0) the ticket is the dense-source one: same header."""
  total = partition_counts(layout)["total"]
  dense_header = sum(DENSE_SOURCE_HEADER_BITS.values())
  frozen = total["pruned"] + total["locked"]
  header = sum(HEADER_BITS.values()) if frozen else dense_header
  bn = sum(int(np.size(x)) * np.asarray(x).dtype.itemsize * 8
           for x in jax.tree.leaves(batch_stats))
  return {"searchable_bits": total["searchable"], "header_bits": header,
          "stored_bits": total["searchable"] + header,
          "dense_source_bits": total["size"] + dense_header,
          "dense_source_header_bits": dense_header, "batch_stats_bits": bn}


def header(run) -> dict[str, Any]:
  """What `load_strong_ticket` needs besides the stored bits and statistics."""
  c = run.config
  layout = run.layout.to_json()
  return {
      "format": FORMAT,
      "model": {"name": c.model.name, "kwargs": c.model.kwargs.to_dict(),
                "num_classes": int(run.data.info.num_classes),
                "input_shape": [int(d) for d in run.data.info.input_shape]},
      "weight_seed": int(c.seed), "weight_init": c.model.weight_init,
      "partition_seed": partition_seed(c),
      "prune_fraction": float(c.freeze.prune_fraction),
      "lock_fraction": float(c.freeze.lock_fraction),
      "distribution": c.freeze.distribution,
      "sparsity": float(c.sparsity), "allocation": c.allocation,
      "masked": layout["masked"],
      "prune_counts": layout["prune_counts"],
  }


@analyses.register("stored_bits", key="stored_bits")
def stored_bits(run, state) -> int:
  return bit_accounting(run.layout, state.batch_stats)["stored_bits"]


@analyses.register("dense_source_bits", key="dense_source_bits")
def dense_source_bits(run, state) -> int:
  return bit_accounting(run.layout, state.batch_stats)["dense_source_bits"]


@analyses.register("strong_ticket", key="strong_ticket")
def strong_ticket_report(run, state) -> dict[str, Any]:
  """Fractions of the masked entries in each part of the partition, the bit
  accounting, and the ticket's header (`write_ticket` reads it)."""
  counts = partition_counts(run.layout)
  n = max(counts["total"]["size"], 1)
  bits = bit_accounting(run.layout, state.batch_stats)
  return {
      "partition": {part: counts["total"][part] / n
                    for part in ("searchable", "pruned", "locked")},
      "counts": counts,
      **bits,
      "compression_vs_dense_source": bits["dense_source_bits"] / bits["stored_bits"],
      "header": header(run),
  }


# ---------------------------------------------------------------- storage
def write_ticket(workdir: str, export_dir: str | None = None) -> dict[str, Any]:
  """Writes `strong_ticket.json` and `strong_ticket.safetensors` into `export_dir`
  (default `workdir`) from the finished run's export there and the header in
  `<workdir>/summary.json`. Returns the sizes written."""
  export_dir = epath.Path(export_dir or workdir)
  summary_path = epath.Path(workdir) / "summary.json"
  report = io.read_json(summary_path).get("strong_ticket") if summary_path.exists() \
      else None
  if not report:
    raise FileNotFoundError(
        f"{summary_path} has no 'strong_ticket' entry: write_ticket needs a finished run of "
        f"mask program {PROGRAM!r} with config.analysis.enabled=True")
  head = report["header"]
  run = io.load_run(export_dir)
  _, partition, _ = _regenerate(head)
  flat_masks = io.flatten_dict(run["masks"])
  tensors = {}
  for name in head["masked"]:
    codes = partition[name]
    m = flat_masks[name].reshape(-1)
    tensors[f"searchable/{name}"] = np.packbits(m[codes.reshape(-1) ==
                                                  mask_algebra.SEARCHABLE])
  for k, v in io.flatten_dict(io.plain(run["batch_stats"])).items():
    tensors[f"batch_stats/{k}"] = np.ascontiguousarray(v)
  data = safetensors.numpy.save(tensors)
  if io.is_lead():  # on a pod process 0 writes the files
    io.write_bytes(export_dir / TICKET_TENSORS, data)
    io.write_json(export_dir / TICKET_JSON,
                  {**head, "bits": {k: report[k] for k in (
                      "searchable_bits", "header_bits", "stored_bits", "dense_source_bits",
                      "batch_stats_bits")}})
  return {"searchable_bits": report["searchable_bits"], "file_bytes": len(data)}


def _regenerate(head: dict):
  """(model, params, partition as flat {path: codes}, masked set) from a header."""
  model = models.get(head["model"]["name"], num_classes=head["model"]["num_classes"],
                     **head["model"]["kwargs"])
  init_key = stage_keys(head["weight_seed"])[0]
  dummy = jnp.zeros((1, *head["model"]["input_shape"]), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, dummy, train=False))(init_key)
  params = random_weights(weight_key(head["weight_seed"]), variables["params"],
                          head["weight_init"])
  masked = set(head["masked"])
  where = lambda path, leaf: mask_algebra.path_str(path) in masked  # noqa: E731
  partition = mask_algebra.freeze(partition_key(head["partition_seed"]), params,
                                  head["prune_fraction"], head["lock_fraction"],
                                  distribution=head["distribution"], where=where)
  flat_partition = {mask_algebra.path_str(p): np.asarray(c) for p, c in
                    jax.tree_util.tree_flatten_with_path(partition)[0]}
  return (model, params), flat_partition, masked


def load_strong_ticket(workdir: str) -> dict[str, Any]:
  """The strong ticket stored in `workdir` (`write_ticket`), regenerated.

  Returns:
    `{"model", "params", "batch_stats", "masks", "partition", "header",
    "variables"}`: the Flax module, the random weights (unmasked), the stored
    BatchNorm statistics, the rebuilt boolean masks, the int8 partition (all like
    the params, NumPy), the header, and `{"params": W * M, "batch_stats"}` ready for
    `model.apply(variables, x, train=False)`.

  Raises:
    FileNotFoundError: no ticket in `workdir`.
    ValueError: the stored bits do not fit the regenerated partition (a header or
      file from another run), naming the leaf.
  """
  path = epath.Path(workdir) / TICKET_JSON
  if not path.exists():
    raise FileNotFoundError(
        f"{path} does not exist: run mask program {PROGRAM!r} with config.experiment="
        f"'strong_ticket', or call lottery_jax.search.strong.write_ticket(workdir) on the "
        "finished run")
  head = io.read_json(path)
  if head.get("format") != FORMAT:
    raise ValueError(f"{path}: format {head.get('format')!r}, expected {FORMAT!r}")
  (model, params), partition, masked = _regenerate(head)
  stored = io.load_safetensors(epath.Path(workdir) / TICKET_TENSORS)
  masks = {}
  for name, codes in partition.items():
    if name not in masked:
      masks[name] = np.ones(codes.shape, bool)
      continue
    flat = codes.reshape(-1)
    search = flat == mask_algebra.SEARCHABLE
    bits = stored[f"searchable/{name}"]
    n_search = int(np.sum(search))
    if bits.shape != ((n_search + 7) // 8,):
      raise ValueError(f"{workdir}: leaf '{name}' stores {bits.size} bytes of mask bits; "
                       f"its regenerated partition has {n_search} searchable entries")
    m = flat == mask_algebra.LOCKED
    m[search] = np.unpackbits(bits, count=n_search).astype(bool)
    kept, want = int(np.sum(m)), codes.size - int(head["prune_counts"][name])
    if kept != want:
      raise ValueError(f"{workdir}: leaf '{name}' rebuilds with {kept} kept entries; the "
                       f"ticket's prune count leaves {want}")
    masks[name] = m.reshape(codes.shape)
  masks = io.unflatten_dict(masks)
  params = io.plain(params)
  batch_stats = io.unflatten_dict({k[len("batch_stats/"):]: v for k, v in stored.items()
                                   if k.startswith("batch_stats/")})
  effective = jax.tree.map(lambda w, m: np.where(m, w, np.zeros_like(w)), params, masks)
  return {"model": model, "params": params, "batch_stats": batch_stats, "masks": masks,
          "partition": io.unflatten_dict(partition), "header": head,
          "variables": {"params": effective, "batch_stats": batch_stats}}
