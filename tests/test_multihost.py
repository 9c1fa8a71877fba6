"""Multi-host for real, on one machine: two processes on localhost, each with 4
simulated CPU devices, joined by `jax.distributed` (loopback coordinator, gloo
collectives), run a jackpot search and its +T stage together; the result equals one
process with 8 devices.

Each process is tests/multihost_worker.py, started in its own process group with a
deadline; whatever happens, the groups are killed at the end.

What "equals" means. Both layouts put the same rows of the same global batches on
the same 8 devices (mesh order: process 0's devices, then process 1's), so every
device computes the same float32 operations on the same inputs. Only the
cross-device sums differ: the gradient and loss all-reduces and BatchNorm's batch
moments add 8 per-device partials, in one order inside one process (XLA:CPU) and in
another across two (gloo's reduction of the two processes' partials). Two orders of
summing 8 float32 terms can differ by up to 2 * gamma_7 * sum|x_d| (gamma_7 = 7u /
(1 - 7u), u = 2**-24; Higham, Accuracy and Stability of Numerical Algorithms, 4.2): a
few units in the last place of the sum unless its terms cancel. What follows is the
same sequence of operations on both copies, so:

* masks, a function of the scores' order, are equal unless a score ends within that
  difference of the swap threshold: they are compared bitwise (and so are the eval
  predictions, hence the accuracy);
* a score moves by lr * (momentum buffer) per step; a last-bit difference in the
  update can change the rounding of `s + update` by one ulp of s, and the momentum
  buffer (factor 0.9) carries a difference into every later step with total weight
  at most 1 / (1 - 0.9) = 10. After N steps two copies of a leaf may therefore
  differ by up to 10 * N ulps of its largest entry; the same holds for the
  fine-tuned weights and for BatchNorm's running statistics (an average with
  momentum < 1 of per-step moments, each within the bound above), with N counting
  every step since the two copies last were equal (8: the search's 6, then 2 of +T);
* a logged loss is a mean of positive per-example terms, whose reordered sum is
  within 14u of the other; with the division and a two-step running sum the two
  logs agree to 32u relatively.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lottery_jax import experiments, load_run
from lottery_jax.engine import loop
from test_engine import flat, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE_S = 420  # both workers, start-up and compilation included (about 100 s here)
GLOBAL_BATCH, LOCAL_BATCH = 32, 16  # tests/configs/tiny_search.py's batch over 2 processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(process_id: int, port: int, workdir: str, overrides: dict, report: str, log):
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + ["--xla_force_host_platform_device_count=4"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, "multihost_worker.py"), str(process_id), "2",
       str(port), workdir, json.dumps(overrides), report],
      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    p.wait()


@pytest.mark.slow
def test_two_processes_search_and_finetune_like_one(tmp_path):
  pretrained = str(tmp_path / "pretrained")
  loop.run(tiny_config(num_steps=16, **{"optimizer.learning_rate": 0.05}), pretrained)
  overrides = {"pretrained": pretrained, "num_steps": 6, "finetune.num_epochs": 0.25,
               "tensorboard": True, "multihost": True}
  two = str(tmp_path / "two_processes")
  reports = [str(tmp_path / f"report_{i}.json") for i in range(2)]
  logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(2)]
  port = _free_port()
  procs = []
  try:
    procs = [_start(i, port, two, overrides, reports[i], logs[i]) for i in range(2)]
    # Meanwhile, the reference here: one process, 8 devices, no distributed runtime.
    one = str(tmp_path / "one_process")
    config = tiny_config(**{"mask.program": "jackpot", "sparsity": 0.9,
                            "mask.update_rule": "swap",
                            **{k: v for k, v in overrides.items() if k != "multihost"}})
    reference = experiments.run(config, one)
    deadline = time.monotonic() + DEADLINE_S
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pytest.fail(f"the two processes did not finish within {DEADLINE_S} s; logs in {tmp_path}")
  finally:
    _stop(procs)
    for f in logs:
      f.close()
  for i, p in enumerate(procs):
    assert p.returncode == 0, (tmp_path / f"worker_{i}.log").read_text()[-4000:]
  r = [json.load(open(path)) for path in reports]

  # A real 2-process job: 8 global devices, 4 per process.
  assert [(x["process_index"], x["process_count"], x["devices"], x["local_devices"])
          for x in r] == [(0, 2, 8, 4), (1, 2, 8, 4)]

  # The same masks and accuracy as one process, for the search and for its +T
  # stage; scores, weights and BatchNorm statistics within float32 reduction order
  # (module docstring).
  ulp = 2.0 ** -23  # float32 spacing at 1.0
  for stage, steps in (("", 6), ("finetune", 8)):
    a, b = load_run(os.path.join(two, stage)), load_run(os.path.join(one, stage))
    for part in ("masks", "scores", "params", "batch_stats"):
      fa, fb = flat(a[part]), flat(b[part])
      assert fa.keys() == fb.keys(), (stage, part)
      for k in fa:
        what = f"{stage or 'search'} {part} {k}"
        if part == "masks":
          np.testing.assert_array_equal(fa[k], fb[k], err_msg=what)
        else:
          largest = float(np.max(np.abs(fb[k]))) if fb[k].size else 0.0
          tol = 10 * steps * ulp * 2.0 ** np.ceil(np.log2(max(largest, 2.0 ** -126)))
          np.testing.assert_allclose(fa[k], fb[k], rtol=0, atol=tol, err_msg=what)
  assert r[0]["accuracy"] == r[1]["accuracy"] == reference["final_eval"]["accuracy"]
  assert r[0]["finetune_accuracy"] == reference["finetune"]["final_eval"]["accuracy"]
  summary = json.load(open(os.path.join(two, "summary.json")))
  assert summary["final_eval"]["accuracy"] == reference["final_eval"]["accuracy"]
  losses = [[h["train/loss"] for h in s["history"] if "train/loss" in h]
            for s in (summary, reference)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=32 * 2.0 ** -24)

  # Each process read only its own rows of every global batch.
  for i, x in enumerate(r):
    rows = {pos % GLOBAL_BATCH // LOCAL_BATCH for pos in x["stream_positions"]}
    assert rows == {i}, f"process {i} read rows of processes {sorted(rows)}"
  assert len(r[0]["stream_positions"]) >= 8 * LOCAL_BATCH  # 6 + 2 steps at least

  # Only process 0 writes files: process 1's Python-level writes are all Orbax's own
  # per-process checkpoint metadata (its array data is written by TensorStore, in
  # C++, also under checkpoints/). Process 0's list shows the hook sees writes.
  def outside_checkpoints(writes):
    return [(e, p) for e, p in writes if p.startswith(two) and
            not any(part in ("checkpoints", "rewind") or part.endswith(".orbax-checkpoint-tmp")
                    for part in os.path.relpath(p, two).split(os.sep))]

  files_by_1 = [(e, p) for e, p in outside_checkpoints(r[1]["writes"]) if e != "os.mkdir"]
  assert files_by_1 == []
  # Directories: none that process 0 does not create too (the workdir, stage folders).
  dirs = [{p for e, p in x["writes"] if e == "os.mkdir"} for x in r]
  assert {p for _, p in outside_checkpoints([("os.mkdir", d) for d in dirs[1]])} <= dirs[0]
  written_by_0 = {os.path.relpath(p, two) for _, p in outside_checkpoints(r[0]["writes"])}
  for name in ("summary.json", "config.json", "variables.safetensors",
               "masks.safetensors", "finetune/summary.json"):
    assert any(w == name or w.startswith(name + ".") for w in written_by_0), (name, written_by_0)
  assert any(w.startswith("tensorboard") for w in written_by_0), written_by_0


SLURM_PROCESS = """
import json, jax
from lottery_jax.engine import distributed
distributed.initialize_once()  # the engine's call with multihost=True: no arguments
print("RESULT", json.dumps([jax.process_index(), jax.process_count(),
                            jax.local_device_count(), jax.device_count()]))
