"""The "siblings" experiment (seed 001, Movva, Frankle, Carbin 2021; ALGORITHMS.md
section 2) as stages of the one engine.

For one number of shared epochs k (`siblings.shared_epochs`):

1. `shared` (only when k > 0): dense training from theta_0 on the full schedule
   (`num_epochs`), stopped after k epochs at theta_k.
2. `siblings`: S = `siblings.count` copies trained from theta_k to the end of the
   schedule (step counter, learning rate, data position and optimiser state
   continued), differing only in data order (copy i reads seed
   `loop.data_seed(seed, i)`), in one vmapped program (`siblings.vmap=True`) or one
   stage per copy (`sibling<i>`, same seeds; the same result, `tests/test_siblings.py`).
3. For each sparsity s (`siblings.sparsities`, or `sparsity`): each sibling's one-shot
   global magnitude mask; their overlap (IoU per pair and layer, against chance); the
   union and the intersection at exactly s (`masks.combine_by_rank`: rank weights by
   |w| per sibling, keep by the smallest / largest rank over siblings, ties to the
   higher global index); the one-shot baseline (sibling 0's mask, i.e. one dense
   network pruned once).
4. `<arm>_s<s>` for arm in union / intersection / one_shot: the mask retrained
   (mask program "given", masks written to `<workdir>/masks/`), rewound to theta_k
   with a fresh optimiser (`siblings.retrain_from="shared"`), or to theta_0
   (`"init"`), to the same end step.

`siblings.shared_epochs_sweep` = (k1, k2, ...) runs one such experiment per k in
`<workdir>/k<k>/` (stages, skipped when finished) and collects them: steps 1-3 for
every k first, then step 4 for every k, so that the overlap against k is complete
before any retraining. Each k's overlaps are written to `<workdir>/k<k>/overlap.json`
as soon as its siblings are trained (`by_sparsity` [{sparsity, overlap,
per_sibling_mask_sparsity}], `per_sibling_test_accuracy`).

`summary.json`: `per_sibling` [{test_accuracy (the trained dense sibling), sparsity
(its one-shot mask)}], `overlap` {mean_iou, chance_iou, per_layer, pairs}, `union`,
`intersection`, `one_shot` {sparsity, test_accuracy, ...} at the first sparsity,
`by_sparsity` for all, `vmap`, `shared_epochs`; with a sweep, `sweep` holds one such
summary per k.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath

from lottery_jax import models
from lottery_jax.engine import io, loop, programs
from lottery_jax.engine.errors import ConfigError
from lottery_jax.engine.stages import Stage, derive, run_stages
from lottery_jax.experiments.registry import register
from lottery_jax.tickets import siblings as sib

ARMS = ("union", "intersection", "one_shot")


def _stage_base(config, k: float):
  """Dense training as every stage of one k sees it: only the fields a stage depends
  on (the sweep, the sparsities and the sibling count are the experiment's)."""
  return derive(config, **{
      "experiment": "train", "mask.program": "dense", "mask.update_rule": "",
      "mask.source": "", "sparsity": 0.0, "siblings.count": 0, "siblings.mesh_axis": 0,
      "siblings.shared_epochs": float(k), "siblings.shared_epochs_sweep": (),
      "siblings.sparsities": (), "finetune.num_epochs": 0.0, "stop_epochs": 0.0,
      "rewind_step": -1, "start.workdir": ""})


def _sparsities(config) -> tuple[float, ...]:
  out = tuple(float(s) for s in config.siblings.sparsities) or (float(config.sparsity),)
  if not all(0 < s < 1 for s in out):
    raise ConfigError(f"config.sparsity={config.sparsity!r} is invalid for experiment "
                      "'siblings': expected a number in (0, 1), or set siblings.sparsities")
  return out


def _check(config) -> None:
  if config.siblings.count < 2:
    raise ConfigError(f"config.siblings.count={config.siblings.count!r} is invalid for "
                      "experiment 'siblings': expected an int >= 2")
  _sparsities(config)
  if config.siblings.mesh_axis and not config.siblings.vmap:
    raise ConfigError("config.siblings.mesh_axis > 0 needs siblings.vmap=True (sequential "
                      "siblings have no sibling axis to spread)")


@register("siblings")
def siblings(config, workdir: str) -> dict[str, Any]:
  _check(config)
  sweep = tuple(float(k) for k in config.siblings.shared_epochs_sweep)
  if not sweep:
    summary = one_k(config, workdir, float(config.siblings.shared_epochs))
  else:
    # Every k's siblings (and their overlap.json) before any retraining: the overlap
    # against k, the cheap half, is complete first. The stages are the same either way.
    trained = [train_k(config, os.path.join(workdir, f"k{k:g}"), k) for k in sweep]
    runs = [one_k(config, os.path.join(workdir, f"k{k:g}"), k, t)
            for k, t in zip(sweep, trained)]
    summary = {"sweep": runs, "shared_epochs": list(sweep), "vmap": bool(config.siblings.vmap),
               "siblings": int(config.siblings.count)}
  if _lead():
    io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _lead() -> bool:
  import jax
  return jax.process_index() == 0


def train_k(config, workdir: str, k: float) -> dict[str, Any]:
  """Steps 1-3 for k shared epochs in `workdir`: the shared and sibling stages, each
  sibling's one-shot masks, their overlap, union and intersection (masks written to
  `<workdir>/masks/`, the overlaps to `<workdir>/overlap.json`). Returns what `one_k`
  retrains and reports."""
  S = int(config.siblings.count)
  base = _stage_base(config, k)
  shared_dir = os.path.join(workdir, "shared")
  stages = []
  fork: dict[str, Any] = {}
  if k > 0:
    stages.append(Stage("shared", derive(base, stop_epochs=k)))
    fork = {"start.workdir": shared_dir, "start.step": -1}
  if config.siblings.vmap:
    stages.append(Stage("siblings", derive(base, **{
        "siblings.count": S, "siblings.mesh_axis": config.siblings.mesh_axis, **fork})))
    sibling_dirs = [loop.sibling_dir(os.path.join(workdir, "siblings"), i) for i in range(S)]
  else:
    stages += [Stage(f"sibling{i}", derive(base, **{"data.seed": loop.data_seed(config.seed, i),
                                                      **fork}))
               for i in range(S)]
    sibling_dirs = [os.path.join(workdir, f"sibling{i}") for i in range(S)]
  out = run_stages(stages, workdir)
  if config.siblings.vmap:
    finals = out["siblings"]["final_eval"]["per_sibling"]
  else:
    finals = [out[f"sibling{i}"]["final_eval"] for i in range(S)]

  params = [io.load_run(d)["params"] for d in sibling_dirs]
  where = programs.prunable_where(config, models.spec(config.model.name).classifier)
  retrain_fork = ({"start.workdir": shared_dir, "start.step": -1, "start.optimizer": False}
                  if k > 0 and config.siblings.retrain_from == "shared" else {})
  mask_dir = os.path.join(workdir, "masks")
  if _lead():
    epath.Path(mask_dir).mkdir(parents=True, exist_ok=True)
  by_sparsity, retrain = [], []
  for s in _sparsities(config):
    one_shot = sib.one_shot_masks(params, s, where)
    combined = sib.combine(params, s, where)
    arm_masks = {"union": combined["union"].masks, "intersection": combined["intersection"].masks,
                 "one_shot": one_shot[0]}
    entry: dict[str, Any] = {
        "sparsity": s,
        "per_sibling_mask_sparsity": [1 - sib.kept_fraction(m, where) for m in one_shot],
        "overlap": sib.overlap_report(one_shot, where),
        "per_copy_kept": {m: combined[m].per_copy_kept for m in ("union", "intersection")},
    }
    for arm, m in arm_masks.items():
      path = os.path.join(mask_dir, f"{arm}_s{s:g}.safetensors")
      if _lead():
        io.save_masks(path, m)
      entry[arm] = {"sparsity": 1 - sib.kept_fraction(m, where), "mask": os.path.relpath(
          path, workdir)}
      retrain.append((entry, arm, Stage(f"{arm}_s{s:g}", derive(base, **{
          "mask.program": "given", "mask.source": path, "sparsity": s, **retrain_fork}))))
    by_sparsity.append(entry)
  if _lead():
    io.write_json(os.path.join(workdir, "overlap.json"), {
        "shared_epochs": k, "siblings": S,
        "by_sparsity": [{"sparsity": e["sparsity"], "overlap": e["overlap"],
                         "per_sibling_mask_sparsity": e["per_sibling_mask_sparsity"]}
                        for e in by_sparsity],
        "per_sibling_test_accuracy": [f["accuracy"] for f in finals]})
  return {"finals": finals, "sibling_dirs": sibling_dirs, "by_sparsity": by_sparsity,
          "retrain": retrain}


def one_k(config, workdir: str, k: float, trained: dict[str, Any] | None = None
          ) -> dict[str, Any]:
  """One sibling experiment with k shared epochs in `workdir` (`trained`: what
  `train_k` returned for it, when it ran already)."""
  t = trained if trained is not None else train_k(config, workdir, k)
  S = int(config.siblings.count)
  finals, sibling_dirs = t["finals"], t["sibling_dirs"]
  by_sparsity, retrain = t["by_sparsity"], t["retrain"]
  done = run_stages([st for _, _, st in retrain], workdir)
  for entry, arm, st in retrain:
    entry[arm]["test_accuracy"] = done[st.name]["final_eval"]["accuracy"]
    entry[arm]["workdir"] = st.name

  first = by_sparsity[0]
  return {
      "shared_epochs": k,
      "siblings": S,
      "vmap": bool(config.siblings.vmap),
      "retrain_from": config.siblings.retrain_from if k > 0 else "init",
      "per_sibling": [{"test_accuracy": f["accuracy"], "sparsity": sp, "workdir":
                       os.path.relpath(d, workdir)}
                      for f, sp, d in zip(finals, first["per_sibling_mask_sparsity"],
                                          sibling_dirs)],
      "overlap": first["overlap"],
      **{arm: first[arm] for arm in ARMS},
      "by_sparsity": by_sparsity,
      "data_seeds": [loop.data_seed(config.seed, i) for i in range(S)],
  }
