"""Soak: a long small run's resident memory (RSS) against steps (issue 17.6).

Run:  nice -n 19 python benchmarks/soak.py [--workdir runs/soak] [--steps 20000]
          [--set checkpoint_release_memory=False] [--set malloc_arena_max=2]

Runs `python -m lottery_jax.main` on the embedded digits data set (a jackpot search
over the tiny digits CNN of tests/configs/tiny_search.py on random weights, with
TensorBoard, periodic checkpoints, logging and the progress machinery all on) as a
child process, and samples the child's memory each time it logs a step: RSS and its anonymous part (RssAnon of
/proc/<pid>/status: heap, arenas, JAX buffers; without the mapped library pages that
the kernel may drop from RSS at any time, which on this VM moved RSS by 200 MB in one
sample). Samples go to `<workdir>.samples.csv` (step, seconds, rss, rss_anon bytes);
running the same command again after an interruption resumes both the run (its
checkpoints) and the samples.

At the end it fits RssAnon = a + b * step by least squares over the samples after the
warm-up (`--skip` of the steps: compilation, caches, the allocator's first arenas)
and prints the slope b in KiB per 1,000 steps with its standard error, the growth
the fit predicts over the whole run, and the spread of the residuals (the noise the
slope is judged against). Goal: slope within noise of zero. A fall of RssAnon by over 50 MiB between two samples
(glibc returning a block of free heap at once, as it does about step 13,900 of a run
without periodic saves) is a one-time release, not a trend: the fits then start after
the last such fall, and the script says so.

Measured: see docs/reliability.md ("Soak").
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"step (\d+)/(\d+)\s+loss")


def command(workdir: str, steps: int, log_every: int, checkpoint_every: int,
            overrides: tuple[str, ...] = ()) -> list[str]:
  return [sys.executable, "-m", "lottery_jax.main",
          f"--config={REPO}/tests/configs/tiny_search.py", f"--workdir={workdir}",
          "--config.search_random_weights=True", f"--config.num_steps={steps}",
          f"--config.log_every_steps={log_every}",
          f"--config.checkpoint_every_steps={checkpoint_every}",
          "--config.tensorboard=True", "--config.progress_bar=False",
          *(f"--config.{o}" for o in overrides)]


def read_samples(path: str) -> list[tuple[int, float, int]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [(int(r[0]), float(r[1]), int(r[2]), int(r[3])) for r in csv.reader(f)
            if r and r[0] != "step"]


def rss_anon(pid: int) -> int:
  """RssAnon of /proc/<pid>/status in bytes (Linux)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no RssAnon in /proc/<pid>/status (Linux only)")


def run(workdir: str, steps: int, log_every: int, checkpoint_every: int,
        samples_path: str, overrides: tuple[str, ...] = ()) -> int:
  """Runs (or resumes) the child, appending a sample per logged step; its exit code."""
  new = not os.path.exists(samples_path)
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(command(workdir, steps, log_every, checkpoint_every, overrides),
                          cwd=REPO,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, bufsize=1)
  child = psutil.Process(proc.pid)
  start = time.time()
  with open(samples_path, "a", newline="") as f:
    out = csv.writer(f)
    if new:
      out.writerow(["step", "seconds", "rss_bytes", "rss_anon_bytes"])
    for line in proc.stderr:
      m = STEP_LINE.search(line)
      if m:
        try:
          rss, anon = child.memory_info().rss, rss_anon(proc.pid)
        except (psutil.NoSuchProcess, FileNotFoundError):
          break
        out.writerow([int(m.group(1)), round(time.time() - start, 3), rss, anon])
        f.flush()
      elif "error" in line.lower():
        sys.stderr.write(line)
  return proc.wait()


