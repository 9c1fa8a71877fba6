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


def test_siblings_results_collects_an_unfinished_sweep_from_its_overlaps(tmp_path, monkeypatch):
  """`siblings_results.py store` / `collect` on a sweep that has trained its siblings
  but retrained nothing: the overlap rows (with chance) from each k's overlap.json, the
  retrained arms "-"; the committed MNIST-1D summaries beside it."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, BENCH)
  try:
    import siblings_results as sr  # pylint: disable=import-outside-toplevel
    import _evidence as ev  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  root, store = tmp_path / "runs", tmp_path / "store"
  shutil.copytree(os.path.join(sr.STORE, "mnist1d_s0"), root / "mnist1d_s0")
  for k, iou in ((0.0, 0.3), (0.5, 0.6)):
    d = root / "cifar10_s0" / f"k{k:g}"
    d.mkdir(parents=True)
    (d / "overlap.json").write_text(json.dumps({
        "shared_epochs": k, "siblings": 4, "per_sibling_test_accuracy": [0.4] * 4,
        "by_sparsity": [{"sparsity": s, "per_sibling_mask_sparsity": [s] * 4,
                         "overlap": {"mean_iou": iou, "chance_iou": 0.1}}
                        for s in (0.8, 0.9)]}))
  monkeypatch.setattr(sr, "STORE", str(store))
  monkeypatch.setattr(ev, "FIG", str(tmp_path / "fig"))
  sr.store(str(root), "cifar10_s0")
  assert (store / "cifar10_s0" / "k0.5" / "overlap.json").exists()
  text = sr.collect(str(root))
  assert "CIFAR-10" in text and "mnist1d" in text
  assert "| 0.5 | 0.6000 (n=1) | 0.1000 (n=1) | 0.6000 (n=1) | 0.1000 (n=1) |" in text
  assert "| 0.5 | 90% | - | - | - | 0.4000 (n=1) |" in text
  assert {"siblings_overlap.png", "siblings_arms.png"} <= set(os.listdir(tmp_path / "fig"))


def test_conv_rates_times_vgg19_convs_before_and_after_the_swap_fix(capsys):
  sys.path.insert(0, BENCH)
  try:
    import conv_rates  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  convs = conv_rates.model_convs("jackpot_vgg19", 2)
  assert sum(c[-1] for c in convs) == 17 and len(convs) == 10   # every conv, also the 2x2 ones
  conv_rates.main(["--models", "jackpot_vgg19", "--batch", "2", "--impls", "xla,xla-swapped",
                   "--repeats", "1", "--no-model", "--only", "2x2x2x512"])
  out = capsys.readouterr().out
  assert "| 2x2x2x512 | 3x3x512x512 | 1x1 | 4 | xla |" in out
  assert "| 2x2x2x512 | 3x3x512x512 | 1x1 | 4 | xla-swapped |" in out
