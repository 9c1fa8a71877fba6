"""The wide ResNet-32 of the jackpot reference, PyTorch (CPU) against lottery_jax.

Run:  python benchmarks/vs_pytorch.py [--repeats 5] [--batch 128] [--impls xla,torch]

Builds the same network twice, the reference's `models/resnet_cifar.py` in plain
`torch.nn` (state-dict names as the jackpot repo, as the twin in
tests/test_convert.py) and `lottery_jax.models.get("jackpot_resnet32")`, with the
same weights, and times in one process, interleaved round by round (medians):

* torch/train:  forward + backward + SGD momentum step, PyTorch;
* torch/fwd:    forward only (train-mode BN, no grad), PyTorch;
* jax[impl]/train:  our dense training step (`engine.make_train_step`, weights
  train under all-ones masks, SGD momentum);
* jax[impl]/search: our jackpot search step (scores train through the
  straight-through estimator, swap rule with rate 1, 90% sparsity, magnitude
  scores), built as `engine.loop.build` does;
* jax[impl]/fwd:    forward only (train-mode BN);

for every convolution lowering in `--impls` (see lottery_jax/models/conv.py), each
traced inside `conv.use_impl(impl)` as the engine traces its steps under
`config.model.conv`: "xla" is the library's default, "torch" the opt-in
`--config.model.conv=torch` (PyTorch for large and grouped convs, XLA for small ones;
one-device processes only). Before the lowering became a config field, "auto" meant
"torch" on a one-device CPU with PyTorch installed; it now means "xla".
Both frameworks get the same number of threads: torch.set_num_threads(T) and
XLA's CPU client sized by the cores it sees (T = os.cpu_count() unless
--threads; XLA cannot be told fewer than the visible cores from Python, so
--threads below the core count only throttles torch and is reported as such).
The target of issue 6: search step <= 1.18 x PyTorch's dense step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lottery_jax import convert, masks as mask_algebra, models  # noqa: E402
from lottery_jax.engine import programs  # noqa: E402
from lottery_jax.engine.config import base_config  # noqa: E402
from lottery_jax.engine.state import TrainState, partition_placeholders  # noqa: E402
from lottery_jax.engine.step import make_train_step  # noqa: E402
from lottery_jax.models import conv  # noqa: E402
from lottery_jax.search import jackpot  # noqa: E402


def torch_resnet32(num_classes: int = 10):
  """The jackpot reference's wide ResNet-32 (widths 32/64/128, option-A, 1x1-conv fc)."""
  from lottery_jax.convert import torch_twins
  return torch_twins.make_torch("jackpot_resnet32", num_classes)


def median_ms(ts):
  return 1e3 * statistics.median(ts)