def last_release(samples: list[tuple[int, float, int, int]],
                 threshold: int = 50 * 2**20) -> tuple[int, int] | None:
  """(step, bytes) of the last fall of RssAnon by more than `threshold` between two
  samples: glibc handing a large block of free heap back at once (without periodic
  saves, and so without their malloc_trim, about 190 MiB between steps 13,850 and
  13,900 of every such soak here). None if there is none."""
  falls = [(samples[i][0], samples[i - 1][3] - samples[i][3])
           for i in range(1, len(samples))
           if samples[i - 1][3] - samples[i][3] > threshold]
  return falls[-1] if falls else None


def fit(samples: list[tuple[int, float, int, int]], skip: float, column: int = 3,
        from_step: int = 0) -> dict:
  """Least-squares slope of column `column` (3 RssAnon, 2 RSS) over the samples past
  `skip` of the last step and from step `from_step` on."""
  steps = np.array([s[0] for s in samples], np.float64)
  rss = np.array([s[column] for s in samples], np.float64)
  keep = (steps >= skip * steps.max()) & (steps >= from_step)
  x, y = steps[keep], rss[keep]
  if x.size < 3:
    raise SystemExit(f"only {x.size} samples after the warm-up; run longer")
  A = np.stack([np.ones_like(x), x], axis=1)
  coef, *_ = np.linalg.lstsq(A, y, rcond=None)
  resid = y - A @ coef
  dof = max(x.size - 2, 1)
  sigma2 = float(resid @ resid) / dof
  cov = sigma2 * np.linalg.inv(A.T @ A)
  return {"samples": int(x.size), "from_step": int(x.min()), "to_step": int(x.max()),
          "slope_kib_per_1000_steps": float(coef[1]) * 1000 / 1024,
          "slope_stderr_kib_per_1000_steps": float(np.sqrt(cov[1, 1])) * 1000 / 1024,
          "predicted_growth_mib": float(coef[1]) * (x.max() - x.min()) / 2**20,
          "residual_std_mib": float(np.sqrt(sigma2)) / 2**20,
          "rss_first_mib": float(y[0]) / 2**20, "rss_last_mib": float(y[-1]) / 2**20,
          "rss_min_mib": float(y.min()) / 2**20, "rss_max_mib": float(y.max()) / 2**20}


def report(result: dict, what: str) -> str:
  r = result
  return (f"{what} over steps {r['from_step']}-{r['to_step']} ({r['samples']} samples): "
          f"slope {r['slope_kib_per_1000_steps']:+.2f} +- "
          f"{r['slope_stderr_kib_per_1000_steps']:.2f} KiB per 1,000 steps "
          f"(predicted growth over the span {r['predicted_growth_mib']:+.2f} MiB; "
          f"residual std {r['residual_std_mib']:.2f} MiB; {r['rss_first_mib']:.1f} -> "
          f"{r['rss_last_mib']:.1f} MiB, range {r['rss_min_mib']:.1f}-"
          f"{r['rss_max_mib']:.1f})")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "soak"))
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--log-every", type=int, default=50)
  p.add_argument("--checkpoint-every", type=int, default=500)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config override for the run, e.g. --set "
                 "checkpoint_release_memory=False (repeatable)")
  p.add_argument("--skip", type=float, default=0.1,
                 help="fraction of the steps treated as warm-up and left out of the fit")
  args = p.parse_args(argv)
  samples_path = args.workdir.rstrip("/") + ".samples.csv"
  if not os.path.exists(os.path.join(args.workdir, "summary.json")):
    code = run(args.workdir, args.steps, args.log_every, args.checkpoint_every,
               samples_path, tuple(args.set))
    if code != 0:
      print(f"the run exited with status {code}; run the same command again to resume",
            file=sys.stderr)
      return code
  samples = read_samples(samples_path)
  release = last_release(samples)
  start = 0
  if release is not None:
    # A one-time release of free memory is not a trend: fit the samples after it.
    start = release[0]
    print(f"RssAnon fell by {release[1] / 2**20:.0f} MiB at step {start} (glibc "
          "returning free heap); the fits start there")
  print(report(fit(samples, args.skip, 3, start), "RssAnon"))
  print(report(fit(samples, args.skip, 2, start), "RSS"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
