"""Which Python objects the soak's loop keeps: tracemalloc in one process (issue 17.6).

Runs `loop.run` on `tests/configs/tiny_search.py` with the soak's overrides (random
weights, a log row every 50 steps, a checkpoint every 500 or $CKPT, TensorBoard on),
traces from step 300, samples the traced total every 250 steps after `gc.collect()`,
and compares snapshots taken after steps A and B by file, line and traceback
($FRAMES frames, default 12). docs/reliability.md ("The summary's history, and
60,000-step soaks") cites its output:

  nice -n 19 python benchmarks/soak_trace.py /tmp/soak_trace 3000 1000 3000
"""
import gc, json, sys, tracemalloc, os, time  # noqa: E401,F401
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import numpy as np
from lottery_jax.engine import loop
import lottery_jax.search, lottery_jax.tickets  # noqa: registers the programs
sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
import tiny_search

workdir, steps, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
frames = int(os.environ.get("FRAMES", "12"))
c = tiny_search.get_config()
c.search_random_weights = True
c.num_steps = steps
c.log_every_steps = 50
c.checkpoint_every_steps = int(os.environ.get("CKPT", "500"))
c.tensorboard = True
c.progress_bar = False
snaps = {}
samples = []
def on_step(n):
  if n == 301:
    tracemalloc.start(frames)
    print("tracing from step 300", time.strftime("%X"), flush=True)
  if n % 250 == 1 and n > 301:
    gc.collect()
    samples.append((n - 1, tracemalloc.get_traced_memory()[0]))
  if n - 1 in (a, b) or (n == steps and b not in snaps):
    gc.collect()
    snaps[b if n == steps else n - 1] = tracemalloc.take_snapshot()
    print("snapshot", n - 1, time.strftime("%X"), flush=True)


with loop.train_step_hook(on_step):
  summary = loop.run(c, workdir)
tracemalloc.stop()
x = np.array(samples, np.float64)
keep = x[:, 0] >= a
print("traced heap slope over steps %d-%d: %.2f B/step" % (a, x[keep, 0].max(), np.polyfit(x[keep, 0], x[keep, 1], 1)[0]))
rows = summary["history"]
print("history rows", len(rows), "json bytes per row", len(json.dumps(rows)) / len(rows))
filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
s1, s2 = snaps[a].filter_traces(filt), snaps[b].filter_traces(filt)
total = sum(st.size_diff for st in s2.compare_to(s1, "filename"))
print("total diff %d B over %d steps = %.2f B/step" % (total, b - a, total / (b - a)))
for key in ("filename", "lineno"):
  print("==== by", key)
  for st in s2.compare_to(s1, key)[:15]:
    print(st)
print("==== by traceback")
for st in s2.compare_to(s1, "traceback")[:12]:
  print("%+d B (%+d blocks)" % (st.size_diff, st.count_diff))
  for line in st.traceback.format()[-2 * frames:]:
    print("   ", line)
