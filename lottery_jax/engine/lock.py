"""One writer per workdir: `<workdir>/lock.json` names the run that holds it.

A run takes the lock before it writes anything and gives it back when it ends (on
success, on an error, on SIGTERM). A second run pointed at the same workdir refuses
with `WorkdirInUseError`, naming the holder: host, pid and start time.

A lock left behind by a killed run (SIGKILL, a preempted VM) is stale and is taken
over with a warning: on the same host when its process is gone (or its pid now
belongs to a process started later), on another host when its heartbeat (refreshed
every `HEARTBEAT_S` seconds while the run lives) is older than `STALE_AFTER_S`.

The lock is re-entrant within a process (an experiment and its stages share a
workdir). On a pod only process 0 takes it (`io.is_lead()`); the other processes
run under process 0's lock. It works on any path `etils.epath` reaches: local
files are created exclusively (O_EXCL); on an object store (`gs://`) it is written
and read back, which leaves a window of a few milliseconds for a race.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid

import psutil
from etils import epath

from lottery_jax.engine import io
from lottery_jax.engine.errors import WorkdirInUseError

log = logging.getLogger("lottery_jax")

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0  # four missed heartbeats: a preempted pod restarts in minutes


def _process_started(pid: int) -> float | None:
  try:
    return psutil.Process(pid).create_time()
  except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
    return None


_ME = {"host": socket.gethostname(), "pid": os.getpid(),
       "process_started": _process_started(os.getpid())}


@dataclasses.dataclass
class _Held:
  path: epath.Path
  record: dict
  depth: int
  stop: threading.Event
  thread: threading.Thread | None
  created_dir: bool


_held: dict[str, _Held] = {}
_mutex = threading.Lock()


def _describe(rec: dict) -> str:
  return (f"host {rec.get('host')!r}, pid {rec.get('pid')}, started "
          f"{rec.get('started', '?')}")


def _stale(rec: dict, now: float) -> str | None:
  """Why the holder `rec` is gone, or None if it may be alive."""
  if rec.get("host") == _ME["host"]:
    pid = rec.get("pid")
    started = _process_started(int(pid)) if isinstance(pid, int) else None
    if started is None:
      return f"process {pid} is not running"
    if rec.get("process_started") is not None and abs(
        started - rec["process_started"]) > 1.0:
      return f"pid {pid} now belongs to another process"
    return None
  beat = rec.get("heartbeat", 0.0)
  if now - float(beat) > STALE_AFTER_S:
    return f"its heartbeat is {now - float(beat):.0f} s old (> {STALE_AFTER_S:.0f} s)"
  return None


def _read(path: epath.Path) -> dict | None:
  try:
    rec = json.loads(path.read_text())
    return rec if isinstance(rec, dict) else {}
  except FileNotFoundError:
    return None
  except (ValueError, OSError):
    return {}  # half-written by a process killed mid-write: no live holder named


def _create(path: epath.Path, rec: dict) -> bool:
  """Writes the lock if there is none; whether this process now holds it."""
  data = json.dumps(rec, indent=1).encode()
  with io.disk_full_names(path, "locking the workdir with"):
    if not io.is_remote(path):
      try:
        fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
      except FileExistsError:
        return False
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      return True
    if path.exists():
      return False
    path.write_bytes(data)
  time.sleep(0.05)
  back = _read(path)
  return bool(back) and back.get("token") == rec["token"]


def _heartbeat(path: epath.Path, rec: dict, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    try:
      current = _read(path)
      if not current or current.get("token") != rec["token"]:
        log.warning("the workdir lock %s was taken from this run", path)
        return
      rec["heartbeat"] = time.time()
      io.write_json(path, rec)
    except Exception as e:  # a heartbeat must never kill the run
      log.warning("could not refresh the workdir lock %s: %s", path, e)


def acquire(workdir) -> str:
  """Takes the lock of `workdir` (creating the directory); returns its key for
  `release`. Raises WorkdirInUseError when a live run holds it."""
  key = os.fspath(io.absolute(workdir))
  with _mutex:
    if key in _held:
      _held[key].depth += 1
      return key
    if not io.is_lead():
      _held[key] = _Held(epath.Path(key), {}, 1, threading.Event(), None, False)
      return key
    root = epath.Path(key)
    created_dir = not root.exists()
    if not created_dir and not root.is_dir():
      raise NotADirectoryError(f"--workdir={key} is a file, not a directory; give a "
                               "directory (it is created if missing)")
    with io.disk_full_names(root, "creating"):
      root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    now = time.time()
    rec = {**_ME, "started": datetime.datetime.now().astimezone().isoformat(
        timespec="seconds"), "heartbeat": now, "token": uuid.uuid4().hex}
    for _ in range(3):
      if _create(path, rec):
        break
      holder = _read(path)
      if holder is None:
        continue  # released in between: try again
      why = _stale(holder, time.time()) if holder else "the lock file is unreadable"
      if why is None:
        raise WorkdirInUseError(
            f"{key} is in use by another run ({_describe(holder)}; lock file {path}). "
            "Wait for it to end, or use another --workdir; if that run is gone, "
            f"delete {path}")
      log.warning("taking over the stale workdir lock %s (%s; %s)", path,
                  _describe(holder) if holder else "no holder", why)
      with contextlib.suppress(FileNotFoundError):
        path.unlink()
    else:
      raise WorkdirInUseError(f"could not take the workdir lock {path}: other runs "
                              "keep taking it; use another --workdir")
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(path, rec, stop), daemon=True,
                              name=f"lock-heartbeat {key}")
    thread.start()
    _held[key] = _Held(path, rec, 1, stop, thread, created_dir)
    return key


def release(key: str) -> None:
  with _mutex:
    held = _held.get(key)
    if held is None:
      return
    held.depth -= 1
    if held.depth > 0:
      return
    del _held[key]
    if held.thread is None:
      return
    held.stop.set()
    current = _read(held.path)
    if current and current.get("token") == held.record["token"]:
      with contextlib.suppress(FileNotFoundError):
        held.path.unlink()
    root = held.path.parent
    if held.created_dir and root.exists() and not any(root.iterdir()):
      root.rmdir()  # a run that wrote nothing leaves no trace


@contextlib.contextmanager
def hold(workdir):
  """`with hold(workdir):` the workdir's lock for the block (see `acquire`)."""
  key = acquire(workdir)
  try:
    yield
  finally:
    release(key)
