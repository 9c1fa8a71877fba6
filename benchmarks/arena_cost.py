"""What capping glibc's malloc arenas costs in speed (issue 17.6, `config.malloc_arena_max`).

Run:  python benchmarks/arena_cost.py [--rounds 3] [--cap 2] [--workloads loop,cifar]

Each workload is a whole `python -m lottery_jax.main` process, as a user runs it, once
with the default (glibc's own arena limit, 8 per core) and once with
`--config.malloc_arena_max=<cap>`; the two alternate within a round, and which goes
first alternates between rounds, so that slow drift of the shared machine falls on
both. The figure is steps per second between two logged steps after the warm-up
(compilation, the first saves), read from the run's own log timestamps:

* loop:  the soak's configuration (benchmarks/soak.py: the digits CNN's jackpot
         search on random weights, TensorBoard on, a checkpoint every 500 steps),
         4,000 steps, timed over steps 1,000-4,000 (six saves inside the window).
* cifar: a jackpot search of CIFAR ResNet-20 on the CIFAR-10 zip (batch 256, the
         engine's default "xla" convolutions, grain's JPEG decoding threads), 160
         steps from the committed pretrained network, a checkpoint every 50 steps,
         timed over steps 40-160.

Prints each run and then, per workload, the median steps/s of each variant and the
median of the per-round ratios capped/default (below 1: the cap is slower).
Measured: docs/reliability.md ("What the cap costs in speed").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_ZIP = os.path.join(REPO, "..", "shared", "datasets", "cifar10-jpeg.zip")
PRETRAINED = os.path.join(REPO, "benchmarks", "checkpoints", "resnet20_cifar10_restart")
# absl's line prefix: I1203 11:50:30.414001 <thread> loop.py:462] step 550/1950  loss
LINE = re.compile(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+) .*\] step (\d+)/(\d+)\s+loss")

WORKLOADS = {
    # name: (arguments after `-m lottery_jax.main`, first timed step, last timed step)
    "loop": ([f"--config={REPO}/tests/configs/tiny_search.py",
              "--config.search_random_weights=True", "--config.num_steps=4000",
              "--config.log_every_steps=50", "--config.checkpoint_every_steps=500",
              "--config.tensorboard=True", "--config.progress_bar=False"], 1000, 4000),
    "cifar": ([f"--config={REPO}/configs/jackpot_r32_cifar10.py:folder={CIFAR_ZIP}",
               "--config.model.name=cifar_resnet20", f"--config.pretrained={PRETRAINED}",
               "--config.num_steps=160", "--config.log_every_steps=20",
               "--config.checkpoint_every_steps=50", "--config.eval_every_epochs=0",
               "--config.progress_bar=False"], 40, 160),
}


def steps_per_second(log: str, first: int, last: int) -> float:
  times = {}
  for line in log.splitlines():
    m = LINE.match(line)
    if m:
      t = datetime.strptime(m.group(2), "%H:%M:%S.%f")
      times[int(m.group(3))] = t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
  if first not in times or last not in times:
    raise RuntimeError(f"steps {first} and {last} not both logged; the log ends:\n"
                       + "\n".join(log.splitlines()[-15:]))
  seconds = times[last] - times[first]
  if seconds < 0:  # the run crossed midnight
    seconds += 86400
  return (last - first) / seconds


def run_once(name: str, cap: int, root: str) -> float:
  args, first, last = WORKLOADS[name]
  workdir = tempfile.mkdtemp(prefix=f"{name}_cap{cap}_", dir=root)
  cmd = [sys.executable, "-m", "lottery_jax.main", *args, f"--workdir={workdir}"]
  if cap:
    cmd.append(f"--config.malloc_arena_max={cap}")
  env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  if p.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
  return steps_per_second(p.stderr + p.stdout, first, last)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--cap", type=int, default=2)
  ap.add_argument("--workloads", default="loop,cifar")
  ap.add_argument("--root", default=None, help="where the runs' workdirs go (a temp dir)")
  a = ap.parse_args()
  names = a.workloads.split(",")
  for n in names:
    if n not in WORKLOADS:
      sys.exit(f"--workloads: unknown workload {n!r}; known: {', '.join(WORKLOADS)}")
  root = a.root or tempfile.mkdtemp(prefix="arena_cost_")
  got = {n: {0: [], a.cap: []} for n in names}
  for r in range(a.rounds):
    for n in names:
      order = (0, a.cap) if r % 2 == 0 else (a.cap, 0)
      for cap in order:
        rate = run_once(n, cap, root)
        got[n][cap].append(rate)
        print(f"round {r + 1} {n:5s} malloc_arena_max={cap}: {rate:.3f} steps/s", flush=True)
  print(f"\n| workload | default steps/s | malloc_arena_max={a.cap} steps/s | capped / default, "
        "per round | median ratio |\n|---|---|---|---|---|")
  for n in names:
    d, c = got[n][0], got[n][a.cap]
    ratios = [x / y for x, y in zip(c, d)]
    print(f"| {n} | {statistics.median(d):.3f} | {statistics.median(c):.3f} | "
          f"{', '.join(f'{x:.3f}' for x in ratios)} | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
  main()
