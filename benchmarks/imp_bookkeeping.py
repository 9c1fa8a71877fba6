"""What IMP's bookkeeping costs beside its training, per level (issue 13.6).

Run:  python benchmarks/imp_bookkeeping.py [--model digits_cnn|cifar_resnet20]
                                          [--levels 3] [--steps 0] [--controls]
                                          [--workdir DIR] [--json FILE]

It runs a real IMP experiment (`experiment="imp"`, the engine's stages: level_0 dense
with a rewind point, then level_L forked from level_0 at step k with the mask pruned
from level L-1) and times, with wall clocks wrapped around the engine's own functions
(nothing is re-implemented here):

* **prune**: reading the previous level (`io.load_mask_source`: its masks and final
  weights) and the mask program's `layout` + `init` (the global magnitude selection);
* **rewind**: reading level_0's state at step k (`loop._load_fork`: Orbax restore of
  params, BatchNorm statistics, optimiser state and data position);
* **stage switch**: everything else `loop.run` does around the training loop: building
  the model, data pipeline and optimiser (`loop.build` minus prune and rewind), the
  initial and final evaluations, checkpoint writes (`Checkpointer.save` + `wait`) and
  the export of the finished stage (`loop.export_stage`), and the first train step
  (which includes XLA compilation, reported separately as `compile+1st step`);
* **train**: the train steps after the first, each ended by `block_until_ready` so the
  time lands on the step that spent it (the loop itself does not block; that costs a
  little, so `train` slightly over-counts, which makes the ratio below conservative).

`bookkeeping / train` is (prune + rewind + stage switch, without compilation) over
train. The fixed costs do not grow with the level's length, so the table also gives
s/step: multiply by your steps per level to scale the ratio to your run.

`--model digits_cnn` runs configs/imp_quick.py (scikit-learn digits, embedded);
`--model cifar_resnet20` runs the same experiment on ResNet-20 with synthetic
CIFAR-shaped data (batch 128; the data source of benchmarks/search_step.py), since
timing needs no real images. `--steps N` sets steps per level (0 = the config's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step  # noqa: E402  (registers the synthetic data source)
from lottery_jax import experiments, models  # noqa: E402
from lottery_jax.engine import checkpoint, loop, programs, stages  # noqa: E402
from lottery_jax.engine.config import base_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
  """Wall time per (stage, part); the current stage is set around `loop.run`."""

  def __init__(self):
    self.stage = "?"
    self.t: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    self.steps: dict[str, int] = defaultdict(int)

  @contextlib.contextmanager
  def part(self, name: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.t[self.stage][name] += time.perf_counter() - t0


def timed(clock: Clock, name: str, fn):
  def wrapper(*a, **kw):
    with clock.part(name):
      return fn(*a, **kw)
  return wrapper


@contextlib.contextmanager
def instrumented(clock: Clock):
  """Wraps the engine's functions with the clock for the duration (restored after)."""
  saved = []

  def patch(obj, attr, new):
    saved.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, new)

  orig_run, orig_build = loop.run, loop.build

  def run(config, workdir, mesh=None):
    clock.stage = os.path.basename(os.path.normpath(workdir))
    with clock.part("total"):
      return orig_run(config, workdir, mesh)

  def build(config, mesh=None):
    with clock.part("build"):
      r = orig_build(config, mesh)
    step = r.train_step
    name = clock.stage

    def train_step(state, batch):
      part = "train" if clock.steps[name] else "compile+1st step"
      with clock.part(part):
        out = jax.block_until_ready(step(state, batch))
      clock.steps[name] += 1
      return out

    return dataclasses.replace(r, train_step=train_step)

  orig_get_program = programs.get_program

  def get_program(config, total_steps):
    p = orig_get_program(config, total_steps)
    return dataclasses.replace(p, layout=timed(clock, "prune", p.layout),
                               init=timed(clock, "prune", p.init))

  patch(loop, "run", run)
  patch(loop, "build", build)
  patch(loop, "_load_fork", timed(clock, "rewind", loop._load_fork))
  patch(loop.io, "load_mask_source", timed(clock, "prune", loop.io.load_mask_source))
  patch(programs, "get_program", get_program)
  patch(loop.Run, "evaluate", timed(clock, "eval", loop.Run.evaluate))
  patch(loop, "export_stage", timed(clock, "export", loop.export_stage))
  patch(checkpoint.Checkpointer, "save", timed(clock, "checkpoint",
                                                checkpoint.Checkpointer.save))
  patch(checkpoint.Checkpointer, "wait", timed(clock, "checkpoint",
                                                checkpoint.Checkpointer.wait))
  try:
    yield
  finally:
    for obj, attr, old in reversed(saved):
      setattr(obj, attr, old)


