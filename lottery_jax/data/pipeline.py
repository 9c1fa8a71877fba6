"""Sharded, resumable input pipelines on Grain, assembled into global jax.Arrays.

Training stream (per process, all `grain.MapDataset`, so every element has an
index and the whole stream is a pure function of (seed, step)):

  source -> [fixed random subset of max_train_examples]
    -> shuffle (grain's index shuffle, reseeded every epoch)
    -> epoch stream (epoch e, position i -> shuffled[e * num_train + i], keeping
       only the first steps_per_epoch * global_batch positions: drop remainder)
    -> random_map(augment) seeded by (seed, stream index)
    -> this process's rows of each global batch (rows p * local_batch onwards)
    -> batch(local_batch) -> [start_step:] -> iter (threads) -> mp_prefetch.

Every process builds the same global stream lazily and reads only the records of
its own rows, so the global batches (and a run's result) are the same for any
number of processes; with one process the stream is the one it always was.

The iterator state is therefore just the step count: restoring it rebuilds the
stream from that step, which gives exactly the batches an uninterrupted run
would have seen, with any number of worker processes (also a different one).

Eval: the eval split is laid out as `ceil(num_eval / eval_batch)` global
batches; process p fills its own slice of each batch, slots past the end
repeat example 0 with `valid = False`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Iterator

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lottery_jax.data import preprocess, registry
from lottery_jax.data import sources  # noqa: F401  (registers data sets)

DATA_AXIS = "data"

# Fields every data config has; registered sources override some (registry).
COMMON_DEFAULTS: dict[str, Any] = dict(
    name="digits",
    data_dir="",            # TFDS data_dir ("" = TFDS default / $TFDS_DATA_DIR).
    path="",                # Image folder or .zip for name="folder".
    train_split="train",
    eval_split="test",
    batch_size=128,         # Global train batch size.
    per_device_batch_size=0,  # > 0 wins: global = this * devices on the data axis.
    eval_batch_size=0,      # Global eval batch size; 0 = the train batch size.
    preprocess="none",      # "imagenet" | "cifar" | "none" (see preprocess.py).
    augment=True,           # Random train augmentations of the recipe.
    image_size=0,           # Output side (crop / resize); 0 = keep native size.
    resize_size=0,          # imagenet eval: shorter side before the center crop.
    pad=0,                  # cifar train: zero padding before the random crop.
    flip=False,             # Random horizontal flip in training.
    area_range=(0.08, 1.0),  # imagenet train: crop area fraction.
    aspect_ratio_range=(3 / 4, 4 / 3),  # imagenet train: crop aspect ratio.
    resample="bilinear",    # Pillow filter for resizes.
    mean=(),                # Per-channel (or one) mean in [0,1] units; () = data set default.
    std=(),
    channels=3,             # Image folders: 3 = RGB, 1 = grey.
    image_key="image",      # TFDS feature names.
    label_key="label",
    shuffle=True,           # Global shuffle, reseeded every epoch.
    seed=-1,                # >= 0 overrides the seed given to build().
    num_workers=0,          # Grain worker processes; 0 = in this process.
    read_threads=2,         # Threads per process producing batches.
    prefetch_batches=2,     # Batches buffered per process / worker.
    max_train_examples=0,   # > 0: use a fixed random subset of N train examples.
    max_eval_examples=0,    # > 0: use a fixed random subset of N eval examples.
)


def names() -> list[str]:
  """Registered data set names; any other TFDS image classification name works too."""
  return registry.names()


def default_config(name: str = "digits") -> ml_collections.ConfigDict:
  """The data config for `name`: common defaults merged with the source's own."""
  cfg = dict(COMMON_DEFAULTS)
  cfg.update(registry.spec(name).defaults)
  cfg["name"] = name
  return ml_collections.ConfigDict(cfg)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and the engine need to know about a data set.

  Attributes:
    name: data set name.
    num_classes: number of classes.
    input_shape: shape of one preprocessed example, e.g. (32, 32, 3) or (40, 1).
    num_train: training examples used (after max_train_examples).
    num_eval: eval examples (after max_eval_examples); eval sees each once.
    class_names: class names if the source knows them.
  """

  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  num_train: int
  num_eval: int
  class_names: tuple[str, ...] | None = None


# --------------------------------------------------------------- grain pieces


class _EpochStream(grain.MapDataset):
  """Infinite stream over epochs of a shuffled shard, dropping each epoch's tail.

  Element `j` is epoch `e = j // per_epoch`, position `i = j % per_epoch`, read
  from `parent[e * len(parent) + i]`; a grain shuffle parent reshuffles for
  indices past its length, so every epoch has its own order.
  """

  def __init__(self, parent: grain.MapDataset, per_epoch: int):
    super().__init__(parent)
    self._per_epoch = per_epoch
    self._epoch_len = len(parent)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"_EpochStream(per_epoch={self._per_epoch})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._per_epoch)
    return self._parent[epoch * self._epoch_len + position]


class _ProcessRows(grain.MapDataset):
  """Process `p`'s rows of every global batch of a stream: element `j` is row
  `p * local_batch + j % local_batch` of global batch `j // local_batch`."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int,
               process_index: int):
    super().__init__(parent)
    self._global_batch = global_batch
    self._local_batch = local_batch
    self._offset = process_index * local_batch

  def __len__(self) -> int:
    return sys.maxsize // (self._global_batch // self._local_batch)

  def __str__(self) -> str:
    return f"_ProcessRows(offset={self._offset}, local_batch={self._local_batch})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self._local_batch)
    return self._parent[step * self._global_batch + self._offset + row]


