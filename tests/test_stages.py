"""Stages on the engine: finished stages skipped, forks, rewind points, the sibling
axis end to end, distributed start-up once per process."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from lottery_jax import experiments, load_run
from lottery_jax.engine import distributed, loop
from lottery_jax.engine.stages import Stage, derive, run_stages
from test_engine import flat, tiny_config


def _dense(**kw):
  return tiny_config(**{"num_steps": 8, "checkpoint_every_steps": 4, "log_every_steps": 2,
                        "optimizer.learning_rate": 0.05, **kw})


def _same(a: str, b: str, parts=("masks", "scores", "params", "batch_stats")):
  ra, rb = load_run(a), load_run(b)
  for part in parts:
    fa, fb = flat(ra[part]), flat(rb[part])
    assert fa.keys() == fb.keys(), part
    for k in fa:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{part} {k}")


def test_finished_stage_is_skipped_not_rerun(tmp_path):
  first = loop.run(_dense(), str(tmp_path))
  stamp = {f: os.stat(tmp_path / f).st_mtime_ns
           for f in ("variables.safetensors", "summary.json", "initial_eval.json")}
  again = loop.run(_dense(), str(tmp_path))
  assert again["final_eval"] == first["final_eval"]
  assert {f: os.stat(tmp_path / f).st_mtime_ns for f in stamp} == stamp
  # A different config over a finished stage is refused, not silently returned.
  with pytest.raises(ValueError, match="finished run of a different config"):
    loop.run(_dense(**{"optimizer.learning_rate": 0.1}), str(tmp_path))


def test_fork_with_optimizer_continues_exactly(tmp_path):
  """A stage forked from another's step-4 checkpoint (params, BN, optimiser state,
  step, data position) and trained to step 8 ends bitwise where the source did."""
  src = str(tmp_path / "src")
  loop.run(_dense(rewind_step=4), src)
  assert os.path.isdir(os.path.join(src, "rewind", "4"))
  forked = _dense(**{"start.workdir": src, "start.step": 4})
  summary = loop.run(forked, str(tmp_path / "fork"))
  assert summary["forked_from"] == {"workdir": src, "step": 4}
  assert summary["steps"] == 8
  _same(src, str(tmp_path / "fork"))


def test_rewind_starts_from_bitwise_saved_weights(tmp_path):
  """IMP-style rewinding: weights and BN statistics of step k, step counter and data
  position continued, a fresh optimiser, the masks of another run."""
  src = str(tmp_path / "src")
  loop.run(_dense(rewind_step=3), src)
  pruned = str(tmp_path / "pruned")
  loop.run(_dense(**{"mask.program": "magnitude", "sparsity": 0.5, "pretrained": src}),
           pruned)
  cfg = _dense(**{"start.workdir": src, "start.step": 3, "start.optimizer": False,
                  "mask.program": "given", "mask.source": pruned})
  from lottery_jax.engine.checkpoint import Checkpointer
  saved, data_state, _ = Checkpointer(os.path.join(src, "rewind"), keep=None).restore_host(3)
  r = loop.build(cfg, loop.make_mesh())
  start = jax.device_get(r.state)
  assert int(start.step) == 3 and data_state["step"] == 3
  masks = flat(load_run(pruned)["masks"])
  for k, w in flat(saved["params"]).items():
    np.testing.assert_array_equal(flat(start.params)[k], np.where(masks[k], w, 0))
  for k, v in flat(saved["batch_stats"]).items():
    np.testing.assert_array_equal(flat(start.batch_stats)[k], v)
  # Fresh optimiser: momentum buffers are zero.
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(start.opt_state)
             if np.ndim(x) > 0)
  summary = loop.run(cfg, str(tmp_path / "rewound"))
  assert summary["steps"] == 8
  for k, m in flat(load_run(str(tmp_path / "rewound"))["masks"]).items():
    np.testing.assert_array_equal(m, masks[k])


def test_fork_from_a_missing_step_names_what_exists(tmp_path):
  src = str(tmp_path / "src")
  loop.run(_dense(), src)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 .*steps \[4, 8\]"):
    loop.run(_dense(**{"start.workdir": src, "start.step": 3}), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("mesh_axis", [0, 2])
def test_vmapped_siblings_equal_separate_runs(tmp_path, mesh_axis):
  """S=2 copies in one vmapped program end with the masks of two separate runs with
  the same data seeds, and weights equal to float32 rounding: vmap turns the convs
  into grouped convs, whose sums may run in another order (a few ulps per step;
  1e-5 relative after 8 SGD steps of a 3-conv net is ~100x that)."""
  sib = _dense(**{"siblings.count": 2, "siblings.mesh_axis": mesh_axis,
                  "mask.program": "magnitude", "sparsity": 0.5})
  summary = loop.run(sib, str(tmp_path / "sib"))
  assert len(summary["per_sibling"]) == 2
  assert len(summary["final_eval"]["per_sibling"]) == 2
  seeds = summary["sibling_data_seeds"]
  assert seeds[0] != seeds[1]
  for i, s in enumerate(seeds):
    alone = str(tmp_path / f"alone{i}")
    loop.run(_dense(**{"data.seed": s, "mask.program": "magnitude", "sparsity": 0.5}), alone)
    a, b = load_run(alone), load_run(loop.sibling_dir(str(tmp_path / "sib"), i))
    for k, m in flat(a["masks"]).items():
      np.testing.assert_array_equal(flat(b["masks"])[k], m)
    for part in ("params", "batch_stats"):
      for k, v in flat(a[part]).items():
        np.testing.assert_allclose(flat(b[part])[k], v, rtol=1e-5, atol=1e-6,
                                   err_msg=f"sibling {i} {part} {k}")


def test_siblings_resume_exactly(tmp_path):
  """A sibling run interrupted after its step-4 checkpoint and resumed (every copy's
  data position restored) ends bitwise where the uninterrupted one does."""
  cfg = _dense(**{"siblings.count": 2})
  loop.run(cfg, str(tmp_path / "straight"))
  cut = str(tmp_path / "cut")
  # Stop at step 4 (8 steps per epoch), then forget that it finished: as if killed
  # right after its step-4 checkpoint. The longer run resumes from that checkpoint.
  loop.run(derive(cfg, stop_epochs=4 / 8), cut)
  os.remove(os.path.join(cut, "summary.json"))
  loop.run(derive(cfg, allow_config_change=True), cut)
  for i in range(2):
    _same(loop.sibling_dir(str(tmp_path / "straight"), i), loop.sibling_dir(cut, i))


def test_distributed_start_up_once_per_process(tmp_path, monkeypatch):
  """Two stages (a search and its +T) in one process with multihost=True call
  jax.distributed.initialize exactly once."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, "_initialized", False)
  pre = str(tmp_path / "pre")
  loop.run(_dense(), pre)
  cfg = _dense(**{"mask.program": "jackpot", "sparsity": 0.9, "pretrained": pre,
                  "multihost": True, "finetune.num_epochs": 0.25, "num_steps": 4})
  out = experiments.run(cfg, str(tmp_path / "search"))
  assert "finetune" in out
  experiments.run(cfg, str(tmp_path / "search"))  # finished: skipped, still no re-init
  assert len(calls) == 1


def test_every_stage_is_validated_before_the_first_runs(tmp_path):
  bad = _dense(**{"mask.program": "magnitude", "sparsity": 0.0})
  with pytest.raises(ValueError, match="stage 'second'"):
    run_stages([Stage("first", _dense()), Stage("second", bad)], str(tmp_path))
  assert not os.listdir(tmp_path)