def make_config(model: str, levels: int, steps: int, controls: bool):
  if model == "digits_cnn":
    sys.path.insert(0, REPO)
    from configs import imp_quick
    c = imp_quick.get_config()
  else:
    spec = models.spec(model)
    search_step._SYNTHETIC.update(shape=tuple(spec.input_shape), classes=10, examples=1280)
    c = base_config()
    c.experiment = "imp"
    c.model.name = model
    c.data.name = "_bench_synthetic"
    c.data.batch_size = 128
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.imp.prune_fraction = 0.2
    c.imp.scope = "global"
    c.num_steps = steps or 100
  c.imp.levels = levels
  c.imp.controls = controls
  c.progress_bar = False
  c.tensorboard = False
  if steps:
    c.num_steps = steps
    c.num_epochs = 0.0
  return c


def table(clock: Clock) -> tuple[str, list[dict]]:
  rows = []
  for stage, t in clock.t.items():
    if stage == "?":
      continue
    build = t.get("build", 0.0) - t.get("prune", 0.0) - t.get("rewind", 0.0)
    switch = (build + t.get("eval", 0.0) + t.get("checkpoint", 0.0) + t.get("export", 0.0))
    loop_other = (t["total"] - t.get("build", 0.0) - t.get("eval", 0.0)
                  - t.get("checkpoint", 0.0) - t.get("export", 0.0)
                  - t.get("train", 0.0) - t.get("compile+1st step", 0.0))
    switch += max(loop_other, 0.0)   # data iteration, logging, lock/JSON writes
    steps = max(clock.steps[stage] - 1, 1)
    book = t.get("prune", 0.0) + t.get("rewind", 0.0) + switch
    rows.append({"stage": stage, "total_s": t["total"], "prune_s": t.get("prune", 0.0),
                 "rewind_s": t.get("rewind", 0.0), "switch_s": switch,
                 "compile_s": t.get("compile+1st step", 0.0), "train_s": t.get("train", 0.0),
                 "build_s": build, "eval_s": t.get("eval", 0.0),
                 "checkpoint_s": t.get("checkpoint", 0.0), "export_s": t.get("export", 0.0),
                 "loop_other_s": max(loop_other, 0.0),
                 "steps": clock.steps[stage], "s_per_step": t.get("train", 0.0) / steps,
                 "bookkeeping_over_train": book / max(t.get("train", 0.0), 1e-9)})
  lines = ["| stage | steps | train s | s/step | compile+1st step s | prune s | rewind s | "
           "stage switch s (build / eval / checkpoint / export / other) | bookkeeping / train | "
           "total s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['stage']} | {r['steps']} | {r['train_s']:.2f} | "
                 f"{r['s_per_step'] * 1e3:.1f} ms | {r['compile_s']:.2f} | "
                 f"{r['prune_s']:.3f} | {r['rewind_s']:.3f} | {r['switch_s']:.2f} ({r['build_s']:.2f} / "
                 f"{r['eval_s']:.2f} / {r['checkpoint_s']:.2f} / {r['export_s']:.2f} / "
                 f"{r['loop_other_s']:.2f}) | "
                 f"{100 * r['bookkeeping_over_train']:.1f}% | {r['total_s']:.1f} |")
  pruned = [r for r in rows if r["stage"].startswith("level_") and r["stage"] != "level_0"]
  if pruned:
    lines.append("")
    lines.append("Pruned levels, median: prune "
                 f"{statistics.median(r['prune_s'] for r in pruned):.3f} s, rewind "
                 f"{statistics.median(r['rewind_s'] for r in pruned):.3f} s, stage switch "
                 f"{statistics.median(r['switch_s'] for r in pruned):.2f} s, train "
                 f"{statistics.median(r['train_s'] for r in pruned):.2f} s "
                 f"({statistics.median(r['s_per_step'] for r in pruned) * 1e3:.1f} ms/step); "
                 "bookkeeping / train "
                 f"{100 * statistics.median(r['bookkeeping_over_train'] for r in pruned):.1f}%")
  return "\n".join(lines), rows


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="digits_cnn", choices=["digits_cnn", "cifar_resnet20"])
  ap.add_argument("--levels", type=int, default=3)
  ap.add_argument("--steps", type=int, default=0, help="steps per level (0: the config's)")
  ap.add_argument("--controls", action="store_true", help="also the two control stages")
  ap.add_argument("--workdir", default="", help="default: a temporary directory")
  ap.add_argument("--json", default="", help="also write the rows here")
  args = ap.parse_args(argv)
  config = make_config(args.model, args.levels, args.steps, args.controls)
  clock = Clock()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or os.path.join(tmp, "imp")
    start = time.perf_counter()
    with instrumented(clock):
      experiments.run(config, workdir)
    wall = time.perf_counter() - start
  text, rows = table(clock)
  print(f"IMP bookkeeping, {args.model}, {args.levels} levels, controls={args.controls}, "
        f"{jax.device_count()} device(s), {jax.default_backend()}; wall {wall:.1f} s")
  print(text)
  out = {"model": args.model, "levels": args.levels, "controls": args.controls,
         "wall_s": wall, "rows": rows, "argv": sys.argv[1:] if argv is None else argv}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
