"""Bad input, fuzzed (issue 17.5): every class gets one line on stderr naming the
field or file, exit status 2, no traceback, and a workdir left as it was. Each class
is a row of docs/reliability.md.

Through `lottery_jax.main` in this process (its flag parser and `main`, exactly what
`python -m lottery_jax.main` runs; an uncaught exception would fail the test), with
`loop.run` replaced by a tripwire where the input must be refused before any stage
starts.
"""

from __future__ import annotations

import os
import sys
from unittest import mock

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image

from lottery_jax import main as main_module
from lottery_jax.engine import loop
from test_engine import REPO, tiny_config
from test_reliability import snapshot

QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
TINY = os.path.join(REPO, "tests", "configs", "tiny_search.py")


class StageStarted(AssertionError):
  """A stage began although the input was bad (validation must come first)."""


def run_main(args, capsys):
  """(exit status, stderr) of `python -m lottery_jax.main *args`, in this process."""
  argv = ["lottery_jax.main", *args]
  flags = main_module.FLAGS
  for name in [n for n in flags if n.startswith("config.")]:
    delattr(flags, name)  # the previous call's override flags
  flags.unparse_flags()
  capsys.readouterr()
  # ml_collections finds the --config.<field> overrides in sys.argv itself.
  with mock.patch.object(sys, "argv", argv):
    try:
      rest = main_module.parse_flags(argv)
      main_module.main(rest)
      code = 0
    except SystemExit as e:
      code = e.code
  return code, capsys.readouterr().err


def assert_refused(code, err, *names):
  lines = err.strip().splitlines()
  assert code == 2, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  for name in names:
    assert name in lines[0], (name, lines[0])


@pytest.fixture
def tripwire(monkeypatch):
  def run(*a, **kw):
    raise StageStarted("a stage started on bad input")
  monkeypatch.setattr(loop, "run", run)


# ----------------------------------------------------------------- config values, fuzzed
# Fields of configs/quickstart.py (two stages) and a value outside what each takes.
OUT_OF_RANGE = {
    "sparsity": st.one_of(st.floats(min_value=1.0, max_value=1e9),
                          st.floats(max_value=-1e-9, min_value=-1e9)),
    "mask.rate": st.one_of(st.floats(max_value=0.0, min_value=-1e9),
                           st.floats(min_value=1.0, exclude_min=True, max_value=1e9)),
    "optimizer.learning_rate": st.floats(max_value=-1e-9, min_value=-1e9),
    "optimizer.momentum": st.one_of(st.floats(min_value=1.0, max_value=1e9),
                                    st.floats(max_value=-1e-9, min_value=-1e9)),
    "optimizer.weight_decay": st.floats(max_value=-1e-9, min_value=-1e9),
    "num_epochs": st.floats(max_value=0.0, min_value=-1e9),
    "num_steps": st.integers(max_value=-1, min_value=-10**9),
    "data.batch_size": st.integers(max_value=0, min_value=-10**9),
    "log_every_steps": st.integers(max_value=0, min_value=-10**9),
    "checkpoint_every_steps": st.integers(max_value=0, min_value=-10**9),
    "keep_checkpoints": st.integers(max_value=0, min_value=-10**9),
    "mask.max_swaps": st.integers(max_value=-1, min_value=-10**9),
    "rewind_step": st.integers(max_value=-2, min_value=-10**9),
    "freeze.prune_fraction": st.floats(min_value=1.0, max_value=1e9),
    "imp.prune_fraction": st.floats(min_value=1.0, max_value=1e9),
    "siblings.count": st.integers(max_value=-1, min_value=-10**9),
}
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
FLOAT_FIELDS = ["sparsity", "mask.rate", "optimizer.learning_rate", "optimizer.momentum",
                "optimizer.weight_decay", "num_epochs", "mask.rate_power",
                "finetune.learning_rate", "stop_epochs", "imp.prune_fraction"]
NAMED = ["experiment", "model.name", "mask.program", "mask.update_rule", "allocation",
         "mask.score_init", "mask.rate_schedule", "optimizer.name", "optimizer.schedule",
         "model.conv", "imp.scope", "freeze.distribution", "model.weight_init",
         "siblings.retrain_from"]
UNKNOWN_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12) \
    .filter(lambda s: s not in ("train", "dense", "jackpot", "sgd", "swap", "xla", "erk",
                                 "uniform", "global", "cosine", "shared", "init", "given",
                                 "imp", "random", "magnitude", "abs", "topk", "fixed",
                                 "constant", "decay", "adamw", "torch", "unrolled",
                                 "siblings", "quickstart", "layerwise", "multistep",
                                 "strong_ticket", "ticket_vs_finetune"))


def _override(field, value):
  if isinstance(value, float):
    value = repr(value)
  return f"--config.{field}={value}"


