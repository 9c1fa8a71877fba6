"""Entry point: `python -m lottery_jax.main --config=configs/<file>.py --workdir=DIR`.

Config fields are overridable: `--config.sparsity=0.95 --config.data.batch_size=64`.

Every failure a user can act on ends in one line on stderr naming the field or file
and the fix, with no traceback, and exit status 2 (bad input: flags, config values,
files, a workdir in use), 3 (the loss became NaN or inf), 4 (a PyTorch convolution
failed) or 5 (the disk is full). Nothing already written is changed: checkpoints,
finished stages and results stay as they were.
"""

import errno
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results (resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(e: BaseException) -> str:
  """The message of `e` as one line: a config file's own traceback (which
  ml_collections puts into the message) is cut down to its last line."""
  lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag, override or config file reported in one
  line and exit status 2 (absl prints usage and exits 1; an unknown override even
  raises AttributeError from inside ml_collections)."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.get("experiment")  # a config file that failed to load raises here
  except flags.Error as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError) as e:
    _fail(f"a --config.<field> override names no field of the config ({e}); "
          "check the spelling against the config file and engine/config.py")
  except OSError as e:
    _fail(f"--config: {_one_line(e)}; give the path of a config file, e.g. "
          "--config=configs/quickstart.py")
  except SyntaxError as e:
    _fail(f"--config: {e.filename}, line {e.lineno}: {e.msg}; fix the config file")
  except Exception as e:  # noqa: BLE001  (whatever the config file's code raised)
    _fail(f"--config: the config file raised {type(e).__name__}: {_one_line(e)}")
  return rest


def main(argv):
  del argv
  # Orbax and Grain log every save at INFO through absl; keep the console to ours.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("lottery_jax").setLevel(logging.INFO)
  config = FLAGS.config
  arena_max = config.get("malloc_arena_max", 0)
  if arena_max:
    # Before JAX starts XLA's threads: glibc fixes its arena limit once they have
    # made their arenas (engine/malloc.py). Opt-in; it fails loudly, not silently.
    from lottery_jax.engine import malloc
    try:
      malloc.limit_arenas(arena_max)
    except ValueError as e:
      _fail(str(e))
  from lottery_jax import experiments
  from lottery_jax.engine.errors import (DiskFullError, NonFiniteLossError,
                                         WorkdirInUseError)
  from lottery_jax.models.conv import ConvolutionError
  try:
    experiments.run(config, FLAGS.workdir)
  except NonFiniteLossError as e:
    _fail(str(e), e.exit_code)
  except ConvolutionError as e:
    _fail(f"{e}. Use --config.model.conv=xla to run XLA's convolutions.", 4)
  except DiskFullError as e:
    _fail(str(e), e.exit_code)
  except WorkdirInUseError as e:
    _fail(str(e), e.exit_code)
  except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
          PermissionError) as e:
    _fail(_one_line(e))
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      _fail(f"no space left on the device ({e}); nothing already written was changed: "
            "free space and run the same command again", DiskFullError.exit_code)
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
