"""Per-example image preprocessing in NumPy and Pillow (runs in grain workers).

Every random choice draws from the `np.random.Generator` that grain's
`random_map` hands in. Grain seeds that generator from (pipeline seed, index of
the example in the infinite training stream), and the stream index encodes the
epoch, so an augmentation is a pure function of (seed, epoch, position): a
resumed run reproduces it exactly.

Three recipes, chosen by `config.preprocess`:

- `imagenet`: train = Inception-style random-resized crop to `image_size`
  (area fraction in `area_range`, aspect ratio log-uniform in
  `aspect_ratio_range`, 10 tries then a central crop, as torchvision's
  `RandomResizedCrop`) and a horizontal flip; eval = resize the shorter side to
  `resize_size`, then a central `image_size` crop.
- `cifar`: train = zero-pad by `pad` pixels, random `image_size` crop, flip;
  eval = nothing but normalisation.
- `none`: no augmentation; resized to `image_size` x `image_size` when
  `image_size > 0`.

All recipes end with `(x - mean) / std` in float32, where uint8 pixels are first
scaled to [0, 1] (so `mean`/`std` are in [0, 1] units) and float inputs (the
embedded data sets) are used as they are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class Options:
  """Preprocessing options, read from `config.data` by `Options.from_config`."""

  recipe: str = "none"
  image_size: int = 0
  resize_size: int = 0
  pad: int = 0
  flip: bool = False
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  resample: str = "bilinear"
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)

  @classmethod
  def from_config(cls, cfg: Any, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> "Options":
    recipe = str(cfg.get("preprocess", "none"))
    if recipe not in RECIPES:
      raise ValueError(f"config.data.preprocess={recipe!r} is not one of {sorted(RECIPES)}")
    resample = str(cfg.get("resample", "bilinear"))
    if resample not in _RESAMPLE:
      raise ValueError(f"config.data.resample={resample!r} is not one of {sorted(_RESAMPLE)}")
    return cls(
        recipe=recipe,
        image_size=int(cfg.get("image_size", 0)),
        resize_size=int(cfg.get("resize_size", 0)),
        pad=int(cfg.get("pad", 0)),
        flip=bool(cfg.get("flip", False)),
        area_range=tuple(float(a) for a in cfg.get("area_range", (0.08, 1.0))),
        aspect_ratio_range=tuple(
            float(a) for a in cfg.get("aspect_ratio_range", (3 / 4, 4 / 3))),
        resample=resample,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def output_shape(opts: Options, native_shape: tuple[int | None, ...]) -> tuple[int, ...]:
  """Per-example shape after preprocessing, given the source's native shape."""
  channels = native_shape[-1]
  if opts.image_size > 0 and len(native_shape) == 3:
    return (opts.image_size, opts.image_size, channels)
  if any(d is None for d in native_shape):
    raise ValueError(
        f"images have no fixed size (shape {native_shape}); set config.data.image_size "
        "so every example is resized or cropped to the same shape")
  return tuple(int(d) for d in native_shape)


# ----------------------------------------------------------------------------- ops


def _to_pil(img: np.ndarray) -> Image.Image:
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(pil)
  return arr[..., None] if channels == 1 else arr


