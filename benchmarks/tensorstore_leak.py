"""Stand-alone reproducer of the two TensorStore Python-binding leaks that Orbax hits at
every checkpoint save (issue 17.6; docs/reliability.md, "Soak"; the upstream report is
drafted in docs/upstream/tensorstore_leaks.md).

Run:  python benchmarks/tensorstore_leak.py [--calls 2000]

Only tensorstore is imported (no Orbax, no JAX). For each call Orbax makes per save:

* `ts.KvStore.Spec({"driver": "file", "path": p}).to_json()` (orbax-checkpoint
  0.12.8, `_src/serialization/tensorstore_utils.py:376`, once per array saved), with a
  new path each call as Orbax has (one directory per checkpoint step);
* `ts.experimental_collect_matching_metrics("/tensorstore/kvstore/")` (same file,
  line 1194, three times per save), after one file write so that kvstore metrics exist;

it runs `--calls` calls after a warm-up of 10% and prints what stays behind per call:
Python heap kept (tracemalloc, after gc.collect()) and RssAnon of /proc/self/status.
A leak-free call keeps about 0 bytes of both. Measured: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import tracemalloc

import tensorstore as ts


def rss_anon() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  return 0


def per_call(fn, calls: int) -> tuple[float, float]:
  for i in range(max(1, calls // 10)):  # warm-up: caches, interned strings, arenas
    fn(i)
  gc.collect()
  tracemalloc.start()
  heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_anon()
  for i in range(calls):
    fn(calls + i)
  gc.collect()
  heap1, rss1 = tracemalloc.get_traced_memory()[0], rss_anon()
  tracemalloc.stop()
  return (heap1 - heap0) / calls, (rss1 - rss0) / calls


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--calls", type=int, default=2000)
  a = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="ts_leak_")

  def spec_to_json(i: int) -> None:
    ts.KvStore.Spec({"driver": "file", "path": f"{tmp}/step_{i}/"}).to_json()

  def same_spec_to_json(i: int) -> None:
    ts.KvStore.Spec({"driver": "file", "path": f"{tmp}/step_0/"}).to_json()

  def spec_only(i: int) -> None:  # the Spec without to_json: the control
    ts.KvStore.Spec({"driver": "file", "path": f"{tmp}/step_{i}/"})

  kv = ts.KvStore.open({"driver": "file", "path": f"{tmp}/kv/"}).result()
  kv.write("x", b"0" * 1024).result()  # so that kvstore metrics exist

  def metrics(i: int) -> None:
    ts.experimental_collect_matching_metrics("/tensorstore/kvstore/")

  print(f"tensorstore from {os.path.dirname(ts.__file__)}; {a.calls} calls each")
  print("| call | Python heap kept, bytes per call | RssAnon, bytes per call |")
  print("|---|---|---|")
  for name, fn in (("KvStore.Spec(...) only (control)", spec_only),
                   ("KvStore.Spec(...).to_json(), new path each call", spec_to_json),
                   ("KvStore.Spec(...).to_json(), same path", same_spec_to_json),
                   ("experimental_collect_matching_metrics('/tensorstore/kvstore/')",
                    metrics)):
    heap, rss = per_call(fn, a.calls)
    print(f"| `{name}` | {heap:.0f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
  main()