def assert_quickstart_refuses(tmp_path, capsys, overrides, *names):
  """configs/quickstart.py with the --config.* `overrides` is refused (the line names
  `names`) before its workdir is made."""
  workdir = tmp_path / "w"
  code, err = run_main([f"--config={QUICKSTART}", f"--workdir={workdir}", *overrides], capsys)
  assert_refused(code, err, *names)
  assert not workdir.exists()


SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_out_of_range_values_are_refused_before_any_stage(tmp_path, capsys, tripwire, data):
  field = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
  value = data.draw(OUT_OF_RANGE[field])
  assert_quickstart_refuses(tmp_path, capsys, [_override(field, value)], f"config.{field}=")


@SETTINGS
@given(field=st.sampled_from(FLOAT_FIELDS), value=NON_FINITE)
def test_non_finite_numbers_are_refused(tmp_path, capsys, tripwire, field, value):
  assert_quickstart_refuses(tmp_path, capsys, [_override(field, value)], f"config.{field}=")


@SETTINGS
@given(field=st.sampled_from(NAMED), name=UNKNOWN_NAME)
def test_unknown_names_are_refused(tmp_path, capsys, tripwire, field, name):
  assert_quickstart_refuses(tmp_path, capsys, [f"--config.{field}={name}"], field, repr(name))


@SETTINGS
@given(field=st.sampled_from(["sparsity", "num_steps", "seed", "tensorboard",
                              "optimizer.learning_rate", "data.batch_size"]),
       value=st.sampled_from(["abc", "[1,2]", "{}", "1e", "--", "0x"]))
def test_wrong_types_are_refused(tmp_path, capsys, field, value):
  assert_quickstart_refuses(tmp_path, capsys, [f"--config.{field}={value}"], f"--config.{field}")


CONTRADICTIONS = [
    ({"freeze.prune_fraction": 0.6, "freeze.lock_fraction": 0.5}, "freeze.lock_fraction"),
    ({"siblings.count": 3, "siblings.mesh_axis": 2}, "siblings.mesh_axis"),
    ({"imp.rewind_step": 2, "imp.rewind_epoch": 1.0}, "imp.rewind_epoch"),
    ({"imp.classifier_half_rate": True}, "imp.classifier_half_rate"),
    ({"num_epochs": 0.0, "num_steps": 0}, "num_epochs"),
    ({"mask.program": "jackpot", "mask.update_rule": "popup"}, "mask.update_rule"),
]


@pytest.mark.parametrize("fields,named", CONTRADICTIONS)
def test_contradictory_combinations_are_refused(tmp_path, capsys, tripwire, fields, named):
  assert_quickstart_refuses(tmp_path, capsys, [_override(k, v) for k, v in fields.items()],
                            f"config.{named}")


def test_a_jackpot_without_pretrained_weights_is_refused(tmp_path, capsys, tripwire):
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}"], capsys)
  assert_refused(code, err, "pretrained")


# ----------------------------------------------------------------- flags and files
def test_missing_config_file(tmp_path, capsys):
  code, err = run_main([f"--config={tmp_path}/nope.py", f"--workdir={tmp_path / 'w'}"],
                       capsys)
  assert_refused(code, err, "--config", "nope.py")


def test_config_file_with_an_error(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  code, err = run_main([f"--config={bad}", f"--workdir={tmp_path / 'w'}"], capsys)
  assert_refused(code, err, "bad")


def test_unknown_override_field(tmp_path, capsys):
  code, err = run_main([f"--config={QUICKSTART}", f"--workdir={tmp_path / 'w'}",
                        "--config.optimizer.learningrate=0.1"], capsys)
  assert_refused(code, err, "learningrate")


def test_model_kwargs_the_model_does_not_take(tmp_path, capsys, tripwire):
  code, err = run_main([f"--config={os.path.join(REPO, 'tests/configs/fault_campaign.py')}"
                        ":strong", f"--workdir={tmp_path / 'w'}",
                        "--config.model.kwargs={'widths': (8, 16, 16), 'depth': 3}"], capsys)
  assert_refused(code, err, "config.model.kwargs", "depth")


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pre"))
  loop.run(tiny_config(num_steps=2), workdir)
  return workdir


def _damaged_copy(src, dst, how):
  data = open(src, "rb").read()
  dst.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
  return dst


@pytest.mark.parametrize("kind", ["truncated .safetensors", "empty .safetensors",
                                  "truncated .pt"])
def test_damaged_pretrained_file(tmp_path, capsys, pretrained_run, kind):
  how, ext = kind.split()
  src = os.path.join(pretrained_run, "torch_state_dict.safetensors")
  if ext == ".pt":
    torch = pytest.importorskip("torch")
    import safetensors.torch
    full = tmp_path / "full.pt"
    torch.save(safetensors.torch.load_file(src), full)
    src = str(full)
  bad = _damaged_copy(src, tmp_path / f"weights{ext}", how)
  workdir = tmp_path / "w"
  code, err = run_main([f"--config={TINY}", f"--workdir={workdir}",
                        f"--config.pretrained={bad}"], capsys)
  assert_refused(code, err, str(bad), "truncated or damaged")
  assert not workdir.exists()


def test_missing_pretrained_file(tmp_path, capsys):
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}",
                        f"--config.pretrained={tmp_path}/nope.pt"], capsys)
  assert_refused(code, err, "config.pretrained", "nope.pt")