class _TrainExample(grain.transforms.RandomMap):

  def __init__(self, fn):
    self._fn = fn

  def random_map(self, element, rng: np.random.Generator):
    return self._fn(element, rng)


class _BatchMap(grain.transforms.Map):

  def __init__(self, fn):
    self._fn = fn

  def map(self, element):
    return self._fn(element)


SUBSET_SEED = 0  # The subsets of max_*_examples do not depend on the run's seed.


class _Subset:
  """Random-access view of `records` at sorted `indices` (picklable for workers)."""

  def __init__(self, records, indices: np.ndarray):
    self._records = records
    self._indices = indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    return self._records[int(self._indices[i])]


def _subset(records, limit: int, salt: int):
  """`limit` records drawn uniformly without replacement, in their original order.

  Sources list records in a structured order (image folders class by class), so
  the first N would be one or two classes. The draw uses a fixed seed (and a
  per-split `salt`), so runs with different seeds see the same examples.
  """
  n = len(records)
  if limit <= 0 or limit >= n:
    return records, n
  rng = np.random.default_rng([SUBSET_SEED, salt])
  return _Subset(records, np.sort(rng.choice(n, limit, replace=False))), limit


class _EvalExample(grain.transforms.Map):
  """Global eval slot -> preprocessed example with `valid`."""

  def __init__(self, records, fn, num_eval: int, eval_batch: int, local_batch: int,
               process_index: int):
    self._records = records
    self._fn = fn
    self._num_eval = num_eval
    self._eval_batch = eval_batch
    self._local_batch = local_batch
    self._process_index = process_index

  def map(self, slot: int) -> dict:
    step, i = divmod(slot, self._local_batch)
    index = step * self._eval_batch + self._process_index * self._local_batch + i
    valid = index < self._num_eval
    example = self._fn(self._records[index if valid else 0], None)
    example["valid"] = np.bool_(valid)
    return example


def _iter_dataset(ds: grain.MapDataset, cfg: Any) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, int(cfg.read_threads)),
      prefetch_buffer_size=max(1, int(cfg.prefetch_batches))))
  if int(cfg.num_workers) > 0:
    # Grain's multiprocess prefetch reads absl flags; outside `app.run` (tests,
    # notebooks) they are unparsed and reading them raises. Defaults are fine.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(cfg.num_workers),
        per_worker_buffer_size=max(1, int(cfg.prefetch_batches))))
  return it


# ------------------------------------------------------------------- the data


