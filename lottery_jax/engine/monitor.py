"""What a run reports while it trains: TensorBoard scalars, a progress bar, log rows."""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from etils import epath

from lottery_jax.engine import io
from lottery_jax.engine.io import flatten_dict, plain


class _EpathEventFile:
  """A TensorBoard event file on an object store, written through `etils.epath`
  (objects cannot be appended to: each flush uploads the whole file, as
  tensorboardX's own GCS writer does)."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._buffer = bytearray()

  def write(self, data: bytes) -> None:
    self._buffer += data

  def flush(self) -> None:
    self._path.write_bytes(bytes(self._buffer))

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """tensorboardX's writer factory protocol, for `gs://`, `s3://` workdirs."""

  def open(self, path):
    return _EpathEventFile(path)

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_epath_event_files() -> None:
  from tensorboardX import record_writer
  for prefix in ("gs", "s3"):
    record_writer.register_writer_factory(prefix, _EpathEventFiles())


class MetricWriter:
  """TensorBoard scalars (tensorboardX: no TensorFlow needed); on an object store
  through `etils.epath` like every other file of the workdir. Process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled and io.is_lead():
      from tensorboardX import SummaryWriter
      _register_epath_event_files()
      self._writer = SummaryWriter(os.fspath(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, row: dict[str, Any]) -> None:
    if self._writer is None:
      return
    for k, v in row.items():
      if isinstance(v, (int, float, np.floating, np.integer)) and k != "step":
        self._writer.add_scalar(k, float(v), step)
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


class _Progress:

  def __init__(self, total, initial, enabled):
    self._bar = None
    # A terminal, or a notebook (ipykernel): tqdm.auto draws a widget where it can.
    interactive = sys.stdout.isatty() or "ipykernel" in sys.modules
    if enabled and interactive and jax.process_index() == 0:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True)
    self._last = initial

  @property
  def active(self) -> bool:
    return self._bar is not None

  def update(self, step, row):
    if self._bar is None:
      return
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{row['train/loss']:.4f}",
                          acc=f"{row['train/accuracy']:.3f}")

  def close(self):
    if self._bar is not None:
      self._bar.close()


def progress_bar(total: int, initial: int, enabled: bool) -> _Progress:
  return _Progress(total, initial, enabled)


def log_row(step: int, fetched: dict, n: int, masked) -> dict[str, Any]:
  """Mean loss, accuracy and swaps per step over the last `n` steps. With a sibling
  axis the means are over copies too, and `sibling<i>/train/...` give each copy's."""
  loss = np.asarray(fetched["loss"], np.float64) / n
  acc = np.asarray(fetched["accuracy"], np.float64) / n
  row: dict[str, Any] = {"step": step, "train/loss": float(np.mean(loss)),
                         "train/accuracy": float(np.mean(acc))}
  if loss.ndim:
    for i, (lo, ac) in enumerate(zip(loss, acc)):
      row[f"sibling{i}/train/loss"] = float(lo)
      row[f"sibling{i}/train/accuracy"] = float(ac)
  swaps = flatten_dict(plain(fetched["swaps"]))
  flags = flatten_dict(plain(masked))
  total = 0.0
  for k, v in swaps.items():
    if bool(flags[k]):
      per_step = float(np.mean(np.asarray(v, np.float64))) / n
      row[f"swaps/{k}"] = per_step   # mean swaps per step in this interval
      total += per_step
  row["swaps/total"] = total
  return row
