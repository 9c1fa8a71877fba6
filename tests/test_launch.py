"""The launchers (launch/*.sh, launch/slurm.sbatch), run with bash through --dry-run and
with fake gcloud / sbatch / srun / python3 on PATH: hermetic, no network, no JAX."""

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# An override with spaces, both quote kinds and a dollar sign: must reach Python unchanged.
TRICKY = """--config.name=it's a "test" $HOME"""


def run(script, *args, env=None, cwd=None, check=True):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
  full_env.update(env or {})
  p = subprocess.run([BASH, str(LAUNCH / script), *args], capture_output=True, text=True,
                     env=full_env, cwd=cwd, timeout=60)
  if check:
    assert p.returncode == 0, p.stderr
  return p


def lines(p):
  return [shlex.split(line) for line in p.stdout.splitlines()]


# ---------------------------------------------------------------- fakes on PATH

LOGGER = """#!/usr/bin/env bash
# Fake tool: logs its name and argv (tab-separated) to $FAKE_LOG.
{ printf '%s' "$(basename "$0")"; printf '\\t%s' "$@"; printf '\\n'; } >> "$FAKE_LOG"
"""

FAKE_PYTHON3 = """#!/usr/bin/env bash
# Fake `python3 -m venv DIR`: a venv whose pip and python are loggers.
{ printf 'python3'; printf '\\t%s' "$@"; printf '\\n'; } >> "$FAKE_LOG"
[ "$1 $2" = "-m venv" ] || exit 99
mkdir -p "$3/bin"
cp "$FAKE_BIN/_logger" "$3/bin/pip"
cp "$FAKE_BIN/_logger" "$3/bin/python"
"""

FAKE_GCLOUD = """#!/usr/bin/env bash
# Fake gcloud: logs argv; `tpu-vm scp SRC TPU:DST` copies into $FAKE_WORKER_HOME and
# `tpu-vm ssh ... --command=CMD` runs CMD with bash there (one fake worker).
{ printf 'gcloud'; printf '\\t%s' "$@"; printf '\\n'; } >> "$FAKE_LOG"
case $4 in
  scp) cp "$5" "$FAKE_WORKER_HOME/${6#*:}" ;;
  ssh) for a; do
         case $a in --command=*) cd "$FAKE_WORKER_HOME" && HOME=$FAKE_WORKER_HOME bash -c "${a#--command=}" ;; esac
       done ;;
esac
"""

FAKE_SBATCH = """#!/usr/bin/env bash
# Fake sbatch: logs argv, then runs the script's body as Slurm would on a 2-node allocation
# (options first, then SCRIPT ARGS...).
{ printf 'sbatch'; printf '\\t%s' "$@"; printf '\\n'; } >> "$FAKE_LOG"
while [ $# -gt 0 ]; do case $1 in -*) shift ;; *) break ;; esac; done
script=$1; shift
SLURM_JOB_ID=1234 SLURM_JOB_NUM_NODES=2 SLURM_GPUS_ON_NODE=8 exec bash "$script" "$@"
"""


def _write(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fakes(tmp_path):
  """Fake gcloud, sbatch, srun and python3 ahead of the real PATH; returns (env, log)."""
  bin_dir = tmp_path / "fakebin"
  bin_dir.mkdir()
  _write(bin_dir / "_logger", LOGGER)
  _write(bin_dir / "srun", LOGGER)
  _write(bin_dir / "python3", FAKE_PYTHON3)
  _write(bin_dir / "gcloud", FAKE_GCLOUD)
  _write(bin_dir / "sbatch", FAKE_SBATCH)
  worker = tmp_path / "worker_home"
  worker.mkdir()
  log = tmp_path / "log.tsv"
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
         "FAKE_BIN": str(bin_dir), "FAKE_WORKER_HOME": str(worker),
         "TMPDIR": str(tmp_path)}
  return env, log


def logged(log):
  if not log.exists():
    return []
  return [line.split("\t") for line in log.read_text().splitlines()]


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("script,args", [
    ("gpu.sh", []),
    ("gpu.sh", ["configs/quickstart.py"]),
    ("gpu.sh", ["--venv"]),
    ("gpu.sh", ["--bogus", "c", "w"]),
    ("tpu_pod.sh", ["--zone", "z", "c", "w"]),
    ("tpu_pod.sh", ["--tpu", "t", "c", "w"]),
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z", "c"]),
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z", "--env", "1X=y", "c", "w"]),
    ("slurm.sh", []),
    ("slurm.sh", ["--nodes", "2", "c"]),
    ("slurm.sbatch", ["c"]),
])
def test_usage_error_exit_2(script, args):
  p = run(script, "--dry-run", *args, check=False) if script != "slurm.sbatch" else run(
      script, *args, check=False)
  assert p.returncode == 2, (p.stdout, p.stderr)
  assert "usage:" in p.stderr
  assert p.stdout == ""


