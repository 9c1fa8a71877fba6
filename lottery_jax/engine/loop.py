"""`run(config, workdir)`: one training or search run, resumable, sharded.

Order of business, so that a bad input never touches the workdir:
1. validate the config, build data, model and starting weights (any mismatch
   raises here, before anything is written);
2. compare with the workdir's checkpoint (refuse to resume a different config);
3. train under `jax.transfer_guard("disallow")`, fetching metrics explicitly at
   log intervals, checkpointing periodically and on SIGTERM;
4. evaluate, analyse, export, write `summary.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax import data as data_lib
from lottery_jax import masks as mask_algebra
from lottery_jax import models
from lottery_jax.engine import config as config_lib
from lottery_jax.engine import results
from lottery_jax.engine.checkpoint import Checkpointer
from lottery_jax.engine.errors import CheckpointMismatchError, NonFiniteLossError
from lottery_jax.engine.optim import make_optimizer
from lottery_jax.engine.state import Program, TrainState, score_placeholders
from lottery_jax.engine.step import make_eval_step, make_train_step
from lottery_jax.search import jackpot

log = logging.getLogger("lottery_jax")


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ("data",))


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


def program_of(config) -> Program:
  return Program(train_weights=config.train == "weights",
                 train_scores=config.train == "scores", mask_update=config.mask.update_rule)


def total_steps_of(config, steps_per_epoch: int) -> int:
  if config.num_steps > 0:
    return int(config.num_steps)
  return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def rate_fn_of(config, total_steps: int):
  from lottery_jax import search
  if config.mask.rate_schedule == "constant":
    return search.constant_rate(config.mask.rate)
  decay = search.decaying_rate(total_steps, config.mask.rate_power)
  return lambda step: config.mask.rate * decay(step)


def exclusion_predicate(config, spec: models.ModelSpec):
  patterns = list(config.exclude)
  if not config.prune_classifier:
    patterns.append("/".join(spec.classifier))
  else:
    patterns = [p for p in patterns if p not in ("classifier", "/".join(spec.classifier))]
  return mask_algebra.prunable_except(*patterns) if patterns else mask_algebra.prunable


def build(config: ml_collections.ConfigDict, mesh: Mesh):
  """Everything static about a run, plus its initial state (no I/O to the workdir)."""
  config_lib.validate(config)
  data = data_lib.build(config.data, mesh=mesh, seed=config.seed)
  spec = models.spec(config.model.name)
  model = models.get(config.model.name, num_classes=data.info.num_classes,
                     **config.model.kwargs.to_dict())
  if tuple(data.info.input_shape) != tuple(spec.input_shape):
    log.info("model %s registered for input %s, data gives %s", spec.name,
             spec.input_shape, data.info.input_shape)
  key = jax.random.PRNGKey(config.seed)
  init_key, mask_key, state_key = jax.random.split(key, 3)
  dummy = jnp.zeros((1, *data.info.input_shape), jnp.float32)
  with jax.transfer_guard("allow"):
    variables = jax.jit(lambda k: model.init(k, dummy, train=False))(init_key)
  variables = {"params": variables["params"],
               "batch_stats": variables.get("batch_stats", {})}
  if config.pretrained:
    variables = results.load_pretrained(config.pretrained, config.model.name,
                                        data.info.num_classes, like=variables)

  program = program_of(config)
  where = exclusion_predicate(config, spec)
  params = variables["params"]
  if config.mask.from_pretrained:
    space, masks = _masks_of_run(config.pretrained, params, where)
    scores = score_placeholders(params)
  elif config.sparsity > 0:
    space = jackpot.search_space(params, config.sparsity, config.allocation, where)
  else:
    space = jackpot.SearchSpace(
        searched=jax.tree.map(lambda _: False, params),
        sparsities=jax.tree.map(lambda _: 0.0, params),
        prune_counts=jax.tree.map(lambda _: 0, params))
  if config.mask.from_pretrained:
    pass
  elif config.sparsity > 0:
    masks, scores = jackpot.initial_masks_and_scores(
        mask_key, params, space, config.mask.score_init)
  else:
    masks = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    scores = score_placeholders(params)
  if program.train_weights:
    # Fine-tuning or IMP under a fixed mask starts from exactly-zero pruned weights.
    params = mask_algebra.apply(params, masks)
    scores = score_placeholders(params)

  total = total_steps_of(config, data.steps_per_epoch)
  tx = make_optimizer(config.optimizer, total, data.steps_per_epoch)
  trainable = {"params": params} if program.train_weights else {"scores": scores}
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables["batch_stats"], scores=scores, masks=masks,
      opt_state=tx.init(trainable), rng=state_key,
      bad_step=jnp.full((), -1, jnp.int32))
  replicated = NamedSharding(mesh, P())
  with jax.transfer_guard("allow"):
    state = jax.device_put(state, replicated)
  train_step = make_train_step(
      model, tx, program, searched=space.searched, prune_counts=space.prune_counts,
      rate_fn=rate_fn_of(config, total) if program.mask_update == "swap" else None,
      max_swaps=config.mask.max_swaps or None, mesh=mesh, conv_impl=config.model.conv)
  eval_step = make_eval_step(model, searched=space.searched, mesh=mesh,
                             conv_impl=config.model.conv)
  # Host copies: the device buffers of the state are donated to the first step.
  with jax.transfer_guard("allow"):
    initial_masks, pretrained = jax.device_get((masks, variables))
  return _Run(config=config, mesh=mesh, data=data, model=model, spec=spec,
              program=program, space=space, state=state, initial_masks=initial_masks,
              total_steps=total, train_step=train_step, eval_step=eval_step,
              pretrained=pretrained, mask_key=jax.random.fold_in(mask_key, 1))  # not the init key


def _masks_of_run(workdir: str, params, where):
  """The masks of a finished run (for fine-tuning its sub-network)."""
  masks = results.load_run(workdir)["masks"]
  results.check_like({"params": masks}, {"params": params}, f"{workdir} (masks)")
  masks = jax.tree.map(lambda m: jnp.asarray(m, bool), masks)
  searched = jax.tree_util.tree_map_with_path(lambda p, w: bool(where(p, w)), params)
  sparsities = jax.tree.map(lambda m: float(1.0 - np.mean(np.asarray(m))), masks)
  counts = jax.tree.map(lambda m: int(np.size(m) - np.sum(np.asarray(m))), masks)
  return jackpot.SearchSpace(searched, sparsities, counts), masks


class _Run:

  def __init__(self, **kw):
    self.__dict__.update(kw)

  def evaluate(self, state) -> dict[str, float]:
    totals = None
    for batch in self.data.eval_iter():
      out = self.eval_step(state, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    with jax.transfer_guard("allow"):
      totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"accuracy": float(totals["correct"]) / count,
            "loss": float(totals["loss"]) / count, "examples": int(totals["count"])}


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Mesh | None = None) -> dict[str, Any]:
  """Runs (or resumes) one run in `workdir`; returns the summary it writes."""
  if config.multihost:
    jax.distributed.initialize()
  mesh = mesh or make_mesh()
  r = build(config, mesh)
  config_json = json.loads(config_lib.to_json(config))

  summary_path = os.path.join(workdir, "summary.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _check_resumable(workdir, ckpt_dir, config_json, config.allow_config_change)

  # On a pod the workdir is a shared filesystem (Filestore/NFS, or a bucket mounted
  # with gcsfuse); Orbax coordinates the checkpoint writes, process 0 writes the rest.
  lead = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if lead:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_json, f, indent=1, sort_keys=True)

  checkpointer = Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
  train_iter = r.data.train_iter()
  state = r.state
  start_step = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state, _ = checkpointer.restore(latest, state)
    train_iter.set_state(data_state)
    start_step = latest
    log.info("resumed from %s at step %d", ckpt_dir, latest)

  initial_path = os.path.join(workdir, "initial_eval.json")
  if os.path.exists(initial_path):
    with open(initial_path) as f:
      initial_eval = json.load(f)
  else:
    initial_eval = r.evaluate(state)
    if lead:
      with open(initial_path, "w") as f:
        json.dump(initial_eval, f)
  log.info("%s: initial eval accuracy %.4f loss %.4f", workdir,
           initial_eval["accuracy"], initial_eval["loss"])

  writer = results.MetricWriter(workdir, enabled=config.tensorboard)
  start_time = time.time()
  history: list[dict[str, Any]] = []
  eval_every = int(config.eval_every_epochs * r.data.steps_per_epoch)
  progress = results.progress_bar(r.total_steps, start_step,
                                  enabled=config.progress_bar)
  try:
    with _Preemption() as preemption, jax.transfer_guard("disallow"):
      acc, acc_n = None, 0
      step = start_step
      while step < r.total_steps:
        batch = next(train_iter)
        state, metrics = r.train_step(state, batch)
        step += 1
        acc = metrics if acc is None else _accumulate(acc, metrics)
        acc_n += 1
        last = step == r.total_steps
        if step % config.log_every_steps == 0 or last or preemption.requested:
          with jax.transfer_guard("allow"):
            fetched, bad_step = jax.device_get((acc, state.bad_step))
          _raise_if_bad(bad_step, checkpointer)
          row = results.log_row(step, fetched, acc_n, r.space.searched)
          history.append(row)
          writer.write(step, row)
          progress.update(step, row)
          if not progress.active:
            log.info("step %d/%d  loss %.4f  accuracy %.4f  swaps/step %.1f", step,
                     r.total_steps, row["train/loss"], row["train/accuracy"],
                     row["swaps/total"])
          acc, acc_n = None, 0
        if eval_every and step % eval_every == 0 and not last:
          periodic = r.evaluate(state)
          writer.write(step, {f"eval/{k}": v for k, v in periodic.items()})
          log.info("step %d/%d  eval accuracy %.4f  loss %.4f", step, r.total_steps,
                   periodic["accuracy"], periodic["loss"])
        if step % config.checkpoint_every_steps == 0 or last or preemption.requested:
          with jax.transfer_guard("allow"):
            _raise_if_bad(jax.device_get(state.bad_step), checkpointer)
          checkpointer.save(step, state, train_iter.get_state(),
                            {"step": step, "config": config_json})
        if preemption.requested:
          checkpointer.wait()
          raise Preempted(143)
  finally:
    progress.close()
    checkpointer.wait()
    writer.close()

  final_eval = r.evaluate(state)
  wall = time.time() - start_time
  summary = results.summarize(r, state, initial_eval=initial_eval,
                              final_eval=final_eval, history=history,
                              wall_time_s=wall, config_json=config_json)
  if lead:
    results.export(workdir, r, state)
  log.info("%s: final eval accuracy %.4f loss %.4f after %d steps (%.0f s)", workdir,
           final_eval["accuracy"], final_eval["loss"], int(r.total_steps), wall)
  if lead:
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=1, default=float)
  checkpointer.close()
  return summary


def _accumulate(acc, metrics):
  return jax.tree.map(jnp.add, acc, metrics)


def _raise_if_bad(bad_step, checkpointer: Checkpointer):
  bad_step = int(bad_step)
  if bad_step >= 0:
    latest = checkpointer.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in "
            f"{checkpointer.directory}" if latest is not None else "no checkpoint was written")
    raise NonFiniteLossError(
        f"the training loss became NaN or inf at step {bad_step}; stopped without saving "
        f"that state, {kept}. Lower optimizer.learning_rate or check the input data.")


def _check_resumable(workdir, ckpt_dir, config_json, allow_change: bool):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.isdir(ckpt_dir):
    return
  with open(path) as f:
    saved = json.load(f)
  diffs = config_lib.differences(saved, config_json)
  if diffs and not allow_change:
    shown = "\n  ".join(diffs[:20])
    raise CheckpointMismatchError(
        f"{workdir} holds a checkpoint of a different config; refusing to resume. "
        f"Differing fields:\n  {shown}\nUse another --workdir, or pass "
        "--config.allow_config_change=True to resume anyway.")
