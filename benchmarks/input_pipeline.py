"""Input pipeline throughput against the training step it has to feed.

Measures, with 0, 1 and 2 grain worker processes:
  * the CIFAR image-folder training pipeline (JPEG decode, pad-crop, flip,
    normalise, global jax.Array assembly) on the real CIFAR-10 zip, batch 128;
  * the ImageNet training preprocessing (JPEG decode, Inception random-resized
    crop to 224, flip, normalise) on synthetic JPEGs of ImageNet-like size
    (500x375 and similar, ~100 KB each), batch 32;
and the consumption rate of a jitted value_and_grad + SGD step of the matching
model (cifar_resnet20 and jackpot_resnet32 at batch 128, resnet50 at batch 32)
on the same machine. Prints a Markdown table (medians over repeats).

  python benchmarks/input_pipeline.py                       # everything
  python benchmarks/input_pipeline.py --parts=cifar,imagenet --workers=0,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # Run from a checkout without installing.
CIFAR_ZIP = os.path.join(REPO_ROOT, "..", "shared", "datasets", "cifar10-jpeg.zip")


def write_imagenet_like_jpegs(root: str, count: int, classes: int = 4, seed: int = 0) -> str:
  """Writes `root/train/<class>/*.jpg` of ImageNet-like sizes and textures."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  sizes = [(500, 375), (375, 500), (500, 333), (640, 480), (500, 400)]
  for i in range(count):
    w, h = sizes[i % len(sizes)]
    # Smooth colour fields plus fine noise: file sizes close to real photos (~100 KB).
    low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC))
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255)
    folder = os.path.join(root, "train", f"class{i % classes}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
  os.makedirs(os.path.join(root, "test", "class0"), exist_ok=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "test", "class0",
                                                                   "0.jpg"))
  return root


def pipeline_rate(cfg, batches: int, repeats: int) -> tuple[float, list[float]]:
  """Median images/s of `train_iter()` over `repeats` windows of `batches` batches."""
  from lottery_jax import data
  d = data.build(cfg, seed=0)
  it = d.train_iter()
  for _ in range(3):  # Warm-up: worker start, first batches.
    next(it)["image"].block_until_ready()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(batches):
      next(it)["image"].block_until_ready()
    rates.append(batches * d.global_batch_size / (time.perf_counter() - start))
  it.close()
  return statistics.median(rates), rates


def step_rate(model_name: str, batch: int, input_shape, num_classes: int, steps: int
              ) -> tuple[float, list[float]]:
  """Median images/s of a jitted value_and_grad + SGD step of a registered model."""
  import jax
  import jax.numpy as jnp
  import optax
  from lottery_jax import models
  model = models.get(model_name, num_classes=num_classes)
  rng = jax.random.key(0)
  x = jax.random.normal(rng, (batch, *input_shape), jnp.float32)
  y = jax.random.randint(rng, (batch,), 0, num_classes)
  variables = model.init(rng, x[:2], train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(params, batch_stats, x, y):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates["batch_stats"]

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  state = step(params, batch_stats, opt_state, x, y)  # Compile.
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state = step(*state[:3], x, y)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  rates = [batch / t for t in times]
  return statistics.median(rates), rates


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="cifar,imagenet,steps")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--cifar_zip", default=CIFAR_ZIP)
  parser.add_argument("--cifar_batches", type=int, default=30)
  parser.add_argument("--imagenet_images", type=int, default=400)
  parser.add_argument("--imagenet_batches", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args(argv)
  parts = set(args.parts.split(","))
  workers = [int(w) for w in args.workers.split(",")]

  import jax
  from lottery_jax import data
  print(f"# jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()}", flush=True)
  rows = []

  if "cifar" in parts:
    if not os.path.exists(args.cifar_zip):
      print(f"skipping CIFAR: {args.cifar_zip} not found", file=sys.stderr)
    else:
      for w in workers:
        cfg = data.default_config("folder")
        cfg.update(path=args.cifar_zip, batch_size=128, num_workers=w)
        median, rates = pipeline_rate(cfg, args.cifar_batches, args.repeats)
        rows.append(("CIFAR-10 folder zip, train (pad-crop-flip), B=128", f"{w} workers",
                     median, rates))
        print(rows[-1], flush=True)

  if "imagenet" in parts:
    with tempfile.TemporaryDirectory() as tmp:
      root = write_imagenet_like_jpegs(tmp, args.imagenet_images)
      for w in workers:
        cfg = data.default_config("folder")
        cfg.update(path=root, batch_size=32, eval_batch_size=8, num_workers=w,
                   preprocess="imagenet", image_size=224, resize_size=256, pad=0, flip=True)
        median, rates = pipeline_rate(cfg, args.imagenet_batches, args.repeats)
        rows.append(("ImageNet-like JPEGs ~500x375, train (RRC 224, flip), B=32",
                     f"{w} workers", median, rates))
        print(rows[-1], flush=True)

  if "steps" in parts:
    for name, batch, shape, classes in (("cifar_resnet20", 128, (32, 32, 3), 10),
                                        ("jackpot_resnet32", 128, (32, 32, 3), 10),
                                        ("resnet50", 32, (224, 224, 3), 1000)):
      median, rates = step_rate(name, batch, shape, classes, args.steps)
      rows.append((f"train step {name} (value_and_grad + SGD), B={batch}",
                   jax.devices()[0].platform, median, rates))
      print(rows[-1], flush=True)

  print("\n| what | setting | images/s (median) | all repeats |\n|---|---|---|---|")
  for what, setting, median, rates in rows:
    print(f"| {what} | {setting} | {median:.4g} | {', '.join(f'{r:.4g}' for r in rates)} |")


if __name__ == "__main__":
  main()