class TrainIterator:
  """Infinite iterator of sharded global train batches; state = the step count."""

  def __init__(self, data: "Data", step: int = 0):
    self._data = data
    self._step = int(step)
    self._it = None

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, jax.Array]:
    return self._data._to_global(self.next_local())  # pylint: disable=protected-access

  def next_local(self) -> dict[str, np.ndarray]:
    """The next batch as this process's NumPy slice (not yet a global array)."""
    if self._it is None:
      self._it = iter(self._data._train_dataset(self._step))  # pylint: disable=protected-access
    local = next(self._it)
    self._step += 1
    return local

  @property
  def step(self) -> int:
    """Number of batches yielded so far (including before a restore)."""
    return self._step

  @property
  def epoch(self) -> int:
    """Epoch of the next batch."""
    return self._step // self._data.steps_per_epoch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: `{"step": ..., "fingerprint": {...}}`."""
    return {"step": self._step, "fingerprint": dict(self._data.fingerprint)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `state` (from `get_state`); the next batch is the one after it."""
    saved = dict(state.get("fingerprint", {}))
    ours = self._data.fingerprint
    diff = {k: (saved.get(k), ours.get(k)) for k in set(saved) | set(ours)
            if saved.get(k) != ours.get(k)}
    if diff:
      raise ValueError("the saved data iterator state comes from a different pipeline; "
                       "differences (saved, now): " +
                       ", ".join(f"{k}={v}" for k, v in sorted(diff.items())))
    self.close()
    self._step = int(state["step"])

  def close(self) -> None:
    """Stops grain worker processes, if any."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


class StackedTrainIterator:
  """S train pipelines (one data order each) as one iterator of `[S, batch, ...]`
  global batches, for a state with a sibling axis. Its state holds every
  pipeline's, so resuming is exact for each copy."""

  def __init__(self, datas: "list[Data]", sharding: NamedSharding):
    self._its = [d.train_iter() for d in datas]
    self._sharding = sharding
    self._process_count = datas[0].process_count

  def __iter__(self) -> "StackedTrainIterator":
    return self

  def __next__(self) -> dict[str, jax.Array]:
    locals_ = [it.next_local() for it in self._its]
    out = {}
    for key in locals_[0]:
      value = np.stack([np.asarray(batch[key]) for batch in locals_])
      global_shape = (value.shape[0], value.shape[1] * self._process_count) + value.shape[2:]
      out[key] = _put(self._sharding, value, global_shape)
    return out

  @property
  def step(self) -> int:
    return self._its[0].step

  def get_state(self) -> dict[str, Any]:
    return {"step": self.step, "siblings": [it.get_state() for it in self._its]}

  def set_state(self, state: dict[str, Any]) -> None:
    subs = state.get("siblings")
    if subs is None or len(subs) != len(self._its):
      raise ValueError(f"the saved data iterator state holds {len(subs or [])} sibling "
                       f"pipelines; this run has {len(self._its)}")
    for it, sub in zip(self._its, subs):
      it.set_state(sub)

  def close(self) -> None:
    for it in self._its:
      it.close()


class Data:
  """A built input pipeline; see `build`."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: Mesh, seed: int):
    self.config = cfg
    self.mesh = mesh
    if DATA_AXIS not in mesh.shape:
      raise ValueError(f"the mesh has no {DATA_AXIS!r} axis (axes: {tuple(mesh.shape)})")
    data_devices = int(mesh.shape[DATA_AXIS])
    self.sharding = NamedSharding(mesh, P(DATA_AXIS))
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()

    per_device = int(cfg.per_device_batch_size)
    self.global_batch_size = per_device * data_devices if per_device > 0 else int(cfg.batch_size)
    self.eval_batch_size = int(cfg.eval_batch_size) or self.global_batch_size
    for what, size in (("batch size", self.global_batch_size),
                       ("eval batch size", self.eval_batch_size)):
      if size <= 0:
        raise ValueError(f"global {what} must be positive, got {size}")
      if size % data_devices:
        raise ValueError(f"global {what} {size} is not divisible by the {data_devices} "
                         f"devices of the mesh's {DATA_AXIS!r} axis")
      if size % self.process_count:
        raise ValueError(f"global {what} {size} is not divisible by the "
                         f"{self.process_count} processes")
    self.local_batch_size = self.global_batch_size // self.process_count
    self.local_eval_batch_size = self.eval_batch_size // self.process_count

    self.seed = int(cfg.seed) if int(cfg.seed) >= 0 else int(seed)
    shuffle_seed, augment_seed = np.random.SeedSequence(self.seed).generate_state(2)
    self._shuffle_seed, self._augment_seed = int(shuffle_seed), int(augment_seed)

    spec = registry.spec(str(cfg.name))
    train = spec.load(cfg, str(cfg.train_split))
    evals = spec.load(cfg, str(cfg.eval_split))
    mean = tuple(cfg.mean) or train.mean
    std = tuple(cfg.std) or train.std
    self.options = preprocess.Options.from_config(cfg, mean, std)

    self._train_records, num_train = _subset(train.records, int(cfg.max_train_examples), 1)
    self._eval_records, num_eval = _subset(evals.records, int(cfg.max_eval_examples), 2)
    self.steps_per_epoch = num_train // self.global_batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"global batch size {self.global_batch_size} is larger than the "
                       f"{num_train} training examples of {cfg.name!r}")
    self.eval_steps = math.ceil(num_eval / self.eval_batch_size)
    self.info = DatasetInfo(
        name=str(cfg.name), num_classes=train.num_classes,
        input_shape=preprocess.output_shape(self.options, train.native_shape),
        num_train=num_train, num_eval=num_eval,
        class_names=tuple(train.class_names) if train.class_names else None)
    self.fingerprint = {
        "name": str(cfg.name), "seed": self.seed, "num_train": num_train,
        "global_batch_size": self.global_batch_size, "process_count": self.process_count,
        "shuffle": bool(cfg.shuffle)}
    if num_train < len(train.records):
      self.fingerprint["subset"] = f"random:{SUBSET_SEED}"  # not the first N (older runs)
    self._train_fn = preprocess.make_example_fn(self.options, train=True,
                                                augment=bool(cfg.augment))
    self._eval_fn = preprocess.make_example_fn(self.options, train=False, augment=False)
    self._batch_fn = preprocess.make_batch_fn(self.options)

  def __repr__(self) -> str:
    return (f"Data({self.info}, global_batch_size={self.global_batch_size}, "
            f"steps_per_epoch={self.steps_per_epoch}, eval_steps={self.eval_steps})")

  # -- training

  def _train_dataset(self, start_step: int) -> grain.IterDataset:
    ds = grain.MapDataset.source(self._train_records)[:self.info.num_train]
    # One global order (shuffle, epochs, augmentation seeds by global position), then
    # this process's rows of every global batch: the global batches, and so the run,
    # do not depend on the number of processes, and each process reads only its rows.
    if self.config.shuffle:
      ds = ds.shuffle(seed=self._shuffle_seed)
    ds = _EpochStream(ds, per_epoch=self.steps_per_epoch * self.global_batch_size)
    ds = ds.random_map(_TrainExample(self._train_fn), seed=self._augment_seed)
    if self.process_count > 1:
      ds = _ProcessRows(ds, self.global_batch_size, self.local_batch_size,
                        self.process_index)
    ds = ds.batch(self.local_batch_size, drop_remainder=True).map(_BatchMap(self._batch_fn))
    return _iter_dataset(ds[start_step:], self.config)

  def train_iter(self, state: dict[str, Any] | None = None) -> TrainIterator:
    """Infinite iterator of `{"image", "label"}` global batches over epochs."""
    it = TrainIterator(self)
    if state is not None:
      it.set_state(state)
    return it

  # -- eval

  def eval_iter(self) -> Iterator[dict[str, jax.Array]]:
    """One pass over the eval split; `valid` masks the padding of the last batch."""
    ds = grain.MapDataset.range(self.eval_steps * self.local_eval_batch_size)
    ds = ds.map(_EvalExample(self._eval_records, self._eval_fn, self.info.num_eval,
                             self.eval_batch_size, self.local_eval_batch_size,
                             self.process_index))
    ds = ds.batch(self.local_eval_batch_size).map(_BatchMap(self._batch_fn))
    it = iter(_iter_dataset(ds, self.config))
    try:
      for local in it:
        yield self._to_global(local)
    finally:
      if hasattr(it, "close"):
        it.close()

  # -- assembly

  def _to_global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    out = {}
    for key, value in local.items():
      value = np.asarray(value)
      global_shape = (value.shape[0] * self.process_count,) + value.shape[1:]
      out[key] = _put(self.sharding, value, global_shape)
    return out


def _put(sharding: NamedSharding, local: np.ndarray, global_shape) -> jax.Array:
  """This process's rows to the devices, as one global array. Feeding the batch is
  the one host-to-device transfer the loop intends: allowed under its
  `transfer_guard("disallow")` (with several processes JAX goes through a
  callback path that the guard otherwise counts as implicit)."""
  with jax.transfer_guard_host_to_device("allow"):
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def _merged_config(cfg: Any) -> ml_collections.ConfigDict:
  given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  if "name" not in given:
    raise ValueError("config.data.name is missing; registered data sets: " + ", ".join(names()))
  merged = default_config(str(given["name"])).to_dict()
  unknown = sorted(set(given) - set(merged))
  if unknown:
    raise ValueError(f"unknown config.data fields {unknown}; known: {sorted(merged)}")
  merged.update(given)
  return ml_collections.ConfigDict(merged)


def build(cfg: Any, *, mesh: Mesh | None = None, seed: int = 0) -> Data:
  """Builds the input pipeline described by `cfg` (a `config.data` ConfigDict).

  Args:
    cfg: data config; missing fields take `default_config(cfg.name)`'s values.
    mesh: mesh whose `data` axis shards the batch; default: all devices on "data".
    seed: shuffle and augmentation seed (unless `cfg.seed >= 0`).

  Returns:
    A `Data` with `info`, `global_batch_size`, `steps_per_epoch`, `train_iter()`
    and `eval_iter()`.
  """
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
  return Data(_merged_config(cfg), mesh, seed)