# ---------------------------------------------------------------- gpu.sh

def test_gpu_dry_run_installs_then_runs(tmp_path):
  venv = tmp_path / "venv"
  p = run("gpu.sh", "--dry-run", "--venv", str(venv), "--env", "TFDS_DATA_DIR=/data/my tfds",
          "configs/jackpot_r32_cifar10.py", "runs/r 32", TRICKY, "--config.train.epochs=3",
          cwd=tmp_path)
  assert lines(p) == [
      ["python3", "-m", "venv", str(venv)],
      [f"{venv}/bin/pip", "install", "-q", "-e", f"{REPO}[cuda]"],
      ["cp", f"{REPO}/pyproject.toml", f"{venv}/.lottery_jax-cuda.pyproject.toml"],
      ["env", "TFDS_DATA_DIR=/data/my tfds", f"{venv}/bin/python", "-m", "lottery_jax.main",
       "--config=configs/jackpot_r32_cifar10.py", "--workdir=runs/r 32", TRICKY,
       "--config.train.epochs=3"],
  ]
  assert "multihost" not in p.stdout  # one process drives every local GPU
  assert not venv.exists() and not (tmp_path / "runs").exists()  # nothing ran


def test_gpu_dry_run_skips_a_current_install(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  _write(venv / "bin" / "python", "#!/bin/sh\n")
  shutil.copy(REPO / "pyproject.toml", venv / ".lottery_jax-cuda.pyproject.toml")
  p = run("gpu.sh", "--dry-run", "--venv", str(venv), "c.py", "w")
  assert lines(p) == [[f"{venv}/bin/python", "-m", "lottery_jax.main", "--config=c.py",
                       "--workdir=w"]]
  # Another extra, or a changed pyproject.toml, installs again (but keeps the venv).
  p = run("gpu.sh", "--dry-run", "--venv", str(venv), "--extra", "tpu", "c.py", "w")
  assert [cmd[1:3] for cmd in lines(p)[:1]] == [["install", "-q"]]


def test_gpu_runs_and_installs_once(tmp_path, fakes):
  env, log = fakes
  venv = tmp_path / "venv"
  for _ in range(2):
    run("gpu.sh", "--venv", str(venv), "configs/quickstart.py", "runs/q", TRICKY, env=env)
  calls = logged(log)
  assert calls == [
      ["python3", "-m", "venv", str(venv)],
      ["pip", "install", "-q", "-e", f"{REPO}[cuda]"],
      ["python", "-m", "lottery_jax.main", "--config=configs/quickstart.py",
       "--workdir=runs/q", TRICKY],
      ["python", "-m", "lottery_jax.main", "--config=configs/quickstart.py",
       "--workdir=runs/q", TRICKY],  # the second run: no venv, no pip
  ]


# ---------------------------------------------------------------- tpu_pod.sh

TPU_ARGS = ["--tpu", "my-v4", "--zone", "us-central2-b", "--project", "my-proj",
            "--env", "TFDS_DATA_DIR=gs://bucket/tensorflow datasets",
            "configs/jackpot_r50.py", "gs://bucket/run", TRICKY, "--config.train.epochs=2"]
GCLOUD_FLAGS = ["--zone=us-central2-b", "--project=my-proj", "--worker=all"]


def _remote(cmd):
  """The --command=... of a gcloud tpu-vm ssh line."""
  (c,) = [a for a in cmd if a.startswith("--command=")]
  return c[len("--command="):]


def test_tpu_dry_run(tmp_path):
  p = run("tpu_pod.sh", "--dry-run", *TPU_ARGS, cwd=tmp_path, env={"TMPDIR": "/tmp"})
  tar, scp, setup, main = lines(p)
  assert tar == ["tar", "-czf", "/tmp/lottery_jax_src-my-v4.tgz", "--exclude=__pycache__",
                 "-C", str(REPO), "pyproject.toml", "README.md", "lottery_jax", "configs"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                 "/tmp/lottery_jax_src-my-v4.tgz", "my-v4:lottery_jax_src.tgz", *GCLOUD_FLAGS]
  assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4"]
  assert setup[6:9] == GCLOUD_FLAGS
  install = _remote(setup)
  assert "tar -xzf ~/lottery_jax_src.tgz" in install
  assert "python3 -m venv .venv" in install
  assert "if ! cmp -s pyproject.toml .venv/.lottery_jax-tpu.pyproject.toml; then" in install
  assert ".venv/bin/pip install -q -e '.[tpu]'" in install
  assert main[:9] == setup[:9]
  remote = shlex.split(_remote(main))
  assert remote == [
      "cd", "lottery_jax", "&&", "TFDS_DATA_DIR=gs://bucket/tensorflow datasets", "exec",
      ".venv/bin/python", "-m", "lottery_jax.main", "--config=configs/jackpot_r50.py",
      "--workdir=gs://bucket/run", TRICKY, "--config.train.epochs=2",
      "--config.multihost=True"]  # last, so that it wins over any override
  assert os.listdir(tmp_path) == []  # no local gs:/ directory, no archive under dry-run
  for cmd in (setup, main):
    assert subprocess.run([BASH, "-n", "-c", _remote(cmd)]).returncode == 0


def test_tpu_no_install_and_defaults():
  p = run("tpu_pod.sh", "--dry-run", "--no-install", "--tpu", "t", "--zone", "z",
          "--extra", "tpu,torch", "--remote-dir", "my dir", "c.py", "/mnt/shared/run")
  (main,) = lines(p)
  assert main[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z",
                      "--worker=all", main[8]]  # no --project: gcloud's default
  assert shlex.split(_remote(main)) == [
      "cd", "my dir", "&&", "exec", ".venv/bin/python", "-m", "lottery_jax.main",
      "--config=c.py", "--workdir=/mnt/shared/run", "--config.multihost=True"]


def test_tpu_runs_with_fake_gcloud_installs_once_and_matches_dry_run(tmp_path, fakes):
  env, log = fakes
  worker = Path(env["FAKE_WORKER_HOME"])
  for _ in range(2):  # e.g. a relaunch after a preemption
    run("tpu_pod.sh", *TPU_ARGS, env=env, cwd=tmp_path)
  calls = logged(log)
  tools = [c[0] if c[0] != "gcloud" else f"gcloud {c[4]}" for c in calls]
  assert tools == ["gcloud scp", "gcloud ssh", "python3", "pip", "pip", "gcloud ssh", "python",
                   "gcloud scp", "gcloud ssh", "gcloud ssh", "python"]  # installed once
  assert calls[3][1:] == ["install", "-q", "-U", "pip"]
  assert calls[4][1:] == ["install", "-q", "-e", ".[tpu]"]
  assert calls[6][1:] == ["-m", "lottery_jax.main", "--config=configs/jackpot_r50.py",
                          "--workdir=gs://bucket/run", TRICKY, "--config.train.epochs=2",
                          "--config.multihost=True"]
  assert (worker / "lottery_jax" / "lottery_jax" / "__init__.py").exists()
  assert (worker / "lottery_jax" / "configs" / "jackpot_r50.py").exists()
  assert not list((worker / "lottery_jax").rglob("__pycache__"))
  assert not (tmp_path / "gs:").exists()

  # The dry-run's lines, pasted into bash, run the very same gcloud commands.
  gcloud_calls = [c for c in calls[:7] if c[0] == "gcloud"]
  dry = run("tpu_pod.sh", "--dry-run", *TPU_ARGS, env=env, cwd=tmp_path).stdout
  log.unlink()
  subprocess.run([BASH, "-euo", "pipefail", "-c", dry], check=True, cwd=tmp_path,
                 env={**os.environ, **env}, capture_output=True, timeout=60)
  assert [c for c in logged(log) if c[0] == "gcloud"] == gcloud_calls


# ---------------------------------------------------------------- slurm

def sbatch_directives():
  """The #SBATCH lines (before the first command, the only ones sbatch reads)."""
  out = {}
  for line in (LAUNCH / "slurm.sbatch").read_text().splitlines()[1:]:
    if line.startswith("#SBATCH"):
      key, _, value = line.split(None, 1)[1].partition("=")
      out[key] = value
    elif line.strip() and not line.startswith("#"):
      break
  return out


def test_sbatch_directives_and_srun():
  d = sbatch_directives()
  assert d["--ntasks-per-node"] == "1"
  for key in ("--nodes", "--gpus-per-node", "--time", "--output"):
    assert d.get(key), key
  text = (LAUNCH / "slurm.sbatch").read_text()
  body = text.split("\nset -euo pipefail\n", 1)[1]
  assert "#SBATCH" not in body  # sbatch ignores directives after the first command
  assert re.search(r"^cmd=\(srun ", text, re.M)
  assert 'exec "${cmd[@]}"' in text


def test_sbatch_body_with_fake_srun(fakes):
  env, log = fakes
  env = {**env, "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "3",
         "SLURM_GPUS_PER_NODE": "h100:4", "LOTTERY_JAX_PYTHON": "/shared/venv/bin/python"}
  run("slurm.sbatch", "configs/jackpot_r50.py", "/shared/runs/r50", TRICKY, env=env)
  assert logged(log) == [[
      "srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
      "env", "JAX_LOCAL_DEVICE_IDS=0,1,2,3", "/shared/venv/bin/python", "-m",
      "lottery_jax.main", "--config=configs/jackpot_r50.py", "--workdir=/shared/runs/r50",
      TRICKY, "--config.multihost=True"]]


def test_slurm_dry_run(tmp_path):
  venv = tmp_path / "venv"
  p = run("slurm.sh", "--dry-run", "--venv", str(venv), "--nodes", "4", "--gpus-per-node", "4",
          "--time", "12:00:00", "--partition", "gpu", "--sbatch-arg=--qos=high",
          "--env", "TFDS_DATA_DIR=/shared/tf ds", "configs/jackpot_r50.py", "/shared/runs/r50",
          TRICKY)
  out = p.stdout.splitlines()
  assert [shlex.split(x) for x in out[:3]] == [
      ["python3", "-m", "venv", str(venv)],
      [f"{venv}/bin/pip", "install", "-q", "-e", f"{REPO}[cuda]"],
      ["cp", f"{REPO}/pyproject.toml", f"{venv}/.lottery_jax-cuda.pyproject.toml"]]
  assert shlex.split(out[3]) == [
      "env", f"LOTTERY_JAX_PYTHON={venv}/bin/python", "TFDS_DATA_DIR=/shared/tf ds",
      "sbatch", "--nodes=4", "--gpus-per-node=4", "--time=12:00:00", "--partition=gpu",
      "--qos=high", str(LAUNCH / "slurm.sbatch"), "configs/jackpot_r50.py",
      "/shared/runs/r50", TRICKY]
  assert out[4].startswith("# job runs: ")
  assert shlex.split(out[4][len("# job runs: "):]) == [
      "srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
      "env", "JAX_LOCAL_DEVICE_IDS=0,1,2,3", f"{venv}/bin/python", "-m", "lottery_jax.main",
      "--config=configs/jackpot_r50.py", "--workdir=/shared/runs/r50", TRICKY,
      "--config.multihost=True"]
  assert len(out) == 5


def test_slurm_dry_run_uses_sbatch_defaults():
  d = sbatch_directives()
  p = run("slurm.sh", "--dry-run", "--no-install", "c.py", "w")
  sbatch_line, job = p.stdout.splitlines()
  assert shlex.split(sbatch_line)[2:] == ["sbatch", str(LAUNCH / "slurm.sbatch"), "c.py", "w"]
  n = int(d["--gpus-per-node"].split(":")[-1])
  assert f"srun --nodes={d['--nodes']} " in job
  assert f"JAX_LOCAL_DEVICE_IDS={','.join(map(str, range(n)))} " in job


def test_slurm_submits_with_fake_sbatch(fakes):
  env, log = fakes
  run("slurm.sh", "--no-install", "--venv", "/shared/venv", "--nodes", "2",
      "configs/jackpot_r50.py", "/shared/runs/r50", TRICKY, env=env)
  sbatch, srun = logged(log)
  assert sbatch == ["sbatch", "--nodes=2", str(LAUNCH / "slurm.sbatch"),
                    "configs/jackpot_r50.py", "/shared/runs/r50", TRICKY]
  assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "env",
                  "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", "/shared/venv/bin/python", "-m",
                  "lottery_jax.main", "--config=configs/jackpot_r50.py",
                  "--workdir=/shared/runs/r50", TRICKY, "--config.multihost=True"]
