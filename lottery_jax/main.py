"""Entry point: `python -m lottery_jax.main --config=configs/<file>.py --workdir=DIR`.

Config fields are overridable: `--config.sparsity=0.95 --config.data.batch_size=64`.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results (resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax and Grain log every save at INFO through absl; keep the console to ours.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("lottery_jax").setLevel(logging.INFO)
  from lottery_jax import experiments
  from lottery_jax.engine.errors import NonFiniteLossError
  from lottery_jax.models.conv import ConvolutionError
  config = FLAGS.config
  try:
    experiments.run(config, FLAGS.workdir)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except ConvolutionError as e:
    print(f"error: {e}. Use --config.model.conv=xla to run XLA's convolutions.",
          file=sys.stderr)
    sys.exit(4)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
