"""`run(config, workdir)`: one stage (a resumable run), sharded.

Order of business, so that a bad input never touches the workdir:
1. a finished stage (its `summary.json` written for this config) is returned as
   it is: not rebuilt, re-evaluated or re-exported;
2. validate the config, build data, model, starting weights (fresh, a file or
   run in `config.pretrained`, or another stage's full checkpoint in
   `config.start`), the mask program's layout and masks (any mismatch raises
   here, before anything is written);
3. compare with the workdir's checkpoint (refuse to resume a different config or
   layout);
4. train under `jax.transfer_guard("disallow")`, fetching metrics explicitly at
   log intervals, checkpointing periodically, at the rewind step and on SIGTERM;
5. evaluate, analyse, export, and write `summary.json` last (atomically): its
   presence marks the stage finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax import data as data_lib
from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import analyses
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import faults
from lottery_jax.engine import history as history_lib
from lottery_jax.engine import io
from lottery_jax.engine import lock
from lottery_jax.engine import malloc
from lottery_jax.engine import monitor
from lottery_jax.engine import programs
from lottery_jax.engine.checkpoint import Checkpointer
from lottery_jax.engine.errors import (CheckpointMismatchError, ConfigError,
                                       NonFiniteLossError)
from lottery_jax.engine.optim import continue_schedules, make_optimizer
from lottery_jax.engine.state import TrainState, partition_placeholders
from lottery_jax.engine.step import (DATA_AXIS, SIBLING_AXIS, make_eval_step,
                                     make_train_step, state_sharding)
from lottery_jax.models import conv as conv_lib

log = logging.getLogger("lottery_jax")

REWIND_DIR = "rewind"
CHECKPOINT_DIR = "checkpoints"

_train_step_hooks: list[Callable[[int], None]] = []


@contextlib.contextmanager
def train_step_hook(hook: Callable[[int], None]):
  """Within the block, every stage that `build` makes calls `hook(n)` on the host
  before its n-th train step (n counts from 1 for each build, resumed steps not
  included). For instrumentation that must see the loop from inside: fault
  injection in the tests, memory tracing in benchmarks/soak_trace.py. The step
  itself is not changed, so results are not; only its wrapper, a plain function,
  lacks the jitted step's `.lower` (for XLA's cost analysis, build outside the
  block)."""
  _train_step_hooks.append(hook)
  try:
    yield
  finally:
    _train_step_hooks.remove(hook)


def _hooked(train_step, hooks):
  calls = [0]

  def step_fn(state, batch):
    calls[0] += 1
    for hook in hooks:
      hook(calls[0])
    return train_step(state, batch)
  return step_fn


def make_mesh(devices=None, sibling_devices: int = 0) -> Mesh:
  """All devices on "data", or a ("sibling", "data") grid for a sibling axis."""
  devices = np.asarray(devices if devices is not None else jax.devices()).reshape(-1)
  if sibling_devices:
    if devices.size % sibling_devices:
      raise ConfigError(f"config.siblings.mesh_axis={sibling_devices} does not divide the "
                        f"{devices.size} devices")
    return Mesh(devices.reshape(sibling_devices, -1), (SIBLING_AXIS, DATA_AXIS))
  return Mesh(devices, (DATA_AXIS,))


def data_seed(seed: int, sibling: int) -> int:
  """The data-order seed of sibling `sibling` of a run with `config.seed=seed` (pass
  it as `config.data.seed` to reproduce that sibling as a separate run)."""
  return int(np.random.SeedSequence([int(seed), int(sibling)]).generate_state(1)[0] >> 1)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (save, then exit)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler (tests, notebooks)
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is written (exit status 143)."""


def total_steps_of(config, steps_per_epoch: int) -> int:
  if config.num_steps > 0:
    return int(config.num_steps)
  return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


@dataclasses.dataclass(frozen=True)
class Fork:
  """Where a stage starts when `config.start.workdir` is set (host arrays)."""

  workdir: str
  step: int
  state: Any          # the source's TrainState tree, as saved (NumPy)
  data_step: int