def test_pretrained_weights_of_another_model(tmp_path, capsys, pretrained_run):
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}",
                        f"--config.pretrained={pretrained_run}",
                        "--config.model.kwargs.widths=(8, 16, 32)"], capsys)
  assert_refused(code, err, pretrained_run, "shape-mismatched")


def _image_folder(root, classes=3, per_class=8, bad=None):
  for split in ("train", "test"):
    for c in range(classes):
      d = root / split / f"class{c}"
      d.mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(d / f"{i}.png")
  if bad is not None:
    target = root / "test" / "class1" / "2.png"  # read by the initial evaluation
    target.write_bytes(b"" if bad == "empty" else b"\x89PNG\r\n\x1a\n garbage")
    return target
  return root


def test_wrong_number_of_classes(tmp_path, capsys, pretrained_run):
  """Weights of a 10-class run into a 3-class image folder."""
  root = _image_folder(tmp_path / "images")
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}",
                        f"--config.pretrained={pretrained_run}",
                        "--config.data.name=folder", f"--config.data.path={root}",
                        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
                        "--config.data.max_train_examples=0",
                        "--config.data.max_eval_examples=0"], capsys)
  assert_refused(code, err, "classifier", "number of classes")


@pytest.mark.parametrize("bad", ["corrupt", "empty"])
def test_corrupt_or_empty_image(tmp_path, capsys, bad):
  images = tmp_path / "images"
  target = _image_folder(images, bad=bad)
  workdir = tmp_path / "w"
  code, err = run_main([f"--config={TINY}", f"--workdir={workdir}",
                        "--config.search_random_weights=True",
                        "--config.data.name=folder", f"--config.data.path={images}",
                        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
                        "--config.data.max_train_examples=0",
                        "--config.data.max_eval_examples=0"], capsys)
  assert_refused(code, err, str(target.relative_to(images)))
  assert not workdir.exists()


def test_mask_source_that_is_not_a_mask_file(tmp_path, capsys, pretrained_run):
  bad = tmp_path / "masks.safetensors"
  bad.write_bytes(b"\x00" * 5)
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}",
                        "--config.mask.program=given", "--config.mask.update_rule=",
                        "--config.sparsity=0.0", f"--config.mask.source={bad}"], capsys)
  assert_refused(code, err, str(bad))


def test_fork_from_a_step_that_was_not_kept(tmp_path, capsys, pretrained_run):
  code, err = run_main([f"--config={TINY}", f"--workdir={tmp_path / 'w'}",
                        "--config.search_random_weights=True",
                        f"--config.start.workdir={pretrained_run}", "--config.start.step=7"],
                       capsys)
  assert_refused(code, err, "config.start.workdir", "step 7")


def test_a_workdir_holding_another_configs_checkpoint_is_left_alone(tmp_path, capsys):
  workdir = tmp_path / "w"
  loop.run(tiny_config(num_steps=2), str(workdir))
  (workdir / "summary.json").unlink()   # as if interrupted after its last checkpoint
  before = snapshot(workdir)
  code, err = run_main([f"--config={TINY}", f"--workdir={workdir}",
                        "--config.search_random_weights=True"], capsys)
  assert_refused(code, err, str(workdir), "mask.program")
  assert snapshot(workdir) == before


def test_a_workdir_that_is_a_file(tmp_path, capsys):
  target = tmp_path / "file"
  target.write_text("mine")
  code, err = run_main([f"--config={TINY}", f"--workdir={target}",
                        "--config.search_random_weights=True"], capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert str(target) in err
  assert target.read_text() == "mine"


def test_gpu_runs_are_warned_that_bitwise_reproducibility_needs_deterministic_ops():
  """The CPU-tested bitwise promises need XLA's deterministic GPU kernels on a GPU
  (measured on an H200, BENCHMARKS.md): a GPU run without the flag is told so, a GPU
  run with it and any CPU or TPU run are not."""
  from lottery_jax.experiments import GPU_DETERMINISM_FLAG, gpu_determinism_warning
  msg = gpu_determinism_warning("gpu", "")
  assert msg is not None and GPU_DETERMINISM_FLAG in msg and "docs/reliability.md" in msg
  assert gpu_determinism_warning("gpu", f"--xla_gpu_autotune_level=2 {GPU_DETERMINISM_FLAG}") is None
  assert gpu_determinism_warning("gpu", "--xla_gpu_deterministic_ops=false") is not None
  assert gpu_determinism_warning("cpu", "") is None
  assert gpu_determinism_warning("tpu", "") is None
