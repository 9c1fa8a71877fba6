"""Data set sources: embedded (digits, MNIST-1D), image folders and TFDS.

Each loader returns a `registry.Split` of random-access records
`{"image": ndarray, "label": int}`; decoding happens in `__getitem__`, so it
runs in grain's worker processes.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import zipfile
from typing import Any

import numpy as np

from lottery_jax.data import preprocess
from lottery_jax.data.registry import Split, register, register_fallback


class ArrayRecords:
  """Records backed by in-memory arrays (embedded data sets)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = images
    self.labels = labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": int(self.labels[index])}


def _check_split(split: str, available: tuple[str, ...], where: str) -> None:
  if split not in available:
    raise ValueError(f"split {split!r} does not exist in {where}; available splits: "
                     f"{', '.join(available)}")


def _stats(x: np.ndarray) -> tuple[tuple[float], tuple[float]]:
  return (float(x.mean()),), (float(x.std()),)


# --------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  # Pixels are integers 0..16: scale to [0, 1]. Deterministic split: stratified
  # 80/20 with random_state=0 -> 1437 train / 360 test examples.
  x = (digits.images.astype(np.float32) / 16.0)[..., None]
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=0.2, stratify=y, random_state=0)
  return {"train": (x_train, y_train), "test": (x_test, y_test)}


@register("digits", defaults=dict(
    train_split="train", eval_split="test", preprocess="none", batch_size=64,
    eval_batch_size=128))
def load_digits(cfg: Any, split: str) -> Split:
  """scikit-learn's 8x8 digits: 1797 images, stratified 80/20 split (seed 0).

  Normalised with the train split's mean and std (a single scalar each).
  """
  del cfg
  arrays = _digits_arrays()
  _check_split(split, tuple(arrays), "the embedded digits data set")
  x, y = arrays[split]
  mean, std = _stats(arrays["train"][0])
  return Split(ArrayRecords(x, y), num_classes=10, native_shape=(8, 8, 1), mean=mean,
               std=std, class_names=[str(i) for i in range(10)])


# -------------------------------------------------------------------- mnist1d


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  # Generated offline with the package's default arguments (4000 train / 1000
  # test, its seed 42); `mnist1d.data.get_dataset` would download instead.
  from mnist1d.data import get_dataset_args, make_dataset
  d = make_dataset(get_dataset_args())
  return {
      "train": (d["x"].astype(np.float32)[..., None], d["y"].astype(np.int32)),
      "test": (d["x_test"].astype(np.float32)[..., None], d["y_test"].astype(np.int32)),
  }


@register("mnist1d", defaults=dict(
    train_split="train", eval_split="test", preprocess="none", batch_size=128,
    eval_batch_size=256))
def load_mnist1d(cfg: Any, split: str) -> Split:
  """MNIST-1D (Greydanus 2020): 40-sample 1-D signals, shape (40, 1), 10 classes."""
  del cfg
  arrays = _mnist1d_arrays()
  _check_split(split, tuple(arrays), "the embedded mnist1d data set")
  x, y = arrays[split]
  mean, std = _stats(arrays["train"][0])
  return Split(ArrayRecords(x, y), num_classes=10, native_shape=(40, 1), mean=mean, std=std,
               class_names=[str(i) for i in range(10)])


