"""The benchmark scripts still run against the current engine (smoke sizes only)."""

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def test_search_step_smoke_builds_runs_with_the_engine(capsys):
  sys.path.insert(0, BENCH)
  try:
    import search_step  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  search_step.main(["--case", "smoke", "--repeats", "1", "--warmup", "2",
                    "--variants", "dense,search"])
  out = capsys.readouterr().out
  assert "search / dense: wall" in out
  swaps = out.split("swaps per timed search step: [")[1].split("]")[0]
  assert int(swaps) > 0  # the engine's swap rule ran inside the timed step