jax.distributed.shutdown()
"""


def test_slurm_job_step_environment_is_found_by_initialize(tmp_path):
  """What launch/slurm.sbatch relies on: in the processes `srun` starts (one per
  node), `jax.distributed.initialize()` with no arguments finds the job from the
  SLURM_* variables, and JAX_LOCAL_DEVICE_IDS (set by the sbatch script) keeps every
  local device. Two "nodes" on localhost; the coordinator port comes from
  JAX_COORDINATOR_PORT instead of the job id."""
  port = _free_port()
  procs, logs = [], []
  try:
    for i in range(2):
      env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost",
             "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": "0",
             "JAX_COORDINATOR_PORT": str(port), "JAX_LOCAL_DEVICE_IDS": "0,1,2,3",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
      logs.append(open(tmp_path / f"slurm_{i}.log", "w+"))
      procs.append(subprocess.Popen([sys.executable, "-c", SLURM_PROCESS], env=env,
                                    stdout=logs[-1], stderr=subprocess.STDOUT,
                                    start_new_session=True))
    for p in procs:
      p.wait(timeout=180)
  except subprocess.TimeoutExpired:
    pytest.fail("the two Slurm-like processes did not finish within 180 s")
  finally:
    _stop(procs)
  results = []
  for f in logs:
    f.seek(0)
    text = f.read()
    f.close()
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-3000:]
    results.append(json.loads(lines[-1].split(" ", 1)[1]))
  assert results == [[0, 2, 4, 8], [1, 2, 4, 8]]