# -------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class _Tree:
  """Lists and reads files of a directory or of a zip file by relative path."""

  def __init__(self, root: str):
    self.root = root
    self.is_zip = os.path.isfile(root) and zipfile.is_zipfile(root)
    if not self.is_zip and not os.path.isdir(root):
      raise ValueError(f"image folder {root!r} (config.data.path) is neither a directory "
                       "nor a zip file")
    self._zip = None
    self._lock = threading.Lock()

  def __getstate__(self):  # Open zip handles do not pickle into grain workers.
    return {"root": self.root, "is_zip": self.is_zip}

  def __setstate__(self, state):
    self.__dict__.update(state, _zip=None, _lock=threading.Lock())

  def _zipfile(self) -> zipfile.ZipFile:
    with self._lock:
      if self._zip is None:
        self._zip = zipfile.ZipFile(self.root)
      return self._zip

  def listing(self) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [relative file paths, sorted]}} for image files 2 levels deep."""
    tree: dict[str, dict[str, list[str]]] = {}
    if self.is_zip:
      for name in self._zipfile().namelist():
        parts = name.strip("/").split("/")
        if len(parts) == 2 and name.endswith("/"):
          tree.setdefault(parts[0], {}).setdefault(parts[1], [])
        elif len(parts) == 1 and name.endswith("/"):
          tree.setdefault(parts[0], {})
        elif len(parts) == 3 and parts[2].lower().endswith(IMAGE_EXTENSIONS):
          tree.setdefault(parts[0], {}).setdefault(parts[1], []).append(name)
    else:
      for split in os.listdir(self.root):
        split_dir = os.path.join(self.root, split)
        if not os.path.isdir(split_dir):
          continue
        classes = tree.setdefault(split, {})
        for cls in os.listdir(split_dir):
          cls_dir = os.path.join(split_dir, cls)
          if os.path.isdir(cls_dir):
            classes[cls] = [f"{split}/{cls}/{f}" for f in os.listdir(cls_dir)
                            if f.lower().endswith(IMAGE_EXTENSIONS)]
    for classes in tree.values():
      for files in classes.values():
        files.sort()
    return tree

  def read(self, rel: str) -> bytes:
    if self.is_zip:
      return self._zipfile().read(rel)
    with open(os.path.join(self.root, rel), "rb") as f:
      return f.read()

  def describe(self, rel: str) -> str:
    return f"{self.root}:{rel}" if self.is_zip else os.path.join(self.root, rel)


class FolderRecords:
  """Image files decoded with Pillow on access; labels from the class folder."""

  def __init__(self, tree: _Tree, files: list[str], labels: np.ndarray, mode: str):
    self.tree = tree
    self.files = files
    self.labels = labels
    self.mode = mode

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    from PIL import Image
    rel = self.files[index]
    try:
      with Image.open(io.BytesIO(self.tree.read(rel))) as pil:
        image = np.asarray(pil.convert(self.mode))
    except Exception as e:  # Pillow raises several types for bad files.
      raise ValueError(f"cannot read image {self.tree.describe(rel)}: {e}") from e
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(self.labels[index])}


@register("folder", defaults=dict(
    train_split="train", eval_split="test", preprocess="cifar", image_size=32, pad=4,
    flip=True, mean=preprocess.CIFAR10_MEAN, std=preprocess.CIFAR10_STD))
def load_folder(cfg: Any, split: str) -> Split:
  """Images in `path/<split>/<class>/*.jpg|jpeg|png`, `path` a directory or zip.

  The registered defaults suit CIFAR-like 32x32 folders (the cifar recipe and
  CIFAR-10 mean/std); for ImageNet-like folders set preprocess="imagenet",
  image_size=224, resize_size=256 and the ImageNet mean/std.
  Classes are the sub-folders of the train split, sorted by name (label =
  position). The eval split must not have classes the train split lacks.
  """
  root = str(cfg.get("path", ""))
  if not root:
    raise ValueError("config.data.path must name an image folder or zip file for "
                     "config.data.name='folder'")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.exists(root):
    raise ValueError(f"image folder {root!r} (config.data.path) does not exist")
  tree = _Tree(root)
  listing = tree.listing()
  if not listing:
    raise ValueError(f"image folder {root!r} is empty: expected <split>/<class>/<image> "
                     "sub-folders such as train/cat/0001.jpg")
  _check_split(split, tuple(sorted(listing)), f"image folder {root!r}")
  train_split = str(cfg.get("train_split", "train"))
  class_split = train_split if train_split in listing else split
  class_names = sorted(listing[class_split])
  if not class_names:
    raise ValueError(f"no class folders in {root!r}/{class_split}: expected "
                     f"{class_split}/<class>/<image> files")
  for cls in class_names:
    if not listing[class_split][cls]:
      raise ValueError(f"class folder {root!r}/{class_split}/{cls} has no images "
                       f"({', '.join(IMAGE_EXTENSIONS)})")
  extra = sorted(set(listing[split]) - set(class_names))
  if extra:
    raise ValueError(f"split {split!r} of {root!r} has classes {extra} that the "
                     f"{class_split!r} split lacks")
  files, labels = [], []
  for label, cls in enumerate(class_names):
    names = listing[split].get(cls, [])
    files += names
    labels += [label] * len(names)
  if not files:
    raise ValueError(f"split {split!r} of image folder {root!r} has no images")
  channels = int(cfg.get("channels", 3))
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3, got {channels}")
  records = FolderRecords(tree, files, np.asarray(labels, np.int32),
                          "RGB" if channels == 3 else "L")
  native = records[0]["image"].shape
  return Split(records, num_classes=len(class_names), native_shape=tuple(native),
               mean=(0.5,), std=(0.5,), class_names=class_names)


# ----------------------------------------------------------------------- TFDS


def _tfds_build_hint(name: str, data_dir: str | None) -> str:
  cmd = f"tfds build {name} --file_format=array_record"
  if data_dir:
    cmd += f" --data_dir={data_dir}"
  if name.split("/")[0].split(":")[0] == "imagenet2012":
    cmd += " --manual_dir=<folder with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar>"
  return cmd


def _tfds_source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"unknown data set {name!r}: not a registered name and not a TFDS "
                     f"data set ({str(e).splitlines()[0]})") from e
  except Exception as e:  # pylint: disable=broad-except
    try:
      builder = tfds.builder(name, data_dir=data_dir)
      searched, prepared = str(builder.data_dir), builder.is_prepared()
    except Exception:  # pylint: disable=broad-except
      searched = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      prepared = False
    if prepared and not isinstance(e, NotImplementedError):
      # Prepared (as array_record) but this split cannot be opened: a bad split name.
      raise ValueError(f"TFDS data set {name!r} in {searched}: cannot open split {split!r}: "
                       f"{e}") from e
    # Not prepared, or prepared as TFRecord (NotImplementedError): both need a build.
    raise ValueError(
        f"TFDS data set {name!r} (split {split!r}) is not prepared as array_record in "
        f"{searched}. Prepare it with:\n  {_tfds_build_hint(name, data_dir)}\n"
        f"(cause: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


class TfdsRecords:
  """`tfds.data_source` records reduced to `{"image", "label"}`."""

  def __init__(self, source, image_key: str, label_key: str):
    self.source = source
    self.image_key = image_key
    self.label_key = label_key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    ex = self.source[index]
    image = np.asarray(ex[self.image_key])
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(ex[self.label_key])}


def load_tfds(cfg: Any, split: str) -> Split:
  """Any TFDS image classification data set prepared as array_record."""
  name = str(cfg.name)
  data_dir = cfg.get("data_dir", None) or None
  source = _tfds_source(name, split, data_dir)
  info = source.dataset_info
  # A bad split name is not caught by tfds when `splits` is empty (mock data).
  base_split = split.split("[")[0]
  known = tuple(info.splits.keys()) if info.splits else ()
  if known and base_split not in known:
    _check_split(base_split, known, f"TFDS data set {name!r}")
  image_key = str(cfg.get("image_key", "image"))
  label_key = str(cfg.get("label_key", "label"))
  features = info.features
  for key in (image_key, label_key):
    if key not in features:
      raise ValueError(f"TFDS data set {name!r} has no feature {key!r} (features: "
                       f"{', '.join(features.keys())}); set config.data.image_key/label_key")
  label = features[label_key]
  return Split(TfdsRecords(source, image_key, label_key), num_classes=int(label.num_classes),
               native_shape=tuple(features[image_key].shape), mean=(0.5,), std=(0.5,),
               class_names=list(getattr(label, "names", []) or []) or None)


register_fallback(load_tfds, defaults=dict(
    train_split="train", eval_split="test", preprocess="none"))

register("cifar10", defaults=dict(
    train_split="train", eval_split="test", preprocess="cifar", image_size=32, pad=4,
    flip=True, mean=preprocess.CIFAR10_MEAN, std=preprocess.CIFAR10_STD))(load_tfds)
register("cifar100", defaults=dict(
    train_split="train", eval_split="test", preprocess="cifar", image_size=32, pad=4,
    flip=True, mean=preprocess.CIFAR100_MEAN, std=preprocess.CIFAR100_STD))(load_tfds)
register("imagenet2012", defaults=dict(
    train_split="train", eval_split="validation", preprocess="imagenet", image_size=224,
    resize_size=256, flip=True, mean=preprocess.IMAGENET_MEAN, std=preprocess.IMAGENET_STD,
    batch_size=1024, eval_batch_size=1000, num_workers=8))(load_tfds)
