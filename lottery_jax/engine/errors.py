"""Errors a user can act on. `main` turns them into a message and a non-zero exit."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field, the value and the fix."""


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint belongs to a different config or model."""


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or inf; the message names the step."""

  exit_code = 3


class DiskFullError(OSError):
  """A write ran out of space; the message names the file. Nothing already written
  (the last checkpoint, finished stages) was changed."""

  exit_code = 5


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir's lock; the message names it."""

  exit_code = 2


class DamagedCheckpointError(ValueError):
  """A checkpoint does not read back intact; the message names it and what failed."""