def build_jax(model, variables, impl: str, sparsity: float, batch):
  """Dense train step, search step and forward of `model`, traced under `impl`."""
  params, batch_stats = variables["params"], variables["batch_stats"]
  # The steps donate their state: every state owns its buffers.
  fresh = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
  tx = optax.sgd(0.1, momentum=0.9)
  where = mask_algebra.prunable_except("fc")
  ones = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
  zero_scores = jax.tree.map(lambda w: jnp.zeros((), w.dtype), params)

  def program(name, **fields):
    c = base_config()
    c.mask.program = name
    c.search_random_weights = True
    c.update_from_flattened_dict(fields)
    return programs.get_program(c, total_steps=10_000)

  dense_program = program("dense")
  dense_layout = programs.dense_layout(params)
  dense_state = TrainState(
      step=jnp.zeros((), jnp.int32), params=fresh(params), batch_stats=fresh(batch_stats),
      scores=zero_scores, masks=ones, partition=partition_placeholders(params),
      opt_state=tx.init({"params": params}), rng=jax.random.PRNGKey(0),
      bad_step=jnp.full((), -1, jnp.int32))

  # The jackpot program with the swap rule at rate 1 (the reference).
  search_program = program("jackpot", **{"sparsity": sparsity, "mask.update_rule": "swap"})
  layout = jackpot.search_layout(params, sparsity, "uniform", where)
  masks, scores = jackpot.initial_masks_and_scores(jax.random.PRNGKey(1), params, layout,
                                                   "magnitude")
  search_state = TrainState(
      step=jnp.zeros((), jnp.int32), params=fresh(params), batch_stats=fresh(batch_stats),
      scores=scores, masks=masks, partition=partition_placeholders(params),
      opt_state=tx.init({"scores": scores}), rng=jax.random.PRNGKey(0),
      bad_step=jnp.full((), -1, jnp.int32))

  # `use_impl` acts at trace time, and jit traces lazily: compile ahead of time inside
  # the block, or every impl would silently run the default lowering.
  with conv.use_impl(impl):
    dense_step = make_train_step(model, tx, dense_program, dense_layout, conv_impl=impl)
    dense_step = dense_step.lower(dense_state, batch).compile()
    search_step = make_train_step(model, tx, search_program, layout, conv_impl=impl)
    search_step = search_step.lower(search_state, batch).compile()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    forward = forward.lower(variables, batch["image"]).compile()
  text = dense_step.as_text()
  print(f"  conv impl {impl!r}: {text.count(' convolution(')} XLA convolution ops and "
        f"{text.count('lottery_jax_torch_conv2d_')} PyTorch convolution calls in the compiled "
        "dense step", flush=True)
  return {"train": (dense_step, dense_state), "search": (search_step, search_state),
          "fwd": forward}, impl


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  ap.add_argument("--impls", default="xla,torch",
                  help=f"comma-separated conv lowerings among {conv.IMPLS}, each traced "
                  "inside conv.use_impl (xla: the library's default; torch: the opt-in "
                  "--config.model.conv=torch, see lottery_jax/models/conv.py)")
  ap.add_argument("--sparsity", type=float, default=0.9)
  args = ap.parse_args(argv)

  import torch
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((args.batch, 32, 32, 3), np.float32)
  y_np = rng.integers(0, 10, args.batch)

  tmodel = torch_resnet32()
  topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
  tx_ = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
  ty = torch.from_numpy(y_np)
  loss_fn = torch.nn.CrossEntropyLoss()

  def torch_train():
    topt.zero_grad(set_to_none=True)
    loss = loss_fn(tmodel(tx_), ty)
    loss.backward()
    topt.step()
    return loss

  def torch_fwd():
    with torch.no_grad():
      return tmodel(tx_)

  # Same weights in both: the reference state dict through the converter.
  state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
  model = models.get("jackpot_resnet32", num_classes=10)
  variables = convert.load_torch_state_dict(state, "jackpot_resnet32", 10)
  batch = {"image": jnp.asarray(x_np), "label": jnp.asarray(y_np, jnp.int32)}

  cases = {"torch/train": torch_train, "torch/fwd": torch_fwd}
  for impl in args.impls.split(","):
    fns, impl = build_jax(model, variables, impl, args.sparsity, batch)
    holder = {k: fns[k][1] for k in ("train", "search")}

    def make_step(kind, fns=fns, holder=holder):
      step = fns[kind][0]

      def run():
        holder[kind], metrics = step(holder[kind], batch)
        return jax.block_until_ready(metrics["loss"])
      return run

    fwd = fns["fwd"]
    cases[f"jax[{impl}]/train"] = make_step("train")
    cases[f"jax[{impl}]/search"] = make_step("search")
    cases[f"jax[{impl}]/fwd"] = (
        lambda fwd=fwd: jax.block_until_ready(fwd(variables, batch["image"])))

  compile_s = {}
  for name, fn in cases.items():
    t0 = time.perf_counter()
    for _ in range(args.warmup):
      fn()
    compile_s[name] = time.perf_counter() - t0
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name, fn in cases.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)

  med = {name: median_ms(ts) for name, ts in times.items()}
  print(f"jax {jax.__version__}, torch {torch.__version__}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, visible cores {os.cpu_count()}, "
        f"repeats {args.repeats} (interleaved), backend {jax.default_backend()}")
  print(f"{'case':24s} {'median ms':>10s} {'min ms':>9s} {'x torch/train':>14s}  first call s")
  for name in cases:
    print(f"{name:24s} {med[name]:10.0f} {1e3 * min(times[name]):9.0f} "
          f"{med[name] / med['torch/train']:14.2f}  {compile_s[name]:.1f}")
  for impl in args.impls.split(","):
    s = med[f"jax[{impl}]/search"] / med["torch/train"]
    print(f"target jax[{impl}]/search <= 1.18 x torch/train: {s:.2f} "
          f"({'met' if s <= 1.18 else 'not met'}); search/dense "
          f"{med[f'jax[{impl}]/search'] / med[f'jax[{impl}]/train']:.2f}; "
          f"fwd ours/torch {med[f'jax[{impl}]/fwd'] / med['torch/fwd']:.2f}")


if __name__ == "__main__":
  main()
