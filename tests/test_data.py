"""Input pipelines: embedded data, image folders, TFDS (mock), resume, sharding."""

from __future__ import annotations

import json
import os
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from lottery_jax import data
from lottery_jax.data import pipeline, preprocess, registry
from lottery_jax.data.sources import ArrayRecords

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_ZIP = os.path.join(REPO_ROOT, "..", "shared", "datasets", "cifar10-jpeg.zip")


# A source whose example i is the value i, so orders and coverage are visible.
@registry.register("_test_index", defaults=dict(train_split="train", eval_split="test",
                                                batch_size=16, mean=(0.0,), std=(1.0,)))
def _load_index(cfg, split):
  n = {"train": int(cfg.get("path") or 100), "test": 37}[split]
  x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
  return registry.Split(ArrayRecords(x, np.arange(n) % 10), num_classes=10,
                        native_shape=(1, 1, 1))


def cfg_for(name, **kw):
  cfg = data.default_config(name)
  cfg.update(kw)
  return cfg


def host(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def take(it, n):
  return [host(next(it)) for _ in range(n)]


def index_of(batch):
  return batch["image"].reshape(len(batch["image"])).astype(int)


# ------------------------------------------------------------------ registry


def test_names_and_default_configs():
  assert {"digits", "mnist1d", "folder", "cifar10", "cifar100", "imagenet2012"} <= set(
      data.names())
  assert data.default_config("imagenet2012").image_size == 224
  assert data.default_config("cifar10").preprocess == "cifar"
  # Unregistered names are TFDS names with generic defaults.
  assert data.default_config("mnist").preprocess == "none"
  with pytest.raises(ValueError, match="unknown config.data fields"):
    data.build(cfg_for("digits", batch_sizes=3))


# ------------------------------------------------------------ embedded data


def test_digits_batches_are_sharded_and_correct():
  d = data.build(cfg_for("digits", shuffle=False), seed=0)
  assert d.info.input_shape == (8, 8, 1) and d.info.num_classes == 10
  assert (d.info.num_train, d.info.num_eval) == (1437, 360)
  assert d.steps_per_epoch == 1437 // 64
  batch = next(d.train_iter())
  image, label = batch["image"], batch["label"]
  assert image.shape == (64, 8, 8, 1) and image.dtype == np.float32
  assert label.shape == (64,) and label.dtype == np.int32
  assert image.sharding == jax.sharding.NamedSharding(d.mesh, jax.sharding.PartitionSpec("data"))
  assert len(image.addressable_shards) == 8
  assert {s.data.shape for s in image.addressable_shards} == {(8, 8, 8, 1)}
  assert len({s.device for s in image.addressable_shards}) == 8
  # Values: first 64 train examples, scaled to [0,1] then normalised.
  from lottery_jax.data.sources import _digits_arrays
  x, y = _digits_arrays()["train"]
  mean, std = x.mean(), x.std()
  np.testing.assert_allclose(np.asarray(image), (x[:64] - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(label), y[:64])
  for shard in image.addressable_shards:
    np.testing.assert_allclose(shard.data, ((x[:64] - mean) / std)[shard.index], atol=1e-5)


def test_digits_eval_sees_every_example_once():
  d = data.build(cfg_for("digits", eval_batch_size=128), seed=0)
  from lottery_jax.data.sources import _digits_arrays
  x, y = _digits_arrays()["test"]
  batches = [host(b) for b in d.eval_iter()]
  assert len(batches) == 3 and all(b["image"].shape[0] == 128 for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == 360 and valid[:360].all() and not valid[360:].any()
  images = np.concatenate([b["image"] for b in batches])[valid]
  labels = np.concatenate([b["label"] for b in batches])[valid]
  np.testing.assert_array_equal(labels, y)
  train_x = _digits_arrays()["train"][0]
  np.testing.assert_allclose(images, (x - train_x.mean()) / train_x.std(), atol=1e-5)


def test_mnist1d_generated_offline():
  d = data.build(cfg_for("mnist1d"), seed=0)
  assert d.info.input_shape == (40, 1)
  assert (d.info.num_train, d.info.num_eval) == (4000, 1000)
  batch = host(next(d.train_iter()))
  assert batch["image"].shape == (128, 40, 1)
  assert abs(batch["image"].mean()) < 0.3 and 0.7 < batch["image"].std() < 1.3


# ------------------------------------------------- order, epochs and resume


def test_epochs_are_permutations_with_remainder_dropped():
  d = data.build(cfg_for("_test_index"), seed=3)  # 100 examples, batch 16 -> 6 steps.
  assert d.steps_per_epoch == 6
  batches = take(d.train_iter(), 12)
  for epoch in range(2):
    seen = np.concatenate([index_of(b) for b in batches[6 * epoch:6 * epoch + 6]])
    assert len(seen) == 96 and len(set(seen)) == 96
  first, second = (np.concatenate([index_of(b) for b in batches[s:s + 6]]) for s in (0, 6))
  assert not np.array_equal(first, second)  # Reshuffled each epoch.


def test_same_seed_same_order_other_seed_other_order():
  a = take(data.build(cfg_for("_test_index"), seed=1).train_iter(), 3)
  b = take(data.build(cfg_for("_test_index"), seed=1).train_iter(), 3)
  c = take(data.build(cfg_for("_test_index"), seed=2).train_iter(), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_max_examples_is_a_fixed_random_subset_not_the_first_n():
  # _test_index's example i is the value i; treat i // 10 as a class-ordered label
  # (image folders list records class by class), so the first 32 are 4 classes.
  subsets = []
  for seed in (0, 1):
    d = data.build(cfg_for("_test_index", max_train_examples=32, max_eval_examples=10),
                   seed=seed)
    assert (d.info.num_train, d.info.num_eval, d.steps_per_epoch) == (32, 10, 2)
    seen = np.concatenate([index_of(b) for b in take(d.train_iter(), 2)])
    assert len(set(seen)) == 32 and seen.max() >= 32      # not the first 32
    assert len(set(seen // 10)) >= 8                       # of 10 "classes"
    subsets.append(set(seen))
    evals = [host(b) for b in d.eval_iter()]
    ev = np.concatenate([index_of(b)[b["valid"]] for b in evals])
    assert len(ev) == 10 and len(set(ev)) == 10 and ev.max() >= 10
    assert np.all(np.diff(ev) > 0)                          # kept in source order
  assert subsets[0] == subsets[1]   # the subset does not depend on the run's seed


def _assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_resume_across_epoch_boundary_with_augmentation():
  # Random flips/crops are deterministic from (seed, stream index).
  cfg = cfg_for("digits", preprocess="cifar", image_size=8, pad=2, flip=True)
  d = data.build(cfg, seed=5)
  straight = take(d.train_iter(), 26)  # 22 steps per epoch: crosses into epoch 1.
  it = d.train_iter()
  take(it, 20)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 20
  resumed = data.build(cfg, seed=5).train_iter()
  resumed.set_state(state)
  assert resumed.epoch == 0
  _assert_same(take(resumed, 6), straight[20:])
  assert resumed.epoch == 1
  with pytest.raises(ValueError, match="different pipeline"):
    data.build(cfg, seed=6).train_iter().set_state(state)


def test_worker_processes_give_the_same_batches_and_resume():
  cfg = cfg_for("_test_index", preprocess="cifar", pad=1, flip=True, image_size=1)
  in_process = take(data.build(cfg, seed=0).train_iter(), 8)
  cfg.num_workers = 2
  d = data.build(cfg, seed=0)
  it = d.train_iter()
  first = take(it, 4)
  state = it.get_state()
  it.close()
  resumed = d.train_iter(state)
  _assert_same(first + take(resumed, 4), in_process)
  resumed.close()


# ------------------------------------------------------------- batch sizes


def test_per_device_batch_size_wins():
  d = data.build(cfg_for("digits", per_device_batch_size=4, batch_size=100), seed=0)
  assert d.global_batch_size == 32 and d.steps_per_epoch == 1437 // 32


def test_batch_not_divisible_by_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"60 .*8 devices"):
    data.build(cfg_for("digits", batch_size=60), seed=0)
  with pytest.raises(ValueError, match=r"eval batch size 100 .*8 devices"):
    data.build(cfg_for("digits", eval_batch_size=100), seed=0)


def test_submesh_data_axis():
  devices = np.asarray(jax.devices()).reshape(4, 2)
  mesh = jax.sharding.Mesh(devices, ("data", "model"))
  d = data.build(cfg_for("digits", batch_size=12), mesh=mesh, seed=0)
  batch = next(d.train_iter())
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {3}


# ------------------------------------------------ multi-host (simulated)


def test_each_process_reads_only_its_rows_of_the_global_batches(monkeypatch):
  """Two processes (simulated) read disjoint halves of every global batch, and
  together exactly the batches (augmentation included) one process reads, over two
  epochs; so a run does not depend on the number of processes."""
  one = data.build(cfg_for("_test_index", batch_size=16, augment=True), seed=0)
  one_it = iter(one._train_dataset(0))
  steps = 2 * one.steps_per_epoch
  whole = [index_of(next(one_it)) for _ in range(steps)]
  local = {}
  for p in range(2):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    d = data.build(cfg_for("_test_index", batch_size=16, augment=True), seed=0)
    assert d.local_batch_size == 8
    it = iter(d._train_dataset(0))
    local[p] = [index_of(next(it)) for _ in range(steps)]
    # Resuming at step 3 gives the same rows.
    resumed = iter(d._train_dataset(3))
    np.testing.assert_array_equal(index_of(next(resumed)), local[p][3])
    eval_ds = pipeline.grain.MapDataset.range(d.eval_steps * d.local_eval_batch_size).map(
        pipeline._EvalExample(d._eval_records, d._eval_fn, d.info.num_eval,
                              d.eval_batch_size, d.local_eval_batch_size, p))
    local[p, "eval"] = [(int(e["image"].item()), bool(e["valid"])) for e in eval_ds]
  for step in range(steps):
    a, b = local[0][step], local[1][step]
    assert len(a) == len(b) == 8
    assert not set(a) & set(b)
    np.testing.assert_array_equal(np.concatenate([a, b]), whole[step])
  valid = [i for p in range(2) for i, v in local[p, "eval"] if v]
  assert sorted(valid) == list(range(37))


# ------------------------------------------------------------ image folders


def _write_folder(root, *, classes=("cat", "ant", "bee"), per_class=5, size=(12, 10),
                  splits=("train", "test")):
  rng = np.random.default_rng(0)
  for split in splits:
    for ci, cls in enumerate(classes):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(per_class):
        arr = np.full(size[::-1] + (3,), 20 * ci, np.uint8) + rng.integers(0, 5, (1, 1, 3),
                                                                         dtype=np.uint8)
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(arr).save(os.path.join(root, split, cls, f"{i:03d}.{ext}"))
  return root


def _zip_folder(root, zip_path):
  with zipfile.ZipFile(zip_path, "w") as z:
    for dirpath, _, files in os.walk(root):
      for f in files:
        full = os.path.join(dirpath, f)
        z.write(full, os.path.relpath(full, root))
  return zip_path


@pytest.mark.parametrize("as_zip", [False, True])
def test_folder_from_directory_and_zip(tmp_path, as_zip):
  root = _write_folder(str(tmp_path / "imgs"))
  path = _zip_folder(root, str(tmp_path / "imgs.zip")) if as_zip else root
  cfg = cfg_for("folder", path=path, batch_size=8, eval_batch_size=8, image_size=0,
                preprocess="none", shuffle=False, mean=(0.0,), std=(1.0,))
  d = data.build(cfg, seed=0)
  assert d.info.class_names == ("ant", "bee", "cat")  # Sorted by name.
  assert d.info.input_shape == (10, 12, 3) and d.info.num_classes == 3
  assert (d.info.num_train, d.info.num_eval) == (15, 15)
  batch = host(next(d.train_iter()))
  np.testing.assert_array_equal(batch["label"], [0] * 5 + [1] * 3)
  # "ant" images were written with base value 20 * 1 (index in the given order).
  assert np.all(np.abs(batch["image"][:5] * 255 - 20) <= 6)
  evals = [host(b) for b in d.eval_iter()]
  assert sum(b["valid"].sum() for b in evals) == 15 and len(evals) == 2
  # The cifar recipe resizes to image_size and pads / crops.
  d = data.build(cfg_for("folder", path=path, batch_size=8, eval_batch_size=8,
                         image_size=16), seed=0)
  assert host(next(d.train_iter()))["image"].shape == (8, 16, 16, 3)


def test_folder_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="is empty"):
    data.build(cfg_for("folder", path=str(empty)), seed=0)
  (empty / "train").mkdir()
  (empty / "test").mkdir()
  with pytest.raises(ValueError, match="no class folders"):
    data.build(cfg_for("folder", path=str(empty)), seed=0)
  root = _write_folder(str(tmp_path / "imgs"), splits=("train",))
  with pytest.raises(ValueError, match=r"split 'test' does not exist.*available splits: train"):
    data.build(cfg_for("folder", path=root, batch_size=8), seed=0)
  with pytest.raises(ValueError, match="does not exist"):
    data.build(cfg_for("folder", path=str(tmp_path / "nowhere")), seed=0)


def test_corrupt_image_names_the_file(tmp_path):
  root = _write_folder(str(tmp_path / "imgs"))
  bad = os.path.join(root, "train", "ant", "002.jpg")
  with open(bad, "wb") as f:
    f.write(b"not a jpeg at all")
  d = data.build(cfg_for("folder", path=root, batch_size=8, eval_batch_size=8, shuffle=False),
                 seed=0)
  with pytest.raises(ValueError, match="002.jpg"):
    next(d.train_iter())


@pytest.mark.skipif(not os.path.exists(CIFAR_ZIP),
                    reason="../shared/datasets/cifar10-jpeg.zip (real CIFAR-10 as JPEG) is "
                           "not present")
def test_real_cifar10_zip_exact_eval():
  d = data.build(cfg_for("folder", path=CIFAR_ZIP, batch_size=128, eval_batch_size=512,
                         read_threads=2), seed=0)
  assert (d.info.num_train, d.info.num_eval, d.info.num_classes) == (50000, 10000, 10)
  assert d.info.class_names[:3] == ("airplane", "automobile", "bird")
  assert d.steps_per_epoch == 390
  batch = host(next(d.train_iter()))
  assert batch["image"].shape == (128, 32, 32, 3)
  assert abs(batch["image"].mean()) < 0.5
  labels, valid = [], []
  for b in d.eval_iter():
    labels.append(np.asarray(b["label"]))
    valid.append(np.asarray(b["valid"]))
  valid = np.concatenate(valid)
  assert len(valid) == 20 * 512 and valid.sum() == 10000
  np.testing.assert_array_equal(np.bincount(np.concatenate(labels)[valid]), [1000] * 10)


# ------------------------------------------------------------------- TFDS


tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_mock_exact_eval():
  with tfds.testing.mock_data(num_examples=37):
    d = data.build(cfg_for("cifar10", batch_size=16, eval_batch_size=16), seed=0)
    assert d.info.input_shape == (32, 32, 3) and d.info.num_classes == 10
    assert (d.info.num_train, d.info.num_eval) == (37, 37)
    batch = host(next(d.train_iter()))
    assert batch["image"].shape == (16, 32, 32, 3)
    source = tfds.data_source("cifar10", split="test", download=False)
    batches = [host(b) for b in d.eval_iter()]
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == 37
  images = np.concatenate([b["image"] for b in batches])[valid]
  expected = np.stack([preprocess.normalize(source[i]["image"], preprocess.CIFAR10_MEAN,
                                            preprocess.CIFAR10_STD) for i in range(37)])
  np.testing.assert_allclose(images, expected, atol=1e-5)


def test_tfds_imagenet2012_mock_224_crops():
  with tfds.testing.mock_data(num_examples=8):
    d = data.build(cfg_for("imagenet2012", batch_size=8, eval_batch_size=8, read_threads=1,
                           num_workers=0),
                   seed=0)
    assert d.info.input_shape == (224, 224, 3) and d.info.num_classes == 1000
    batch = host(next(d.train_iter()))
    evals = [host(b) for b in d.eval_iter()]
  assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
  assert len(evals) == 1 and evals[0]["image"].shape == (8, 224, 224, 3)
  assert evals[0]["valid"].all()


def test_tfds_not_prepared_names_dir_and_build_command(tmp_path):
  with pytest.raises(ValueError) as err:
    data.build(cfg_for("cifar10", data_dir=str(tmp_path)), seed=0)
  assert str(tmp_path) in str(err.value)
  assert "tfds build cifar10 --file_format=array_record" in str(err.value)
  with pytest.raises(ValueError, match="--manual_dir"):
    data.build(cfg_for("imagenet2012", data_dir=str(tmp_path)), seed=0)


# ---------------------------------------------------------- preprocessing


def test_preprocessing_ops():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
  out = preprocess.random_resized_crop(img, rng, 224, (0.08, 1.0), (3 / 4, 4 / 3))
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  out = preprocess.resize_shorter_center_crop(img, 256, 224)
  assert out.shape == (224, 224, 3)
  small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  crop = preprocess.pad_random_crop(small, rng, 4, 32)
  assert crop.shape == (32, 32, 3)
  np.testing.assert_array_equal(preprocess.pad_random_crop(small, rng, 0, 32), small)
  flips = {preprocess.random_flip(small, np.random.default_rng(s))[0, 0].tobytes()
           for s in range(20)}
  assert flips == {small[0, 0].tobytes(), small[0, -1].tobytes()}
  x = preprocess.normalize(np.full((2, 2, 3), 255, np.uint8), (0.5,), (0.25,))
  np.testing.assert_allclose(x, 2.0)


def test_unknown_name_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown data set 'no_such_data_set'"):
    data.build(cfg_for("no_such_data_set"), seed=0)
