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


def test_imp_bookkeeping_times_each_part_of_a_real_imp_run(tmp_path, capsys):
  sys.path.insert(0, BENCH)
  try:
    import imp_bookkeeping  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  out = imp_bookkeeping.main(["--levels", "1", "--steps", "4",
                              "--workdir", str(tmp_path / "imp")])
  rows = {r["stage"]: r for r in out["rows"]}
  assert set(rows) == {"level_0", "level_1"}
  assert rows["level_0"]["rewind_s"] == 0.0          # level 0 starts fresh
  assert rows["level_1"]["rewind_s"] > 0.0           # level 1 restored step k
  assert rows["level_1"]["prune_s"] > 0.0            # and pruned level 0's weights
  for r in rows.values():
    assert r["steps"] == 4 and r["train_s"] > 0.0 and r["compile_s"] > 0.0
  # The engine's functions are unwrapped again afterwards.
  from lottery_jax.engine import loop  # pylint: disable=import-outside-toplevel
  assert loop.run.__module__ == "lottery_jax.engine.loop"
  assert "bookkeeping / train" in capsys.readouterr().out
