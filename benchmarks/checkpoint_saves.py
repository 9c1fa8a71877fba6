"""Back-to-back checkpoint saves of the soak's TrainState: RssAnon growth per save.

Run:  nice -n 19 python benchmarks/checkpoint_saves.py MODE [N] [CSV] [--arena-max=K]
  MODE per_leaf: the state saved one array per leaf (65 arrays; every checkpoint
                 written before packing), by turning `checkpoint.pack` off
  MODE packed:   the Checkpointer's default, one array per dtype (5 arrays)

Builds the state of benchmarks/soak.py (tests/configs/tiny_search.py, a jackpot
search on random weights), saves it N times (default 300) with `Checkpointer`
(malloc_trim on, as by default), waiting for each save, and prints the least-squares
slope of the process's RssAnon against the save count after the first 20% (the
warm-up), in KiB per save; CSV (optional) gets save,rss_anon_kib rows. Isolates the
memory Orbax and TensorStore keep per save from the training loop's. `--arena-max=K`
caps glibc's malloc arenas at K first thing (`config.malloc_arena_max`,
engine/malloc.py), before JAX starts its threads. Measured: see docs/reliability.md
("Soak").
"""

import importlib.util
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ARENA_MAX = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--arena-max=")]
sys.argv[1:] = [a for a in sys.argv[1:] if not a.startswith("--arena-max=")]
if ARENA_MAX and ARENA_MAX[-1]:
  from lottery_jax.engine import malloc  # noqa: E402  (before JAX starts its threads)
  malloc.limit_arenas(ARENA_MAX[-1])

import tempfile  # noqa: E402

import numpy as np  # noqa: E402

import lottery_jax.experiments  # noqa: E402,F401  (registers the mask programs)
from lottery_jax.engine import checkpoint, loop  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import rss_anon  # noqa: E402  (RssAnon of /proc/<pid>/status, bytes)


def main(argv) -> int:
  mode = argv[0] if argv else "packed"
  n = int(argv[1]) if len(argv) > 1 else 300
  out = argv[2] if len(argv) > 2 else None
  if mode not in ("per_leaf", "packed"):
    raise SystemExit(f"MODE is per_leaf or packed, not {mode!r}")
  if mode == "per_leaf":
    checkpoint.pack = lambda state, host: None
  spec = importlib.util.spec_from_file_location(
      "tiny_search", os.path.join(REPO, "tests", "configs", "tiny_search.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.search_random_weights = True
  state = loop.build(config).state
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpoint.Checkpointer(os.path.join(tmp, "checkpoints"), keep=2)
    for i in range(1, n + 1):
      ckpt.save(i, state, {"step": i}, {"step": i})
      ckpt.wait()
      rows.append((i, rss_anon(os.getpid()) // 1024))
    ckpt.close()
  if out:
    with open(out, "w") as f:
      f.writelines(f"{i},{a}\n" for i, a in rows)
  a = np.array(rows, np.float64)
  keep = a[:, 0] >= 0.2 * n
  slope = np.polyfit(a[keep, 0], a[keep, 1], 1)[0]
  from lottery_jax.engine import malloc
  print(f"{mode}: {n} saves, {malloc.arena_count()} malloc arenas, "
        f"RssAnon slope {slope:+.1f} KiB per save "
        f"({a[keep, 1][0]:.0f} -> {a[-1, 1]:.0f} KiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
