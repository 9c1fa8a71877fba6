"""Reliability (issue 17): faults, damaged checkpoints, one writer per workdir, a full
disk, files users can share, workdirs on an object store (issue 16.1), and a short
soak. Bad input, fuzzed, is in tests/test_bad_input.py; the table of every case is
docs/reliability.md.

Results are compared bitwise: every `.safetensors` file a run exports (masked params,
BatchNorm statistics, bit-packed masks, scores, strong tickets) byte for byte.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc

import fsspec
import numpy as np
import psutil
import pytest
import safetensors.numpy
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from lottery_jax import experiments, load_run
from lottery_jax.engine import io, lock, loop, monitor
from lottery_jax.engine.checkpoint import Checkpointer
from lottery_jax.engine.errors import (DamagedCheckpointError, DiskFullError,
                                       WorkdirInUseError)
from test_engine import REPO, flat, tiny_config

fsspec_registry = sys.modules["fsspec.registry"]  # the module (fsspec.registry is its mapping)
CAMPAIGN = os.path.join(REPO, "tests", "configs", "fault_campaign.py")


# ----------------------------------------------------------------- helpers
def exported(workdir) -> dict[str, dict[str, np.ndarray]]:
  """Every .safetensors file under `workdir`: relative path -> its arrays. (Compared
  as arrays, not bytes: safetensors orders the header's metadata as a hash map.)"""
  out = {}
  for root, _, files in os.walk(workdir):
    if ".damaged" in root:
      continue
    for f in files:
      if f.endswith(".safetensors"):
        path = os.path.join(root, f)
        out[os.path.relpath(path, workdir)] = safetensors.numpy.load_file(path)
  return out


def assert_same_results(a, b):
  fa, fb = exported(a), exported(b)
  assert fa and fa.keys() == fb.keys(), (sorted(fa), sorted(fb))
  for name in fa:
    assert fa[name].keys() == fb[name].keys(), name
    for k, v in fa[name].items():
      w = fb[name][k]
      assert v.dtype == w.dtype and v.shape == w.shape, f"{name} {k}"
      assert v.tobytes() == w.tobytes(), f"{name} {k} differs"


def snapshot(directory) -> dict[str, bytes]:
  """Every file under `directory` with its bytes (to show nothing changed)."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, directory)] = fh.read()
  return out


@contextlib.contextmanager
def engine_warnings():
  """The warnings the engine logs in the block, as one string (`lottery_jax` logger)."""
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())
  handler, logger = Keep(logging.WARNING), logging.getLogger("lottery_jax")
  logger.addHandler(handler)
  text = []
  try:
    yield text
  finally:
    logger.removeHandler(handler)
    text.append("\n".join(records))


class Interrupt(Exception):
  """Stands for a crash at a chosen step (in-process tests)."""


def on_train_step(monkeypatch, hook):
  """Until `monkeypatch.undo()` (or the test's end), every stage built calls hook(n)
  before its n-th train step (n counts from 1 for each build): the hooks that
  `loop.train_step_hook` installs, set through monkeypatch so that undo removes them."""
  monkeypatch.setattr(loop, "_train_step_hooks", [hook])


@contextlib.contextmanager
def interrupted_at(step: int, monkeypatch, before=None):
  """Runs under a `loop.build` whose train step raises Interrupt on call `step`
  (after `before()`, if given: e.g. filling the disk)."""
  def hook(n):
    if n == step:
      if before is not None:
        before()
      else:
        raise Interrupt(step)
  on_train_step(monkeypatch, hook)
  yield


def run_cfg(**overrides):
  base = {"num_steps": 8, "checkpoint_every_steps": 2, "keep_checkpoints": 2,
          "log_every_steps": 2, "tensorboard": False, "progress_bar": False}
  base.update(overrides)
  return tiny_config(**base)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted 8-step run, the reference for the in-process fault tests."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  loop.run(run_cfg(), workdir)
  return workdir


def test_a_train_step_hook_sees_each_step_and_goes_with_its_block(tmp_path):
  """`loop.train_step_hook`, what the fault tests and benchmarks/soak_trace.py hook
  into: called before each train step with its count, gone after the block."""
  calls = []
  with loop.train_step_hook(calls.append):
    loop.run(run_cfg(num_steps=3), str(tmp_path / "hooked"))
  assert calls == [1, 2, 3]
  assert loop._train_step_hooks == []
  loop.run(run_cfg(num_steps=2), str(tmp_path / "plain"))
  assert calls == [1, 2, 3]


# ----------------------------------------------------------------- 17.3 the lock
def _live_child():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  return proc


def _lock_record(pid, host=None, heartbeat=None, started=None):
  return {"host": host or socket.gethostname(), "pid": pid,
          "process_started": started if started is not None else
          psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 0.0,
          "started": "2026-12-02T10:00:00+00:00",
          "heartbeat": time.time() if heartbeat is None else heartbeat, "token": "x"}


def test_a_second_run_refuses_naming_the_holder(tmp_path):
  """Through `lottery_jax.main`: one line naming host, pid and start time, exit 2, the
  holder's files untouched."""
  child = _live_child()
  try:
    (tmp_path / "lock.json").write_text(json.dumps(_lock_record(child.pid)))
    (tmp_path / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    cmd = [sys.executable, "-m", "lottery_jax.main",
           f"--config={REPO}/tests/configs/tiny_search.py", f"--workdir={tmp_path}",
           "--config.search_random_weights=True"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  finally:
    child.kill()
    child.wait()
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
  assert f"host {socket.gethostname()!r}, pid {child.pid}, started 2026-12-02T10:00:00" \
      in lines[0]
  assert snapshot(tmp_path) == before


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
  child = _live_child()
  record = _lock_record(child.pid)
  child.kill()
  child.wait()
  (tmp_path / "lock.json").write_text(json.dumps(record))
  with engine_warnings() as logged:
    with lock.hold(tmp_path):
      held = json.loads((tmp_path / "lock.json").read_text())
      assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
  assert f"pid {child.pid}" in logged[0] and "not running" in logged[0]
  assert not (tmp_path / "lock.json").exists()  # released


def test_a_reused_pid_is_not_the_holder(tmp_path):
  """Same host, the pid alive but started after the lock was written: stale."""
  child = _live_child()
  try:
    (tmp_path / "lock.json").write_text(json.dumps(
        _lock_record(child.pid, started=psutil.Process(child.pid).create_time() - 100)))
    with lock.hold(tmp_path):
      assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
  finally:
    child.kill()
    child.wait()


def test_another_hosts_lock_counts_while_its_heartbeat_is_fresh(tmp_path):
  (tmp_path / "lock.json").write_text(json.dumps(
      _lock_record(12345, host="pod-worker-7", started=1.0)))
  with pytest.raises(WorkdirInUseError, match="host 'pod-worker-7', pid 12345"):
    lock.acquire(tmp_path)
  (tmp_path / "lock.json").write_text(json.dumps(_lock_record(
      12345, host="pod-worker-7", started=1.0,
      heartbeat=time.time() - lock.STALE_AFTER_S - 60)))
  with lock.hold(tmp_path):
    assert json.loads((tmp_path / "lock.json").read_text())["host"] == socket.gethostname()


def test_the_lock_is_reentrant_refreshed_and_leaves_no_trace(tmp_path, monkeypatch):
  monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
  fresh = tmp_path / "new"
  with lock.hold(fresh):
    first = json.loads((fresh / "lock.json").read_text())["heartbeat"]
    with lock.hold(str(fresh)):   # the experiment and its "" stage
      time.sleep(0.5)
    assert (fresh / "lock.json").exists()
    assert json.loads((fresh / "lock.json").read_text())["heartbeat"] > first
  assert not fresh.exists()  # created for a run that wrote nothing: removed again


# ----------------------------------------------------------------- 16.1 workdirs anywhere
class FakeGCS(MemoryFileSystem):
  """An in-memory `gs://` bucket: fsspec's memory filesystem under the gcs protocol,
  what `etils.epath` reaches for `gs://` paths when TensorFlow is absent."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for p in ("gs://", "gcs://"):
      if path.startswith(p):
        path = path[len(p):]
    return "/" + path.strip("/")


@pytest.fixture
def gcs():
  from etils.epath import backend
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  fsspec.register_implementation("gcs", FakeGCS, clobber=True)
  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  assert epath.Path("gs://bucket/x")._backend is backend.fsspec_backend
  yield FakeGCS.store
  for name in ("gs", "gcs"):
    fsspec_registry._registry.pop(name, None)
  backend.fsspec_backend._get_filesystem.cache_clear()


def test_workdir_files_go_through_epath_to_a_bucket(gcs, straight):
  """JSON, exports, packed masks, loading a run or pretrained weights, TensorBoard and
  the lock, on a (faked) gs:// workdir, through the code the engine runs. Orbax's
  own array data go to TensorStore's gcs driver, which this fake does not reach."""
  root = "gs://bucket/run"
  local = load_run(straight)
  with lock.hold(root):
    assert "/bucket/run/lock.json" in gcs
    io.write_json(f"{root}/summary.json", {"a": 1})
    assert io.read_json(f"{root}/summary.json") == {"a": 1}
    for name in ("variables", "masks", "scores"):
      src = os.path.join(straight, f"{name}.safetensors")
      if os.path.exists(src):
        with open(src, "rb") as f:
          io.write_bytes(f"{root}/{name}.safetensors", f.read())
    remote = load_run(root)
    for part in ("params", "batch_stats", "masks"):
      for k, v in flat(local[part]).items():
        np.testing.assert_array_equal(v, flat(remote[part])[k])
    io.save_masks(f"{root}/m.safetensors", local["masks"])
    src = io.load_mask_source(f"{root}/m.safetensors", like=local["params"])
    assert all(np.array_equal(v, flat(src["masks"])[k])
               for k, v in flat(local["masks"]).items())
    weights = io.load_pretrained(root, "digits_cnn", 10, like={
        "params": local["params"], "batch_stats": local["batch_stats"]})
    assert flat(weights["params"]).keys() == flat(local["params"]).keys()
    writer = monitor.MetricWriter(root)
    writer.write(1, {"train/loss": 0.5})
    writer.close()
  events = [k for k in gcs if k.startswith("/bucket/run/tensorboard/events.out")]
  assert events and len(gcs[events[0]].getvalue()) > 0
  assert "/bucket/run/lock.json" not in gcs  # released
  assert not any(k.endswith(".tmp") for k in gcs)


def test_only_process_0_writes_the_workdirs_files(tmp_path, monkeypatch):
  """With `io.is_lead()` False (process 1 of a pod) a run writes only its share of
  the Orbax checkpoints: no JSON, exports, TensorBoard or lock."""
  monkeypatch.setattr(io, "is_lead", lambda: False)
  loop.run(run_cfg(tensorboard=True), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["checkpoints"]


# ----------------------------------------------------------------- 17.2 damaged checkpoints
def _largest_file(directory):
  """The largest data file of the merged OCDBT database (`state/d/`), which a restore
  reads. (Damage to a file it does not read, such as the per-process copies under
  `ocdbt.process_0/`, changes nothing: the digest shows the restored state intact.)"""
  d = os.path.join(directory, "d")
  return max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def _damage(step_dir, kind):
  target = _largest_file(os.path.join(step_dir, "state"))
  if kind == "truncate":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 2)
  elif kind == "delete":
    os.remove(target)
  elif kind == "flip":
    with open(target, "r+b") as f:
      size = os.path.getsize(target)
      f.seek(size // 2)
      chunk = bytearray(f.read(64))
      f.seek(size // 2)
      f.write(bytes(b ^ 0xFF for b in chunk))
  elif kind == "meta":
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
      f.write("{not json")
  else:
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncate", "delete", "flip", "meta"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(
    straight, tmp_path, monkeypatch, kind):
  """Checkpoints at steps 2 and 4, the run dies at step 5, step 4 is damaged: the
  resumed run warns naming step 4, restarts from step 2 and ends bitwise equal."""
  workdir = str(tmp_path)
  with interrupted_at(5, monkeypatch), pytest.raises(Interrupt):
    loop.run(run_cfg(), workdir)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  _damage(str(tmp_path / "checkpoints" / "4"), kind)
  monkeypatch.undo()
  with engine_warnings() as logged:
    loop.run(run_cfg(), workdir)
  assert "damaged checkpoint" in logged[0] and f"{tmp_path}/checkpoints/4 " in logged[0]
  assert "previous good checkpoint, step 2" in logged[0]
  assert_same_results(straight, workdir)
  assert os.listdir(tmp_path / "checkpoints.damaged")  # kept for inspection


def test_a_checkpoint_that_reads_back_different_is_detected(tmp_path):
  """Damage that Orbax's and TensorStore's own checks let through (values that decode
  but differ from what was saved) is caught by the CRC-32 of every leaf recorded at
  save time; here the record is altered instead of the data, to the same effect."""
  r = loop.build(run_cfg())
  ckpt = Checkpointer(tmp_path, keep=2)
  ckpt.save(1, r.state, {"step": 1}, {"step": 1})
  ckpt.wait()
  meta_file = tmp_path / "1" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  leaf = sorted(meta["state_crc32"])[0]
  meta["state_crc32"][leaf] ^= 1
  meta_file.write_text(json.dumps(meta))
  fresh = Checkpointer(tmp_path, keep=2)
  with pytest.raises(DamagedCheckpointError, match="CRC-32 mismatch in " + leaf[:10]):
    fresh.restore(1, r.state)


def test_a_save_keeps_what_meta_and_data_held_when_it_was_called(tmp_path):
  """Orbax serialises the JSON items in its background write; the loop goes on
  appending to the history list it passed in. A checkpoint must hold the rows up to
  its own step, or a resume logs the later rows twice (CI failure of stop 21: the
  siblings SIGKILL campaign resumed with step 6 in its history twice)."""
  r = loop.build(run_cfg())
  ckpt = Checkpointer(tmp_path, keep=2)
  history, data = [{"step": 1}], {"position": [1]}
  for step in (1, 2, 3):   # three saves: a race would not pass three times by luck
    ckpt.save(step, r.state, data, {"step": step, "history": history})
    history.append({"step": 2})   # what the loop does next, while the write runs
    data["position"].append(2)
    ckpt.wait()
    restored = Checkpointer(tmp_path, keep=2)
    assert restored.read_meta(step)["history"] == [{"step": 1}]
    _, data_back, _ = restored.restore(step, r.state)
    assert data_back == {"position": [1]}
    restored.close()
    del history[1:], data["position"][1:]
  ckpt.close()


def test_no_good_checkpoint_left_stops_and_changes_nothing(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  with interrupted_at(5, monkeypatch), pytest.raises(Interrupt):
    loop.run(run_cfg(), workdir)
  for step in ("2", "4"):
    _damage(str(tmp_path / "checkpoints" / step), "truncate")
  before = snapshot(tmp_path)
  monkeypatch.undo()
  with pytest.raises(DamagedCheckpointError, match="no good checkpoint is left") as e:
    loop.run(run_cfg(), workdir)
  assert "checkpoints/4" in str(e.value) and "checkpoints/2" in str(e.value)
  assert "\n" not in str(e.value)
  assert snapshot(tmp_path) == before  # not started over, nothing moved


@pytest.fixture(scope="module")
def rewound(tmp_path_factory):
  """An 8-step run that kept its rewind point at step 3 (IMP's level_0 keeps θ_k so)."""
  src = str(tmp_path_factory.mktemp("rewound"))
  loop.run(run_cfg(rewind_step=3), src)
  assert sorted(os.listdir(os.path.join(src, "rewind"))) == ["3"]
  return src


@pytest.mark.parametrize("kind", ["truncate", "delete", "flip", "crc"])
def test_a_damaged_rewind_point_is_refused_not_used(rewound, tmp_path, kind):
  """IMP's next level (and its controls) start from the rewind weights that level_0
  kept: a fork from `rewind/3`. A damaged rewind point must stop the fork with a
  message naming it, never be used. "crc" alters the recorded CRC-32 instead of the
  data: damage that still decodes, which only the digest can catch (restore_host did
  not check it before)."""
  src = str(tmp_path / "src")
  shutil.copytree(rewound, src)
  step_dir = os.path.join(src, "rewind", "3")
  if kind == "crc":
    meta_file = os.path.join(step_dir, "meta", "metadata")
    with open(meta_file) as f:
      meta = json.load(f)
    leaf = sorted(k for k in meta["state_crc32"] if "params" in k)[0]
    meta["state_crc32"][leaf] ^= 1
    with open(meta_file, "w") as f:
      json.dump(meta, f)
  else:
    _damage(step_dir, kind)
  fork = str(tmp_path / "fork")
  with pytest.raises(DamagedCheckpointError) as e:
    loop.run(run_cfg(**{"start.workdir": src, "start.step": 3}), fork)
  msg = str(e.value)
  assert f"{src}/rewind/3" in msg and "\n" not in msg
  assert ("CRC-32 mismatch" if kind == "crc" else "does not read back") in msg
  assert not os.path.exists(os.path.join(fork, "checkpoints"))  # nothing trained
  # IMP's summary reads the same point (θ_k for r(θ_k, θ_T)) through the same check.
  from lottery_jax.experiments import tickets
  with pytest.raises(DamagedCheckpointError, match="rewind/3"):
    tickets.rewind_params(src, 3)


def test_an_intact_rewind_point_passes_the_digest(rewound):
  """The check compares the CRC-32s recorded from the TrainState (`.params[...]`)
  with the restored dicts (`['params'][...]`): every leaf must be matched, or the
  check above would pass vacuously."""
  from lottery_jax.engine import checkpoint
  ckpt = Checkpointer(os.path.join(rewound, "rewind"), keep=None, create=False)
  state, _, meta = ckpt.restore_host(3)
  ckpt.close()
  got = {checkpoint._dict_path(k) for k in checkpoint.state_digest(state)}
  want = {checkpoint._dict_path(k) for k in meta[checkpoint.DIGEST_KEY]}
  assert want == got and any("opt_state" in k for k in want)


def test_each_save_first_releases_free_memory_unless_turned_off(tmp_path, monkeypatch):
  """`config.checkpoint_release_memory` (default True): each save waits for the
  previous one and hands the allocator's free memory back (benchmarks/soak.py
  measures the effect); False leaves the allocator alone."""
  from lottery_jax.engine import checkpoint
  calls = []
  monkeypatch.setattr(checkpoint, "release_free_memory", lambda: calls.append(1))
  r = loop.build(run_cfg())
  for release, expected in ((True, 2), (False, 0)):
    calls.clear()
    ckpt = Checkpointer(tmp_path / str(release), keep=2, release_memory=release)
    for step in (1, 2):
      ckpt.save(step, r.state, {"step": step}, {"step": step})
    ckpt.wait()
    ckpt.close()
    assert len(calls) == expected, release
  assert run_cfg().checkpoint_release_memory is True


def test_releasing_memory_is_a_no_op_without_glibc(monkeypatch):
  """Where the C library is not glibc (musl, macOS, Windows: no CS_GNU_LIBC_VERSION),
  release_free_memory does nothing and says so, and never raises."""
  from lottery_jax.engine import checkpoint
  monkeypatch.setattr(checkpoint, "_TRIM", None)
  def no_glibc(name):
    raise ValueError("unrecognized configuration name")
  monkeypatch.setattr(checkpoint.os, "confstr", no_glibc)
  assert checkpoint.release_free_memory() is False
  monkeypatch.setattr(checkpoint, "_TRIM", None)
  monkeypatch.setattr(checkpoint.os, "confstr", lambda name: None)
  assert checkpoint.release_free_memory() is False
  monkeypatch.undo()
  on_glibc = bool(getattr(os, "confstr", lambda n: None)("CS_GNU_LIBC_VERSION"))
  assert checkpoint.release_free_memory() is on_glibc


def _per_leaf(monkeypatch):
  """Saves as every checkpoint was written before packing: one array per leaf."""
  from lottery_jax.engine import checkpoint
  monkeypatch.setattr(checkpoint, "pack", lambda state, host: None)


def _same_bytes(a, b):
  import jax
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    x, y = np.asarray(x), np.asarray(y)
    assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes())


def test_the_state_is_saved_packed_and_restores_bit_for_bit(tmp_path, monkeypatch):
  """The state item holds one array per dtype (Orbax/TensorStore leave memory behind
  per array saved: docs/reliability.md, "Soak"); `restore` gives back every leaf
  bit for bit on its target's sharding, and `restore_host` the same tree as a
  per-leaf checkpoint (dicts for dataclasses and named tuples, lists for tuples,
  empty nodes as Orbax restores them)."""
  import jax
  import optax
  from lottery_jax.engine import checkpoint
  r = loop.build(run_cfg())
  ckpt = Checkpointer(tmp_path / "packed", keep=2)
  ckpt.save(1, r.state, {"step": 1}, {"step": 1})
  ckpt.wait()
  ckpt.close()
  meta = json.loads((tmp_path / "packed" / "1" / "meta" / "metadata").read_text())
  layout = meta[checkpoint.PACKED_KEY]
  assert len(layout["leaves"]) == len(jax.tree.leaves(r.state)) > 20
  dtypes = {name for name, _ in layout["leaves"]}
  stored = json.loads((tmp_path / "packed" / "1" / "state" / "_METADATA").read_text())
  assert sorted(stored["tree_metadata"]) == [f"('{d}',)" for d in sorted(dtypes)]
  ckpt = Checkpointer(tmp_path / "packed", keep=2)
  state, data, _ = ckpt.restore(1, r.state)
  ckpt.close()
  _same_bytes(state, r.state)
  assert data == {"step": 1}
  assert all(x.sharding == y.sharding for x, y in
             zip(jax.tree.leaves(state), jax.tree.leaves(r.state)))

  tree = {"state": r.state, "dict": {}, "list": [], "tuple": (), "none": None,
          "empty_state": optax.EmptyState(), "pair": (np.ones(2, np.float16), np.int8(3)),
          "bf16": jax.numpy.arange(3, dtype=jax.numpy.bfloat16)}
  host = {}
  for kind in ("packed", "per_leaf"):
    if kind == "per_leaf":
      _per_leaf(monkeypatch)
    ckpt = Checkpointer(tmp_path / f"host_{kind}", keep=2)
    ckpt.save(2, tree, {"step": 2}, {"step": 2})
    ckpt.wait()
    ckpt.close()
    ckpt = Checkpointer(tmp_path / f"host_{kind}", keep=2)
    host[kind], _, meta = ckpt.restore_host(2)
    ckpt.close()
    assert (checkpoint.PACKED_KEY in meta) == (kind == "packed")
  _same_bytes(host["packed"], host["per_leaf"])
  assert host["packed"]["tuple"] == () and host["packed"]["empty_state"] is None


def test_a_per_leaf_checkpoint_still_restores_and_resumes_bitwise(straight, tmp_path,
                                                                  monkeypatch):
  """Checkpoints written before packing (one array per leaf, no `state_packed` in
  their meta) restore as before: a run interrupted at step 5 under the old layout
  resumes under the new one and ends bitwise equal to the uninterrupted run, its
  later checkpoints packed."""
  from lottery_jax.engine import checkpoint
  workdir = str(tmp_path)
  _per_leaf(monkeypatch)
  with interrupted_at(5, monkeypatch), pytest.raises(Interrupt):
    loop.run(run_cfg(), workdir)
  monkeypatch.undo()
  ckpt = Checkpointer(tmp_path / "checkpoints", keep=None, create=False)
  assert checkpoint.PACKED_KEY not in ckpt.read_meta(4)
  ckpt.close()
  loop.run(run_cfg(), workdir)
  assert_same_results(straight, workdir)
  ckpt = Checkpointer(tmp_path / "checkpoints", keep=None, create=False)
  assert checkpoint.PACKED_KEY in ckpt.read_meta(8)
  ckpt.close()


@pytest.mark.parametrize("path,step", [
    ("benchmarks/runs/cifar/full/jackpot90_T_s0/finetune/checkpoints", 195)])
def test_a_committed_per_leaf_checkpoint_reads_back(path, step):
  """A checkpoint committed before packing (a ResNet's 337 leaves) still reads back
  through `restore_host`, digest checked."""
  directory = os.path.join(REPO, path)
  if not os.path.isdir(os.path.join(directory, str(step))):
    pytest.skip(f"{path} is not in this checkout")
  ckpt = Checkpointer(directory, keep=None, create=False)
  try:
    state, data, meta = ckpt.restore_host(step)
  finally:
    ckpt.close()
  assert data["step"] == step and "state_packed" not in meta
  assert len(flat(state)) == len(meta["state_crc32"])



# ----------------------------------------------------------------- the summary's history
def _history_files(workdir):
  d = os.path.join(workdir, "history")
  return {int(f[:-5]): json.load(open(os.path.join(d, f)))
          for f in os.listdir(d) if f.endswith(".json")}


def test_the_history_is_written_per_checkpoint_not_resaved(straight):
  """Each checkpoint writes only the rows logged since the previous one
  (history/<step>.json, chained by "after"); its meta holds a count, not the rows;
  summary.json's history is the chain, in order, each row once."""
  files = _history_files(straight)
  assert sorted(files) == [2, 4, 6, 8]
  assert [files[s]["after"] for s in (2, 4, 6, 8)] == [None, 2, 4, 6]
  assert all([row["step"] for row in files[s]["rows"]] == [s] for s in files)
  summary = json.load(open(os.path.join(straight, "summary.json")))
  assert [row["step"] for row in summary["history"]] == [2, 4, 6, 8]
  assert summary["history"] == [row for s in (2, 4, 6, 8) for row in files[s]["rows"]]
  ckpt = Checkpointer(os.path.join(straight, "checkpoints"), keep=None, create=False)
  meta = ckpt.read_meta(8)
  ckpt.close()
  assert "history" not in meta and meta["history_log"] == {"after": 6, "rows": 4}


def test_a_checkpoint_with_its_history_in_meta_still_resumes_bitwise(straight, tmp_path,
                                                                     monkeypatch):
  """Checkpoints written before the history moved out of meta (all its rows in
  meta's `history`, no history/ folder) resume: the same summary history and
  results as the uninterrupted run."""
  workdir = str(tmp_path)
  with interrupted_at(5, monkeypatch), pytest.raises(Interrupt):
    loop.run(run_cfg(), workdir)
  monkeypatch.undo()
  rows = [row for s in (2, 4) for row in _history_files(workdir)[s]["rows"]]
  shutil.rmtree(tmp_path / "history")
  meta_file = tmp_path / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["history_log"]
  meta["history"] = rows
  meta_file.write_text(json.dumps(meta))
  loop.run(run_cfg(), workdir)
  assert_same_results(straight, workdir)
  got, want = (json.load(open(os.path.join(w, "summary.json")))["history"]
               for w in (workdir, straight))
  assert got == want and len(got) == 4


def test_a_lost_history_file_stops_the_resume_naming_it(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  with interrupted_at(5, monkeypatch), pytest.raises(Interrupt):
    loop.run(run_cfg(), workdir)
  monkeypatch.undo()
  os.remove(tmp_path / "history" / "2.json")
  with pytest.raises(DamagedCheckpointError, match="history/2.json, the log rows"):
    loop.run(run_cfg(), workdir)

# ----------------------------------------------------------------- 17.4 disk full
@pytest.fixture
def small_disk(tmp_path):
  """A 16 MiB tmpfs (needs root, as in CI); the filler file makes it full."""
  mnt = tmp_path / "disk"
  mnt.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
  try:
    yield mnt
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt):
  with open(mnt / "filler", "wb", buffering=0) as f:
    for size in (1 << 20, 4096, 1):
      with contextlib.suppress(OSError):
        while f.write(b"\0" * size):
          pass


def test_disk_full_during_a_checkpoint_write(straight, small_disk, monkeypatch):
  """The disk fills at step 5: the save at step 6 fails, the run stops with
  DiskFullError naming the checkpoint; steps 2 and 4 are intact and, space freed,
  the same command ends bitwise equal to the uninterrupted run. (16 KiB are left
  free: room for the step's log rows, history/6.json, written first, one page; not
  for Orbax's checkpoint, about 150 KiB, whose failure this test is about.)"""
  workdir = str(small_disk / "run")

  def fill_once_step_4_is_written():
    deadline = time.time() + 120
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "4")):
      assert time.time() < deadline, "checkpoint 4 was never finished"
      time.sleep(0.05)
    _fill(small_disk)
    filler = small_disk / "filler"
    os.truncate(filler, os.path.getsize(filler) - 16384)
  with interrupted_at(5, monkeypatch, before=fill_once_step_4_is_written):
    with pytest.raises(DiskFullError, match=r"no space left .*checkpoints") as e:
      loop.run(run_cfg(), workdir)
  assert "\n" not in str(e.value)
  assert {"2", "4"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))
  os.remove(small_disk / "filler")
  monkeypatch.undo()
  loop.run(run_cfg(), workdir)
  assert_same_results(straight, workdir)


def test_disk_full_during_export(straight, small_disk, monkeypatch):
  workdir = str(small_disk / "run")
  real = io.export

  def export(*args, **kw):
    _fill(small_disk)
    return real(*args, **kw)
  monkeypatch.setattr(io, "export", export)
  with pytest.raises(DiskFullError, match=r"no space left .*safetensors"):
    loop.run(run_cfg(), workdir)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  os.remove(small_disk / "filler")
  monkeypatch.undo()
  loop.run(run_cfg(), workdir)
  assert_same_results(straight, workdir)


def test_main_on_a_full_disk_exits_with_one_line(small_disk):
  _fill(small_disk)
  cmd = [sys.executable, "-m", "lottery_jax.main",
         f"--config={REPO}/tests/configs/tiny_search.py",
         f"--workdir={small_disk / 'run'}", "--config.search_random_weights=True"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == DiskFullError.exit_code, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stderr.startswith("error: no space left")


# ----------------------------------------------------------------- 17.7 umask
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    loop.run(run_cfg(num_steps=2, tensorboard=True), str(tmp_path))
  finally:
    os.umask(old)
  names = ["variables.safetensors", "masks.safetensors", "torch_state_dict.safetensors",
           "torch_state_dict.masks.safetensors", "summary.json", "config.json",
           "initial_eval.json"]
  for name in names:
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name


# ----------------------------------------------------------------- 17.1 fault injection
def _main(method, workdir, fault=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env.pop("LOTTERY_JAX_FAULT", None)
  if fault:
    env["LOTTERY_JAX_FAULT"] = fault
  cmd = [sys.executable, "-m", "lottery_jax.main", f"--config={CAMPAIGN}:{method}",
         f"--workdir={workdir}"]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO,
                        timeout=600)


# Per method, the faults injected one after the other into the same workdir, each run
# resuming the last (step counts drawn at random within each stage's length).
def _campaign(method, rng):
  step = lambda lo, hi: f"step:{rng.randint(lo, hi)}"  # noqa: E731
  return {
      # pretrain 14 steps (checkpoints every 4), then a 10-step search
      "jackpot": [step(1, 3), "checkpoint:2", "export:1", "stage:1"],
      # level_0 10 steps (rewind point at 3), then level_1 from step 3
      "imp": ["checkpoint:1", "stage:1", step(1, 6)],
      # a shared epoch (8 steps), 2 siblings to step 16, 3 retrained arms
      "siblings": ["checkpoint:2", "stage:2", "export:1"],
      # 14 steps, then the ticket written
      "strong": [step(1, 7), "checkpoint:2", "export:1"],
  }[method]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jackpot", "imp", "siblings", "strong"])
def test_sigkill_anywhere_then_resume_is_bitwise_identical(tmp_path, method):
  """SIGKILL inside a step, during a checkpoint write (Orbax's async write), between
  stages and during export, resumed each time by the same command: every exported
  result (params, masks, scores, BatchNorm statistics, tickets) bitwise equal to an
  uninterrupted run's, and the summary's history the same."""
  seed = random.randrange(1 << 30)
  rng = random.Random(seed)
  straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
  out = _main(method, straight_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  faults = _campaign(method, rng)
  for fault in faults:
    out = _main(method, killed_dir, fault)
    assert out.returncode == -signal.SIGKILL, (
        f"seed {seed}: {fault} was not reached (exit {out.returncode}): "
        f"{out.stderr[-2000:]}")
  out = _main(method, killed_dir)
  assert out.returncode == 0, f"seed {seed}, after {faults}: {out.stderr[-3000:]}"
  assert_same_results(straight_dir, killed_dir)
  for summary in straight_dir.rglob("summary.json"):
    a = json.loads(summary.read_text())
    b = json.loads((killed_dir / summary.relative_to(straight_dir)).read_text())
    if "history" in a:
      assert a["history"] == b["history"], summary


# ----------------------------------------------------------------- 17.6 short soak
def _traced_heap(tmp_path, monkeypatch, every=25, **overrides):
  """(step, bytes of Python heap traced by tracemalloc) every `every` steps of a run,
  taken after that step's log row and checkpoint, before the next step."""
  samples = []

  def sample(n):
    if (n - 1) % every == 0:
      gc.collect()
      samples.append((n - 1, tracemalloc.get_traced_memory()[0]))
  on_train_step(monkeypatch, sample)
  tracemalloc.start()
  try:
    loop.run(run_cfg(**overrides), str(tmp_path))
  finally:
    tracemalloc.stop()
  samples = [x for x in samples if x[0] >= 100]  # past compilation and first caches
  return np.array(samples, np.float64).T


def test_nothing_grows_with_steps(tmp_path, monkeypatch):
  """400 train steps (data iterator, step, TensorBoard writer, loop bookkeeping): the
  Python heap grows by less than 256 bytes a step; a batch (8 KiB here), a metrics
  tree or a log row kept per step is more. Measured: 28 and 61 B a step alone, -23
  in another run, 72 in a full suite's worker: the spread of the fit, not a growth
  (docs/reliability.md). Log rows: the next test; per checkpoint save (Orbax's
  bookkeeping), with RSS over 20,000+ steps: benchmarks/soak.py."""
  steps, heap = _traced_heap(tmp_path, monkeypatch, num_steps=400, log_every_steps=1000,
                             checkpoint_every_steps=10_000, tensorboard=True)
  slope = np.polyfit(steps, heap, 1)[0]
  print(f"heap growth per step: {slope:.1f} B")
  assert slope < 256, f"the traced heap grows {slope:.0f} B per step"


def test_log_rows_are_not_kept_past_a_checkpoint(tmp_path, monkeypatch):
  """A log row every step, a checkpoint every 50, the heap traced right after each
  checkpoint (no rows pending). Each row carries a ballast of its own, a distinct
  4 KiB string, so that a row kept anywhere (in memory, in a checkpoint's meta) costs
  at least 4 KiB a step. The bare rows (about 0.3 KiB) left too little between the
  cases: 412 B a step with every row kept (the loop before engine/history.py) against
  59-150 B without, and 373 B once in a loaded CI worker (2026-12-03), the fit's noise
  being objects in flight when a sample is taken (device arrays, the last save's
  layout, Orbax's specs, a prefetched batch), a few KiB to tens of KiB a sample.
  Measured on this VM beside another job (2026-12-03), rows dropped at each checkpoint:
  137-301 B a step in three runs with a 2 KiB ballast, 363-439 B in three with this
  one; rows kept (History.checkpoint patched to keep them): 2,676 B and 4,645 B. The
  bound, 2 KiB a step, is half the ballast: objects in flight would have to differ by
  100 KiB between two samples 50 steps apart to reach it."""
  real_log_row = monitor.log_row

  def log_row(*args, **kwargs):
    return {**real_log_row(*args, **kwargs), "test/ballast": os.urandom(2048).hex()}
  monkeypatch.setattr(monitor, "log_row", log_row)
  steps, heap = _traced_heap(tmp_path, monkeypatch, every=50, num_steps=400,
                             log_every_steps=1, checkpoint_every_steps=50,
                             keep_checkpoints=1)
  slope = np.polyfit(steps, heap, 1)[0]
  print(f"heap growth per step: {slope:.1f} B")
  assert slope < 2048, f"the traced heap grows {slope:.0f} B per step"
