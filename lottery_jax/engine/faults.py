"""Named fault points for the reliability tests (issue 17): the engine calls
`point(name)` where a crash is worth testing, and a process started with
`LOTTERY_JAX_FAULT=<name>:<n>` kills itself with SIGKILL the n-th time it passes
`<name>`. Unset (always, outside the tests), `point` is a dictionary lookup.

Points: "step" (a train step dispatched and still running), "checkpoint" (Orbax's
write of a checkpoint under way), "stage" (a stage finished, the next not started),
"export" (the stage's result half written).
"""

from __future__ import annotations

import os
import signal

ENV = "LOTTERY_JAX_FAULT"
POINTS = ("step", "checkpoint", "stage", "export")


def _parse(spec: str) -> tuple[str, int] | None:
  if not spec:
    return None
  name, _, count = spec.partition(":")
  if name not in POINTS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"{ENV}={spec!r}: expected <point>:<n>, point one of {POINTS}, n >= 1")
  return name, int(count)


_target = _parse(os.environ.get(ENV, ""))
_passed: dict[str, int] = {}


def point(name: str) -> None:
  if _target is None or _target[0] != name:
    return
  _passed[name] = _passed.get(name, 0) + 1
  if _passed[name] == _target[1]:
    os.kill(os.getpid(), signal.SIGKILL)
