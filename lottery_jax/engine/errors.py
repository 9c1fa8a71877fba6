"""Errors a user can act on. `main` turns them into a message and a non-zero exit."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field, the value and the fix."""


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint belongs to a different config or model."""


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or inf; the message names the step."""

  exit_code = 3
