"""What the evidence scripts (cifar_, imp_, siblings_, slt_results.py, jpeg_quality.py) share.

Each script names its runs (name -> lottery_jax.main arguments); this module turns a
run into its command line, runs a list of them (resumable), reads and stores their
summary.json files, and formats mean ± std over seeds with a paired-t-test verdict.

The scripts import it as `_evidence` with benchmarks/ on sys.path (running a script
puts its folder there; the scripts also add it, for callers that import them).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Iterable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIG = os.path.join(HERE, "figures")


def command(args: list[str], root: str, name: str) -> list[str]:
  """The command line of run `name` (arguments `args`), its workdir under `root`."""
  return ([sys.executable, "-m", "lottery_jax.main"] + args
          + [f"--workdir={os.path.join(root, name)}"])


def select(names: Iterable[str], known: Iterable[str], aliases: Iterable[str] = ()) -> list[str]:
  """The runs `names` asks for, or every run of `known` when it is empty.

  A name that is neither a run nor one of the script's `aliases` ends the script with a
  message that names it and lists the runs there are (exit status 1).
  """
  known = list(known)
  names = list(names) or known
  unknown = [n for n in names if n not in known and n not in set(aliases)]
  if unknown:
    raise SystemExit(f"unknown run name(s): {', '.join(unknown)}. The runs are: "
                     f"{', '.join(known)}" + (f"; and the groups: {', '.join(aliases)}"
                                               if aliases else "") + ".")
  return names


def print_commands(names: Iterable[str], root: str,
                   command_of: Callable[[str, str], list[str]]) -> None:
  """Prints each run's command line as one would type it (`python -m ...`)."""
  for name in names:
    print(shlex.join(["python"] + command_of(name, root)[1:]))


def done(root: str, name: str) -> bool:
  """Whether run `name` under `root` (relative: to the repository) has finished.

  The workdir's summary.json marks its first stage finished; a "train" run with a
  "+T" stage (config `finetune.num_epochs` > 0) is done only when
  `<workdir>/finetune/summary.json` exists too.
  """
  workdir = os.path.join(REPO, root, name)
  if not os.path.exists(os.path.join(workdir, "summary.json")):
    return False
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      finetune_epochs = float(json.load(f).get("finetune.num_epochs") or 0.0)
  except (OSError, ValueError):
    finetune_epochs = 0.0
  return (finetune_epochs <= 0
          or os.path.exists(os.path.join(workdir, "finetune", "summary.json")))


def run(names: Iterable[str], root: str, command_of: Callable[[str, str], list[str]], *,
        skip_done: bool = True, say_done: bool = True,
        after: Callable[[str, str], None] | None = None) -> None:
  """Runs each run from the repository root, stopping at the first failure.

  skip_done: finished runs (summary.json in the workdir) are not run again, and
  `say_done` says so; after(root, name), when given, follows every run, skipped or not.
  """
  for name in names:
    if skip_done and done(root, name):
      if say_done:
        print(f"{name}: done already")
    else:
      cmd = command_of(name, root)
      print("+", shlex.join(cmd), flush=True)
      subprocess.run(cmd, cwd=REPO, check=True)
    if after is not None:
      after(root, name)


def load(name: str, *roots: str) -> dict | None:
  """Run `name`'s summary.json from the first of `roots` that has it, else None."""
  for root in roots:
    path = os.path.join(root, name, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
  return None


def store(root: str, name: str, dest: str, files: tuple[str, ...] = ("summary.json",)) -> None:
  """Copies a finished run's small files (those of `files` it has) into dest/<name>/,
  a folder committed so that `collect` works without the runs."""
  src = os.path.join(REPO, root, name)
  if not os.path.exists(os.path.join(src, "summary.json")):
    return
  dst = os.path.join(dest, name)
  if os.path.realpath(src) == os.path.realpath(dst):
    return   # --root is the store itself (collect from the committed summaries)
  os.makedirs(dst, exist_ok=True)
  for f in files:
    if os.path.exists(os.path.join(src, f)):
      shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))


def pyplot():
  """matplotlib.pyplot without a display, the figures folder made."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(FIG, exist_ok=True)
  return plt


def savefig(fig, name: str) -> None:
  """Lays out `fig`, writes it to the figures folder as `name` (120 dpi) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig.tight_layout()
  fig.savefig(os.path.join(FIG, name), dpi=120)
  plt.close(fig)


def stats(xs):
  """(mean, sample std (nan for one value), count) of the non-None values; None if none."""
  a = np.asarray([x for x in xs if x is not None], np.float64)
  if a.size == 0:
    return None
  return a.mean(), (a.std(ddof=1) if a.size > 1 else float("nan")), a.size


def pm(xs, scale=100.0, digits=2) -> str:
  """"mean ± std (n=count)" of the non-None values times `scale` ("-" if none; no
  "± std" for one value)."""
  s = stats(xs)
  if s is None:
    return "-"
  m, sd, n = s
  txt = f"{scale * m:.{digits}f}"
  if n > 1:
    txt += f" ± {scale * sd:.{digits}f}"
  return txt + f" (n={n})"


def verdict(a, b) -> tuple[str, float, float, int]:
  """Whether mean(a) differs from mean(b): a two-sided paired t-test at 5% over the
  seeds both have (a[i] and b[i] not None; a seed pairs two runs: same data order).
  Returns the word ("higher" / "lower" / "within noise", or why there is none), the
  mean difference, its standard error and the number of pairs. With 3 seeds the mean
  difference must exceed 4.3 standard errors."""
  from scipy import stats as st  # pylint: disable=import-outside-toplevel
  pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
  if not pairs:
    return "no runs", float("nan"), float("nan"), 0
  d = (np.asarray([x for x, _ in pairs], np.float64)
       - np.asarray([y for _, y in pairs], np.float64))
  if d.size < 2:
    return "one seed: no verdict", float(d.mean()), float("nan"), d.size
  se = d.std(ddof=1) / np.sqrt(d.size)
  crit = float(st.t.ppf(0.975, d.size - 1))
  if se == 0.0:
    # Equal differences on every seed (accuracies are counts of test images): the
    # t-test has no spread to go on.
    word = "no spread: no verdict" if d.mean() else "within noise"
  elif d.mean() > crit * se:
    word = "higher"
  elif d.mean() < -crit * se:
    word = "lower"
  else:
    word = "within noise"
  return word, float(d.mean()), float(se), d.size
