"""The benchmark scripts still run against the current engine (smoke sizes only)."""

import os
import sys

import pytest

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


def test_jpeg_quality_reencodes_every_image_and_lowers_psnr_with_quality(tmp_path):
  """benchmarks/jpeg_quality.py: a zip of JPEGs re-encoded at quality Q keeps every
  name, every image's shape and the other entries; the PSNR against the source falls
  as Q falls; the runs are the reduced pretraining on each quality's zip."""
  import io
  import zipfile
  import numpy as np
  from PIL import Image
  sys.path.insert(0, BENCH)
  try:
    import jpeg_quality  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  rng = np.random.default_rng(0)
  src = tmp_path / "src.zip"
  with zipfile.ZipFile(src, "w") as z:
    for split in ("train", "test"):
      for i in range(3):
        # smooth images with some texture, saved at quality 75, 4:2:0 like the zip
        x = np.linspace(0, 255, 32)
        img = (np.add.outer(x, x)[..., None] / 2 + rng.normal(0, 20, (32, 32, 3)))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=75, subsampling=2)
        z.writestr(f"{split}/cat/{i}.jpg", buf.getvalue())
    z.writestr("README.txt", b"kept as is")
  psnr = {q: jpeg_quality.reencode(str(src), str(tmp_path / f"q{q}.zip"), q)
          for q in (95, 50, 30)}
  assert psnr[95] > psnr[50] > psnr[30] > 20, psnr
  with zipfile.ZipFile(src) as a, zipfile.ZipFile(tmp_path / "q30.zip") as b:
    assert a.namelist() == b.namelist()
    assert b.read("README.txt") == b"kept as is"
    for n in a.namelist()[:-1]:
      assert a.read(n) != b.read(n)
      assert Image.open(io.BytesIO(b.read(n))).size == (32, 32)
  runs = jpeg_quality.runs()
  assert sorted(runs) == ["q30_s0", "q50_s0", "q75_s0", "q75_s1", "q95_s0"]
  assert any("cifar10-q50.zip" in a for a in runs["q50_s0"])
  assert any(a.endswith("cifar10-jpeg.zip") for a in runs["q75_s1"])
  assert "--config.model.conv=torch" in runs["q30_s0"]


def test_evidence_scripts_name_an_unknown_run_and_honour_the_names_given():
  """Every evidence script's `commands NAME...` prints the commands of those runs only,
  and an unknown name ends it with status 1 and a message that lists the runs, not a
  KeyError traceback (imp_results and jpeg_quality used to ignore the names)."""
  import subprocess
  scripts = {"imp_results": "imp_digits_s1", "slt_results": "m1d_p0.20_r0.20_s1",
             "siblings_results": "mnist1d_s2", "cifar_results": "full/jackpot90_s1",
             "jpeg_quality": "q50_s0"}
  for script, name in scripts.items():
    path = os.path.join(BENCH, script + ".py")
    ok = subprocess.run([sys.executable, path, "commands", name], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, (script, ok.stderr)
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("/" + name), (script, lines)
    bad = subprocess.run([sys.executable, path, "commands", name, "no_such_run"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1, (script, bad.returncode)
    assert "unknown run name(s): no_such_run" in bad.stderr and name in bad.stderr, script
    assert "Traceback" not in bad.stderr and bad.stdout == "", script


def test_jpeg_proxy_measures_each_compression_step_on_packaged_photographs():
  """benchmarks/jpeg_quality.py proxy: the stand-in tiles exist (the packages still ship
  the photographs), have CIFAR's shape, and the PSNR of each JPEG step falls as the
  quality does: 75 -> 95 distorts least, 75 -> 30 more than 75 -> 50."""
  sys.path.insert(0, BENCH)
  try:
    import jpeg_quality  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  rec = jpeg_quality.proxy_distortion(jpeg_quality.proxy_images(), factor=8)
  assert rec["tiles"] >= 8 and rec["factor"] == 8
  assert rec["75->95"] > rec["lossless->75"] > rec["75->30"], rec
  assert rec["75->95"] > rec["75->50"] > rec["75->30"] > 15, rec


def _tvf_gpu_table():
  sys.path.insert(0, BENCH)
  try:
    import tvf_gpu_table  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCH)
  return tvf_gpu_table


def test_tvf_gpu_tables_in_results_come_from_the_committed_gpu_runs():
  t = _tvf_gpu_table()
  root = os.path.join(os.path.dirname(BENCH), "benchmarks", "results", "gpu_h200", "tvf")
  results = open(os.path.join(os.path.dirname(BENCH), "RESULTS.md")).read()
  for net in ("vgg19", "mobilenet_v2"):
    table = t.table(root, net)
    assert table.count("\n| 0.") == 3          # one row per learning rate
    assert table in results


@pytest.mark.parametrize("name, seed", [("net", 0), ("net_s2", 2)])
def test_tvf_gpu_table_marks_arms_a_cut_run_did_not_reach(tmp_path, name, seed):
  import json  # pylint: disable=import-outside-toplevel
  t = _tvf_gpu_table()
  stage = tmp_path / f"{name}_lr0.1" / "lr_0.1"
  for arm, acc in (("pretrain", 0.5), ("ticket", 0.625)):
    (stage / arm).mkdir(parents=True)
    (stage / arm / "summary.json").write_text(json.dumps({
        "final_eval": {"accuracy": acc}, "initial_eval": {"accuracy": 0.1},
        "wall_time_s": 3.0, "steps": 10, "epochs": 1.0,
        "sparsity": {"of_all_weights": 0.8}}))
  (tmp_path / f"{name}_lr0.1.log").write_text("")   # logs beside the runs are skipped
  table = t.table(str(tmp_path), name)
  assert table.startswith("#### net on the lent H200") and f"seed {seed})" in table
  row = [l for l in table.splitlines() if l.startswith("| 0.1")]
  assert row == ["| 0.1 | 50.00 | 62.50 (10.00) | not run | not run |  |  |  |  | 3-3 |"]


def test_tvf_gpu_table_of_a_run_cut_before_its_ticket(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  t = _tvf_gpu_table()
  stage = tmp_path / "net_lr0.01" / "lr_0.01" / "pretrain"
  stage.mkdir(parents=True)
  (stage / "summary.json").write_text(json.dumps({
      "final_eval": {"accuracy": 0.5}, "initial_eval": {"accuracy": 0.1},
      "wall_time_s": 3.0, "steps": 10, "epochs": 1.0}))
  table = t.table(str(tmp_path), "net")
  assert table.startswith("#### net on the lent H200 (no ticket stage finished; seed 0)")
  assert "| 0.01 | 50.00 | not run (not run) | not run | not run |" in table
