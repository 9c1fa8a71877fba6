"""The summary's log rows (`summary.json`'s `history`), kept on disk between checkpoints.

A stage logs a row every `log_every_steps` (and one per periodic evaluation). Holding
every row in memory and writing all of them into every checkpoint's meta made both
grow with the run: 660 bytes of Python heap per row of the soak's tiny CNN (more per
masked layer), and a meta rewritten in full at every save, about 200 bytes of JSON per
row so far (docs/reliability.md, "Soak"). Instead each checkpoint at step S writes the rows logged
since the previous checkpoint to `<workdir>/history/<S>.json`, as
`{"after": <previous checkpoint step or null>, "rows": [...]}`, before Orbax starts
the checkpoint, and the checkpoint's meta names that file's predecessor and the row
count (`history_log`). Memory then holds one checkpoint interval's rows.

The rows up to checkpoint S are the chain S -> after -> ... -> null, read backwards.
Files are written whole and atomically (a rename on a filesystem, one upload on an
object store: no appends), never changed afterwards except by rewriting them with the
same content, so:
- a run killed after writing `<S>.json` but before checkpoint S committed resumes
  from an earlier checkpoint, logs the same rows again and writes the same file;
- a file left by a step that no checkpoint reached (or by a checkpoint later moved
  aside as damaged) is off the chain of every checkpoint resumed from, and so unread.
Checkpoints written before this layout hold their rows in meta's `history`; resuming
from one writes those rows as the chain's first file.

Only the lead process (process 0) writes the workdir's files, summary.json included,
so only it keeps rows: on the other processes of a pod `rows()` is empty (they count
rows, for the checkpoint's meta, and keep none).
"""

from __future__ import annotations

from typing import Any

from etils import epath

from lottery_jax.engine import io
from lottery_jax.engine.errors import DamagedCheckpointError

DIR = "history"
META_KEY = "history_log"  # in a checkpoint's meta: {"after": step|None, "rows": total}


class History:
  """The rows of one stage: those since the last checkpoint in memory, the rest in
  `<workdir>/history/`. With `lead=False` (not process 0) nothing is kept or written,
  only counted."""

  def __init__(self, workdir, lead: bool = True):
    self.directory = epath.Path(workdir) / DIR
    self._lead = lead
    self._after: int | None = None   # the checkpoint the pending rows follow
    self._written = 0                # rows up to `_after` (on disk)
    self._pending: list[dict[str, Any]] = []
    self._pending_count = 0

  def append(self, row: dict[str, Any]) -> None:
    self._pending_count += 1
    if self._lead:
      self._pending.append(row)

  def __len__(self) -> int:
    return self._written + self._pending_count

  def checkpoint(self, step: int) -> dict[str, Any]:
    """Writes the pending rows as the file of checkpoint `step`; returns what the
    checkpoint's meta records (under META_KEY). Call before saving checkpoint `step`."""
    self._dump(step, self._after, self._pending)
    entry = {"after": self._after, "rows": len(self)}
    self._after, self._written = step, len(self)
    self._pending, self._pending_count = [], 0
    return entry

  def resume(self, step: int, meta: dict[str, Any]) -> None:
    """Continues after checkpoint `step` (its meta `meta`): the rows logged after it
    are dropped (the loop logs them again). Raises DamagedCheckpointError when the
    rows up to it cannot be read back."""
    if META_KEY in meta:
      self._written = int(meta[META_KEY]["rows"])
      if self._lead:  # read back now, not at the end of the stage
        self.rows_upto(step, expect=self._written)
    else:  # a checkpoint written before this layout: its rows are in its meta
      rows = list(meta.get("history", []))
      self._dump(step, None, rows)
      self._written = len(rows)
    self._after = step
    self._pending, self._pending_count = [], 0

  def rows(self) -> list[dict[str, Any]]:
    """Every row so far, in the order logged (none on a process other than the lead)."""
    if not self._lead:
      return []
    done = self.rows_upto(self._after, expect=self._written) if self._after is not None \
        else []
    return done + self._pending

  def rows_upto(self, step: int, expect: int | None = None) -> list[dict[str, Any]]:
    """The rows up to checkpoint `step` (its file's chain)."""
    parts = []
    at: int | None = step
    seen = set()
    while at is not None:
      path = self.directory / f"{at}.json"
      try:
        piece = io.read_json(path)
        after, rows = piece["after"], piece["rows"]
        if not (after is None or (isinstance(after, int) and after < at)) \
            or not isinstance(rows, list) or at in seen:
          raise ValueError("not a history file of this layout")
      except Exception as e:  # missing, truncated or edited by hand
        raise DamagedCheckpointError(
            f"{path}, the log rows of the checkpoint at step {at}, does not read back "
            f"({type(e).__name__}: {e}); summary.json's history cannot be rebuilt. "
            "Move the workdir's checkpoints aside to start the stage over, or restore "
            "the file from a copy") from None
      seen.add(at)
      parts.append(rows)
      at = after
    out = [row for rows in reversed(parts) for row in rows]
    if expect is not None and len(out) != expect:
      raise DamagedCheckpointError(
          f"{self.directory}: the log rows up to step {step} number {len(out)}, the "
          f"checkpoint recorded {expect}; summary.json's history cannot be rebuilt. "
          "Move the workdir's checkpoints aside to start the stage over")
    return out

  def _dump(self, step: int, after: int | None, rows: list) -> None:
    if not self._lead:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    io.write_json(self.directory / f"{step}.json", {"after": after, "rows": rows})
