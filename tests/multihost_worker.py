"""One process of tests/test_multihost.py: an experiment under `jax.distributed`.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR CONFIG_JSON REPORT

Starts JAX's distributed runtime on a loopback coordinator with CPU collectives
(gloo), then runs `experiments.run(config, WORKDIR)` with `config.multihost=True`,
as `python -m lottery_jax.main` does on a pod (the engine's own `initialize_once()`
then finds the runtime started and does nothing). CONFIG_JSON holds dotted
overrides of tests/configs/tiny_search.py.

Every file this process opens for writing, creates, renames or removes through
Python (`open`, `os.open`, pathlib, tempfile, `os.replace`, `os.mkdir`, ...) is
recorded with a Python audit hook (PEP 578) and written to REPORT with the
process's view of the run (process index, device counts, the train stream positions it read).
Files written from native code are not seen by the hook: safetensors' (Rust) are
recorded by wrapping `safetensors.numpy.save_file`, the only writer of them here;
Orbax's array data goes through TensorStore's C++ I/O and is not recorded (the test
allows process 1 checkpoint writes anyway: Orbax coordinates them).

The caller sets XLA_FLAGS (the simulated device count) before this starts.
"""

from __future__ import annotations

import json
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_events: list[tuple[str, str]] = []
_recording = True


def _audit(event: str, args: tuple) -> None:
  if not _recording:
    return
  if event == "open":
    path, mode, flags = args
    if isinstance(path, int):  # an already open descriptor
      return
    writes = (mode is not None and any(c in str(mode) for c in "wax+")) or \
        (mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
    if writes:
      _events.append(("open", os.fsdecode(path)))
  elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.symlink",
                 "os.link", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
    _events.append((event, os.fsdecode(args[0]) if not isinstance(args[0], int) else ""))
  elif event in ("os.rename", "os.replace"):
    _events.append((event, os.fsdecode(args[1])))


def main(argv: list[str]) -> None:
  global _recording
  process_id, num_processes, port = (int(a) for a in argv[1:4])
  workdir, overrides, report = argv[4], json.loads(argv[5]), argv[6]

  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from lottery_jax.engine import distributed
  if num_processes > 1:
    distributed.initialize_once(coordinator_address=f"127.0.0.1:{port}",
                                num_processes=num_processes, process_id=process_id,
                                initialization_timeout=120)

  # safetensors writes its files from Rust, past the audit hook: record its calls.
  import safetensors.numpy

  def recorded(save):
    def save_file(tensors, filename, *args, **kwargs):
      if _recording:
        _events.append(("open", os.fsdecode(filename)))
      return save(tensors, filename, *args, **kwargs)
    return save_file

  safetensors.numpy.save_file = recorded(safetensors.numpy.save_file)

  import importlib.util
  from lottery_jax import experiments
  from lottery_jax.data import pipeline

  here = os.path.dirname(os.path.abspath(__file__))
  spec = importlib.util.spec_from_file_location(
      "tiny_search", os.path.join(here, "configs", "tiny_search.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(overrides)

  # The positions of the global train stream this process reads (global batch
  # `pos // batch`, row `pos % batch`).
  positions: set[int] = set()
  original = pipeline._EpochStream.__getitem__

  def getitem(self, index):
    if not isinstance(index, slice):
      positions.add(int(index))
    return original(self, index)

  pipeline._EpochStream.__getitem__ = getitem

  sys.addaudithook(_audit)
  summary = experiments.run(config, workdir)
  _recording = False
  out = {
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      "devices": jax.device_count(), "local_devices": jax.local_device_count(),
      "accuracy": summary["final_eval"]["accuracy"],
      "finetune_accuracy": summary.get("finetune", {}).get("final_eval", {}).get("accuracy"),
      "stream_positions": sorted(positions),
      "writes": sorted(set(_events)),
  }
  with open(report, "w") as f:
    json.dump(out, f, indent=1)
  if num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