@dataclasses.dataclass
class Run:
  """Everything static about a stage, and its initial state (built, not yet run)."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  data: data_lib.Data                 # the pipeline of copy 0 (all copies share its shape)
  sibling_data: list                  # one pipeline per copy (S of them), or [data]
  model: Any
  spec: models.ModelSpec
  program: programs.MaskProgram
  layout: programs.Layout
  state: TrainState                   # initial (or forked) state, on device
  initial_masks: Any                  # host copy, one copy (no sibling axis)
  starting_variables: dict            # host copy of the weights the stage started from
  total_steps: int                    # length of the schedule
  stop_step: int                      # the stage trains up to here (<= total_steps)
  train_step: Any
  eval_step: Any
  analysis_key: jax.Array
  fork: Fork | None = None

  @property
  def siblings(self) -> int:
    return int(self.config.siblings.count)

  def train_iter(self):
    if not self.siblings:
      return self.data.train_iter()
    sharding = NamedSharding(self.mesh, _batch_spec(self.mesh, self.siblings))
    return data_lib.StackedTrainIterator(self.sibling_data, sharding)

  def evaluate(self, state) -> dict[str, Any]:
    """Accuracy and loss on the eval split; with siblings, per copy and the mean."""
    totals = None
    for batch in self.data.eval_iter():
      out = self.eval_step(state, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    with jax.transfer_guard("allow"):
      totals = jax.device_get(totals)
    return _eval_report(totals)

  def layout_json(self) -> dict:
    return self.layout.to_json()


def _eval_report(totals) -> dict[str, Any]:
  correct, loss, count = (np.asarray(totals[k], np.float64) for k in ("correct", "loss",
                                                                         "count"))
  count = np.maximum(count, 1.0)
  if correct.ndim == 0:
    return {"accuracy": float(correct / count), "loss": float(loss / count),
            "examples": int(count)}
  per = [{"accuracy": float(c / n), "loss": float(lo / n), "examples": int(n)}
         for c, lo, n in zip(correct, loss, count)]
  return {"accuracy": float(np.mean([p["accuracy"] for p in per])),
          "loss": float(np.mean([p["loss"] for p in per])),
          "examples": per[0]["examples"], "per_sibling": per}


def _batch_spec(mesh: Mesh, siblings: int) -> P:
  if siblings and SIBLING_AXIS in mesh.shape:
    return P(SIBLING_AXIS, DATA_AXIS)
  return P(None, DATA_AXIS) if siblings else P(DATA_AXIS)


def make_model(config, num_classes: int):
  """The config's model; keyword arguments it does not take raise ConfigError."""
  kwargs = config.model.kwargs.to_dict()
  try:
    return models.get(config.model.name, num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ConfigError(f"config.model.kwargs={kwargs!r} do not fit model "
                      f"{config.model.name!r} ({e}); see its builder in "
                      "lottery_jax/models") from None


def stage_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The keys of a stage with `config.seed=seed`: the model's init, the mask program's
  (`Context.key`), the train state's RNG. A method that regenerates a run's weights
  or masks from its seed (strong tickets) derives them here, as `build` does."""
  init_key, mask_key, state_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  return init_key, mask_key, state_key


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_variables(model, input_shape: tuple[int, ...], key: jax.Array):
  """The model's initial variables. Jitted once per (model, input shape) and process:
  Flax modules compare and hash by their fields, so every stage of an experiment with
  the same model reuses one compilation (a fresh `jax.jit(lambda ...)` per stage
  recompiled the whole random initialisation each time: benchmarks/imp_bookkeeping.py)."""
  return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Run:
  """Everything static about a stage, plus its initial state (no I/O to the workdir)."""
  config_lib.validate(config)
  mesh = mesh or make_mesh(sibling_devices=config.siblings.mesh_axis)
  S = int(config.siblings.count)
  if S:
    seeds = [data_seed(config.seed, i) for i in range(S)]
    sibling_data = []
    for s in seeds:
      cfg = config.data.copy_and_resolve_references()
      with cfg.unlocked():
        cfg.seed = s
      sibling_data.append(data_lib.build(cfg, mesh=mesh, seed=s))
    data = sibling_data[0]
  else:
    data = data_lib.build(config.data, mesh=mesh, seed=config.seed)
    sibling_data = [data]
  spec = models.spec(config.model.name)
  model = make_model(config, data.info.num_classes)
  if tuple(data.info.input_shape) != tuple(spec.input_shape):
    log.info("model %s registered for input %s, data gives %s", spec.name,
             spec.input_shape, data.info.input_shape)
  init_key, mask_key, state_key = stage_keys(config.seed)
  with jax.transfer_guard("allow"):
    variables = _init_variables(model, tuple(data.info.input_shape), init_key)
  variables = {"params": variables["params"],
               "batch_stats": variables.get("batch_stats", {})}
  if config.pretrained:
    variables = io.load_pretrained(config.pretrained, config.model.name,
                                   data.info.num_classes, like=variables)
  fork = _load_fork(config, like=variables) if config.start.workdir else None
  if fork is not None and config.start.weights:
    variables = {"params": fork.state["params"], "batch_stats": fork.state["batch_stats"]}
  source = None
  if config.mask.source:
    source = io.load_mask_source(config.mask.source, like=variables["params"])

  total = total_steps_of(config, data.steps_per_epoch)
  stop = total
  if config.stop_epochs > 0:
    stop = min(total, max(1, int(math.ceil(config.stop_epochs * data.steps_per_epoch))))
  program = programs.get_program(config, total)
  where = programs.prunable_where(config, spec.classifier)
  ctx = programs.Context(config=config, params=variables["params"], where=where,
                         key=mask_key, source=source)
  if program.params is not None:
    # The program draws its own starting weights (strong tickets: random weights
    # from model.weight_init); the layout, the init and the state all see them.
    with jax.transfer_guard("allow"):
      drawn = program.params(ctx)
    io.check_like({"params": drawn}, {"params": variables["params"]},
                  f"the weights of mask program {program.name!r}")
    variables = {**variables, "params": drawn}
    ctx = dataclasses.replace(ctx, params=drawn)
  layout = program.layout(ctx)
  masks, scores = program.init(ctx, layout)
  params = variables["params"]
  if not program.train_scores:
    # Training under a mask starts from exactly-zero pruned weights.
    params = mask_algebra.apply(params, masks)
    scores = programs.score_placeholders(params)
  partition = (jax.tree.map(jnp.asarray, layout.partition) if layout.partition is not None
               else partition_placeholders(params))

  tx = make_optimizer(config.optimizer, total, data.steps_per_epoch)
  trainable = {"scores": scores} if program.train_scores else {"params": params}
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables["batch_stats"], scores=scores, masks=masks,
      partition=partition, opt_state=tx.init(trainable), rng=state_key,
      bad_step=jnp.full((), -1, jnp.int32))
  if fork is not None:
    state = _apply_fork(state, fork, config)
  with jax.transfer_guard("allow"):
    initial_masks, starting = jax.device_get((masks, variables))
    if S:
      state = jax.tree.map(lambda x: jnp.broadcast_to(x, (S, *np.shape(x))), state)
    state = jax.device_put(state, state_sharding(mesh, S))
  train_step = make_train_step(model, tx, program, layout, mesh=mesh,
                               conv_impl=config.model.conv, siblings=S)
  eval_step = make_eval_step(model, layout=layout, mesh=mesh, conv_impl=config.model.conv,
                             siblings=S)
  if _train_step_hooks:
    train_step = _hooked(train_step, tuple(_train_step_hooks))
  return Run(config=config, mesh=mesh, data=data, sibling_data=sibling_data, model=model,
             spec=spec, program=program, layout=layout, state=state,
             initial_masks=initial_masks, starting_variables=starting, total_steps=total,
             stop_step=stop, train_step=train_step, eval_step=eval_step,
             analysis_key=jax.random.fold_in(mask_key, 1),  # not the init key
             fork=fork)


def _load_fork(config, like) -> Fork:
  """The full state of another stage at `config.start.step` (its rewind point or a
  kept checkpoint), checked against this model. With `config.start.weights=False`
  the stage keeps its own starting weights and takes the rest (a re-initialisation
  control that continues another run's schedule and data order)."""
  src = config.start.workdir
  want = int(config.start.step)
  candidates = []
  for sub in (REWIND_DIR, CHECKPOINT_DIR):
    directory = epath.Path(src) / sub
    if directory.is_dir():
      ckpt = Checkpointer(directory, keep=None, create=False)
      steps = ckpt.all_steps()
      candidates.append((sub, steps))
      if steps and (want in steps or (want < 0 and sub == CHECKPOINT_DIR)):
        step = want if want >= 0 else steps[-1]
        state, data_state, _ = ckpt.restore_host(step)
        ckpt.close()
        io.check_like({"params": state["params"], "batch_stats": state["batch_stats"]},
                      like, f"{directory}/{step}")
        return Fork(workdir=src, step=step, state=state,
                    data_step=int(data_state.get("step", step)))
      ckpt.close()
  found = "; ".join(f"{sub}: steps {steps}" for sub, steps in candidates) or "no checkpoints"
  raise FileNotFoundError(
      f"config.start.workdir={src!r} has no checkpoint at step {want} ({found}). Fork "
      "from a step that stage kept: its rewind point (config.rewind_step) or a "
      "checkpoint still on disk (-1 = the latest)")


def _apply_fork(state: TrainState, fork: Fork, config) -> TrainState:
  src = fork.state
  if np.ndim(src["step"]) != 0:
    raise CheckpointMismatchError(
        f"{fork.workdir} has a sibling axis; a stage forks from a single-copy stage")
  # Without the source's optimiser: fresh buffers, the schedule continued at the step.
  opt_state = continue_schedules(state.opt_state, src["step"])
  if config.start.optimizer:
    ours = jax.tree.structure(state.opt_state)
    theirs_leaves = jax.tree.leaves(src["opt_state"])
    if len(theirs_leaves) != ours.num_leaves:
      raise CheckpointMismatchError(
          f"the optimiser state in {fork.workdir} (step {fork.step}) does not fit this "
          "stage's optimiser (a different optimizer.name or what trains); set "
          "--config.start.optimizer=False to start with a fresh optimiser")
    opt_state = jax.tree.unflatten(ours, [
        np.asarray(a, dtype=np.asarray(b).dtype)
        for a, b in zip(theirs_leaves, jax.tree.leaves(state.opt_state))])
  return state.replace(step=jnp.asarray(src["step"], jnp.int32),
                       rng=jnp.asarray(src["rng"], state.rng.dtype), opt_state=opt_state)


def finished_summary(config, workdir: str) -> dict | None:
  """The summary of `workdir` if it holds this config's finished stage."""
  path = epath.Path(workdir) / "summary.json"
  if not path.exists():
    return None
  summary = io.read_json(path)
  saved = summary.get("config")
  current = json.loads(config_lib.to_json(config))
  diffs = config_lib.differences(saved or {}, current)
  if diffs and not config.allow_config_change:
    shown = "\n  ".join(diffs[:20])
    raise CheckpointMismatchError(
        f"{workdir} holds a finished run of a different config; refusing to overwrite "
        f"it. Differing fields:\n  {shown}\nUse another --workdir, or pass "
        "--config.allow_config_change=True to return the finished run anyway.")
  return summary


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Mesh | None = None) -> dict[str, Any]:
  """Runs (or resumes, or returns the finished) stage in `workdir`; returns its
  summary. `workdir` is a local path or any path `etils.epath` reaches (`gs://...`)."""
  config_lib.validate(config)
  done = finished_summary(config, workdir)
  if done is not None:
    log.info("%s: finished already (summary.json); skipped", workdir)
    return done
  r = build(config, mesh)
  # One writer per workdir (process 0 holds the lock on a pod), from the first write
  # to the last; a bad input above has written nothing.
  with lock.hold(workdir):
    return _run_locked(r, config, workdir)


def _run_locked(r: Run, config, workdir: str) -> dict[str, Any]:
  config_json = json.loads(config_lib.to_json(config))
  layout_json = r.layout_json()
  root = epath.Path(workdir)
  summary_path = root / "summary.json"
  ckpt_dir = root / CHECKPOINT_DIR
  _check_resumable(workdir, ckpt_dir, config_json, config.allow_config_change)

  # The initial evaluation reads the whole eval split: a corrupt or empty eval image
  # fails here, before the first write (on resume initial_eval.json exists).
  initial_path = root / "initial_eval.json"
  initial_eval = io.read_json(initial_path) if initial_path.exists() else r.evaluate(r.state)

  # Orbax coordinates the checkpoint writes of every process; process 0 writes the
  # rest (JSON, exports, TensorBoard, the lock).
  lead = io.is_lead()
  if lead:
    io.write_json(root / "config.json", config_json)

  release = config.get("checkpoint_release_memory", True)
  # Said here, in the run's log, if the arena limit came too late (engine/malloc.py).
  malloc.check_arena_limit(config.get("malloc_arena_max", 0))
  checkpointer = Checkpointer(ckpt_dir, keep=config.keep_checkpoints,
                              release_memory=release)
  rewinder = (Checkpointer(root / REWIND_DIR, keep=None, release_memory=release)
              if config.rewind_step >= 0 else None)
  train_iter = r.train_iter()
  state = r.state
  latest = checkpointer.latest_step()
  if latest is not None:
    _check_layout(checkpointer, latest, layout_json, ckpt_dir, config.allow_config_change)
  # summary.json's history: the rows since the last checkpoint in memory, the rest in
  # <workdir>/history/ (one file per checkpoint interval; engine/history.py).
  history = history_lib.History(root, lead=lead)
  good = checkpointer.restore_latest_good(state)
  if good is not None:
    latest, state, data_state, saved_meta = good
    # The log rows up to the checkpoint; those after it are logged again, identically.
    history.resume(latest, saved_meta)
    train_iter.set_state(data_state)
    start_step = latest
    log.info("resumed from %s at step %d", ckpt_dir, latest)
  elif r.fork is not None:
    train_iter.set_state(_forked_data_state(train_iter, r.fork.data_step))
    start_step = r.fork.step
    log.info("forked from %s at step %d", r.fork.workdir, r.fork.step)
  else:
    start_step = 0

  if lead and not initial_path.exists():
    io.write_json(initial_path, initial_eval)
  log.info("%s: initial eval accuracy %.4f loss %.4f", workdir,
           initial_eval["accuracy"], initial_eval["loss"])

  meta = {"config": config_json, "layout": layout_json}
  if rewinder is not None and start_step == config.rewind_step \
      and config.rewind_step not in rewinder.all_steps():
    rewinder.save(start_step, state, train_iter.get_state(), {"step": start_step, **meta})

  writer = monitor.MetricWriter(workdir, enabled=config.tensorboard and lead)
  start_time = time.time()
  eval_every = int(config.eval_every_epochs * r.data.steps_per_epoch)
  progress = monitor.progress_bar(r.stop_step, start_step, enabled=config.progress_bar)
  try:
    with _Preemption() as preemption, jax.transfer_guard("disallow"):
      acc, acc_n = None, 0
      step = start_step
      while step < r.stop_step:
        batch = next(train_iter)
        state, metrics = r.train_step(state, batch)
        faults.point("step")  # the step dispatched, still computing
        step += 1
        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
        acc_n += 1
        last = step == r.stop_step
        if step % config.log_every_steps == 0 or last or preemption.requested:
          with jax.transfer_guard("allow"):
            fetched, bad_step = jax.device_get((acc, state.bad_step))
          _raise_if_bad(bad_step, checkpointer)
          row = monitor.log_row(step, fetched, acc_n, r.layout.masked)
          history.append(row)
          writer.write(step, row)
          progress.update(step, row)
          if not progress.active:
            log.info("step %d/%d  loss %.4f  accuracy %.4f  swaps/step %.1f", step,
                     r.stop_step, row["train/loss"], row["train/accuracy"],
                     row["swaps/total"])
          acc, acc_n = None, 0
        if eval_every and step % eval_every == 0 and not last:
          periodic = r.evaluate(state)
          writer.write(step, {f"eval/{k}": v for k, v in periodic.items()
                              if not isinstance(v, list)})
          history.append({"step": step, **{f"eval/{k}": v for k, v in periodic.items()}})
          log.info("step %d/%d  eval accuracy %.4f  loss %.4f", step, r.stop_step,
                   periodic["accuracy"], periodic["loss"])
        if rewinder is not None and step == config.rewind_step:
          with jax.transfer_guard("allow"):
            _raise_if_bad(jax.device_get(state.bad_step), checkpointer)
          rewinder.save(step, state, train_iter.get_state(), {"step": step, **meta})
        if step % config.checkpoint_every_steps == 0 or last or preemption.requested:
          with jax.transfer_guard("allow"):
            _raise_if_bad(jax.device_get(state.bad_step), checkpointer)
          checkpointer.save(step, state, train_iter.get_state(),
                            {"step": step, **meta,
                             history_lib.META_KEY: history.checkpoint(step)})
        if preemption.requested:
          checkpointer.wait()
          raise Preempted(143)
  except Exception:
    # An XLA error from inside a PyTorch convolution: raise the conv's own error.
    conv_lib.raise_pending_errors()
    raise
  finally:
    progress.close()
    checkpointer.wait()
    if rewinder is not None:
      rewinder.wait()
    writer.close()

  final_eval = r.evaluate(state)
  wall = time.time() - start_time
  summary = summarize(r, state, initial_eval=initial_eval, final_eval=final_eval,
                      history=history.rows(), wall_time_s=wall, config_json=config_json)
  if lead:
    export_stage(workdir, r, state)
  log.info("%s: final eval accuracy %.4f loss %.4f after %d steps (%.0f s)", workdir,
           final_eval["accuracy"], final_eval["loss"], int(r.stop_step), wall)
  if lead:
    io.write_json(summary_path, summary)   # last: it marks the stage finished
  checkpointer.close()
  if rewinder is not None:
    rewinder.close()
  return summary


def sibling_dir(workdir: str, i: int) -> str:
  return os.fspath(epath.Path(workdir) / "siblings" / str(i))


def copy_of(tree, i: int | None):
  """Copy `i` of a tree with a sibling axis (the tree itself when `i` is None)."""
  return tree if i is None else jax.tree.map(lambda x: x[i], tree)


def export_stage(workdir: str, r: Run, state) -> None:
  """Exports the stage's result; with siblings, one finished-run folder per copy in
  `<workdir>/siblings/<i>/` (each loadable with `load_run`)."""
  with jax.transfer_guard("allow"):
    host = jax.device_get(state)
  kw = dict(model_name=r.config.model.name, model_kwargs=r.config.model.kwargs.to_dict(),
            masked=r.layout.masked, train_scores=r.program.train_scores)
  if not r.siblings:
    io.export(workdir, state=host, **kw)
    return
  for i in range(r.siblings):
    io.export(sibling_dir(workdir, i), state=copy_of(host, i), **kw)


def summarize(r: Run, state, *, initial_eval, final_eval, history, wall_time_s,
              config_json) -> dict[str, Any]:
  with jax.transfer_guard("allow"):
    host = jax.device_get(state)
  copies = range(r.siblings) if r.siblings else [None]
  per_copy = []
  for i in copies:
    one = copy_of(host, i)
    masks = io.plain(one.masks)
    summ = mask_algebra.summary(masks)
    flags = io.flatten_dict(io.plain(r.layout.masked))
    flat_masks = io.flatten_dict(masks)
    per_layer = {k: float(1.0 - np.mean(v)) for k, v in flat_masks.items() if bool(flags[k])}
    pruned = sum(int(np.size(v) - np.sum(v)) for k, v in flat_masks.items() if bool(flags[k]))
    n_masked = sum(int(np.size(v)) for k, v in flat_masks.items() if bool(flags[k]))
    entry: dict[str, Any] = {
        "sparsity": {
            "target": r.config.sparsity,
            "of_pruned_layers": pruned / max(n_masked, 1),
            "of_all_weights": summ.total_all.sparsity,
            "per_layer": per_layer,
        }}
    if r.config.analysis.enabled:
      entry.update(analyses.run_all(r.program.analyses, r, one))
    per_copy.append(entry)
  steps = int(np.asarray(host.step).reshape(-1)[0])
  out: dict[str, Any] = {
      "final_eval": final_eval,
      "initial_eval": initial_eval,
      "steps": steps,
      "epochs": steps / r.data.steps_per_epoch,
      "wall_time_s": wall_time_s,
      "mask_program": r.program.name,
      "update_rule": r.program.update.name,
      **per_copy[0],
      "history": history,
      "config": config_json,
  }
  if r.siblings:
    out["per_sibling"] = per_copy
    out["sibling_data_seeds"] = [data_seed(r.config.seed, i) for i in range(r.siblings)]
  if r.fork is not None:
    out["forked_from"] = {"workdir": r.fork.workdir, "step": r.fork.step}
  return out


def _forked_data_state(train_iter, data_step: int) -> dict:
  """The iterator state that continues at the fork's data position with this
  stage's own pipeline (its own data order when its seed differs)."""
  state = train_iter.get_state()
  state = json.loads(json.dumps(state))
  _set_steps(state, data_step)
  return state


def _set_steps(state: dict, step: int) -> None:
  state["step"] = int(step)
  for sub in state.get("siblings", []):
    _set_steps(sub, step)


def _raise_if_bad(bad_step, checkpointer: Checkpointer):
  # A failed PyTorch convolution (config.model.conv="torch") names itself first,
  # rather than showing up as a non-finite loss.
  conv_lib.raise_pending_errors()
  bad_step = int(np.max(np.asarray(bad_step)))
  if bad_step >= 0:
    latest = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in "
            f"{checkpointer.directory}" if latest is not None else "no checkpoint was written")
    raise NonFiniteLossError(
        f"the training loss became NaN or inf at step {bad_step}; stopped without saving "
        f"that state, {kept}. Lower optimizer.learning_rate or check the input data.")


def _check_resumable(workdir, ckpt_dir, config_json, allow_change: bool):
  path = epath.Path(workdir) / "config.json"
  if not path.exists() or not epath.Path(ckpt_dir).is_dir():
    return
  saved = io.read_json(path)
  diffs = config_lib.differences(saved, config_json)
  if diffs and not allow_change:
    shown = "\n  ".join(diffs[:20])
    raise CheckpointMismatchError(
        f"{workdir} holds a checkpoint of a different config; refusing to resume. "
        f"Differing fields:\n  {shown}\nUse another --workdir, or pass "
        "--config.allow_config_change=True to resume anyway.")


def _check_layout(checkpointer: Checkpointer, step: int, layout_json: dict, ckpt_dir: str,
                  allow_change: bool) -> None:
  try:
    saved = checkpointer.read_meta(step).get("layout")
  except Exception:  # a damaged checkpoint: restore_latest_good names it, skips it
    return
  if saved is None or allow_change or programs.layout_json_equal(saved, layout_json):
    return
  raise CheckpointMismatchError(
      f"the checkpoint in {ckpt_dir} (step {step}) has another mask layout (masked leaves, "
      "prune counts or partition) than this config builds; refusing to resume. Use "
      "another --workdir.")