def _resize_box(img: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int],
                resample: str) -> np.ndarray:
  """Crops `box` = (left, top, right, bottom) and resizes it to `size` = (w, h)."""
  if img.dtype != np.uint8:
    # Float inputs (embedded data) are small; crop then resize with nearest-free numpy.
    left, top, right, bottom = box
    crop = img[top:bottom, left:right]
    pil = Image.fromarray(crop[..., 0].astype(np.float32), mode="F") if img.shape[-1] == 1 else None
    if pil is None:
      raise ValueError("resizing multi-channel float images is not supported")
    return np.asarray(pil.resize(size, _RESAMPLE[resample]))[..., None]
  pil = _to_pil(img)
  return _from_pil(pil.resize(size, _RESAMPLE[resample], box=box), img.shape[-1])


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int,
                        area_range: tuple[float, float],
                        aspect_ratio_range: tuple[float, float],
                        resample: str = "bilinear") -> np.ndarray:
  """Inception-style crop (torchvision `RandomResizedCrop`) of an HWC image."""
  height, width = img.shape[:2]
  area = height * width
  log_ratio = (math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1]))
  for _ in range(10):
    target_area = area * rng.uniform(area_range[0], area_range[1])
    ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * ratio)))
    h = int(round(math.sqrt(target_area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return _resize_box(img, (left, top, left + w, top + h), (size, size), resample)
  # Fallback: central crop at the closest allowed aspect ratio.
  in_ratio = width / height
  if in_ratio < aspect_ratio_range[0]:
    w, h = width, int(round(width / aspect_ratio_range[0]))
  elif in_ratio > aspect_ratio_range[1]:
    h, w = height, int(round(height * aspect_ratio_range[1]))
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return _resize_box(img, (left, top, left + w, top + h), (size, size), resample)


def resize_shorter_center_crop(img: np.ndarray, resize_size: int, crop_size: int,
                               resample: str = "bilinear") -> np.ndarray:
  """Resizes the shorter side to `resize_size`, then takes a central square crop."""
  height, width = img.shape[:2]
  if resize_size > 0:
    scale = resize_size / min(height, width)
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    img = _resize_box(img, (0, 0, width, height), (new_w, new_h), resample)
    height, width = new_h, new_w
  if crop_size > 0:
    if crop_size > min(height, width):
      raise ValueError(f"center crop {crop_size} is larger than the resized image "
                       f"{height}x{width}; raise config.data.resize_size")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    img = img[top:top + crop_size, left:left + crop_size]
  return img


def pad_random_crop(img: np.ndarray, rng: np.random.Generator, pad: int,
                    size: int) -> np.ndarray:
  """Zero-pads by `pad` pixels on each side and crops a random `size` square."""
  if pad > 0:
    img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  height, width = img.shape[:2]
  top = int(rng.integers(0, height - size + 1))
  left = int(rng.integers(0, width - size + 1))
  return img[top:top + size, left:left + size]


def random_flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip with probability 1/2."""
  return img[:, ::-1] if rng.random() < 0.5 else img


def resize_square(img: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
  height, width = img.shape[:2]
  if (height, width) == (size, size):
    return img
  return _resize_box(img, (0, 0, width, height), (size, size), resample)


def normalize(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """uint8 -> [0, 1]; then `(x - mean) / std` per channel, as float32."""
  std = np.asarray(std, np.float64)
  scale = (1 / 255 if img.dtype == np.uint8 else 1.0) / std
  offset = np.asarray(mean, np.float64) / std
  # One fused multiply-subtract instead of scale, subtract, divide.
  x = img.astype(np.float32)
  x *= scale.astype(np.float32)
  x -= offset.astype(np.float32)
  return x


# ------------------------------------------------------------------------- recipes


def _imagenet(img, rng, opts: Options, train: bool):
  if train:
    img = random_resized_crop(img, rng, opts.image_size, opts.area_range,
                              opts.aspect_ratio_range, opts.resample)
    return random_flip(img, rng) if opts.flip else img
  return resize_shorter_center_crop(img, opts.resize_size, opts.image_size, opts.resample)


def _cifar(img, rng, opts: Options, train: bool):
  size = opts.image_size or img.shape[0]
  img = resize_square(img, size, opts.resample)
  if train:
    img = pad_random_crop(img, rng, opts.pad, size)
    return random_flip(img, rng) if opts.flip else img
  return img


def _none(img, rng, opts: Options, train: bool):
  del rng, train
  if opts.image_size > 0 and img.ndim == 3:
    img = resize_square(img, opts.image_size, opts.resample)
  return img


RECIPES: dict[str, Callable[..., np.ndarray]] = {
    "imagenet": _imagenet,
    "cifar": _cifar,
    "none": _none,
}


def make_example_fn(opts: Options, *, train: bool, augment: bool
                    ) -> Callable[[dict, np.random.Generator | None], dict]:
  """Returns `fn(record, rng) -> {"image": same dtype as the source, "label": int32}`.

  With `train and augment` the recipe's random augmentations are applied;
  otherwise the eval path of the recipe runs (the imagenet eval crop, or none).
  Normalisation is left to `make_batch_fn`, which does it once per batch
  (vectorised, and uint8 stays small until then).
  """
  recipe = RECIPES[opts.recipe]
  randomized = train and augment

  def fn(record: dict, rng: np.random.Generator | None) -> dict:
    img = recipe(record["image"], rng, opts, randomized)
    return {"image": np.ascontiguousarray(img), "label": np.int32(record["label"])}

  return fn


def make_batch_fn(opts: Options) -> Callable[[dict], dict]:
  """Returns `fn(batch) -> batch` with the image normalised to float32."""

  def fn(batch: dict) -> dict:
    return {**batch, "image": normalize(batch["image"], opts.mean, opts.std)}

  return fn
