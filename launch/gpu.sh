#!/usr/bin/env bash
# Run a lottery_jax config on all the GPUs of one machine: one process drives every local
# GPU (the engine jits over a Mesh of all devices; the batch is sharded on its "data" axis).
#
#   launch/gpu.sh [--dry-run] [options] CONFIG WORKDIR [--config.a.b=value ...]
#
# Installs the package with its `cuda` extra (JAX's CUDA wheels) into a virtualenv first,
# only when that venv has no install of this pyproject.toml yet. Paths are taken from the
# caller's directory. Re-running the same command resumes from WORKDIR's checkpoints.
# See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/gpu.sh [--dry-run] [--venv DIR] [--python PY] [--extra NAME] [--no-install]
                      [--env KEY=VALUE ...] CONFIG WORKDIR [--config.a.b=value ...]
  --dry-run     print the commands (one a line, shell-quoted) instead of running them
  --venv DIR    virtualenv to install into and run from (default: REPO/.venv)
  --python PY   interpreter that creates the venv (default: python3)
  --extra NAME  pip extra to install (default: cuda)
  --no-install  skip the venv and pip steps
  --env K=V     set an environment variable for the run (e.g. TFDS_DATA_DIR=/data/tfds)"

venv="$LAUNCH_REPO/.venv" python=python3 extra=cuda install=1
envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --venv) need_value "$1" $#; venv=$2; shift 2 ;;
    --python) need_value "$1" $#; python=$2; shift 2 ;;
    --extra) need_value "$1" $#; extra=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    --env) need_value "$1" $#; check_env_assignment "$2"; envs+=("$2"); shift 2 ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    --) shift; break ;;
    -*) usage_error "unknown option: $1" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage_error "CONFIG and WORKDIR are required"
config=$1 workdir=$2
shift 2

if [ "$install" = 1 ]; then
  local_install "$venv" "$extra" "$python"
fi
cmd=("$venv/bin/python" -m lottery_jax.main --config="$config" --workdir="$workdir" "$@")
if [ ${#envs[@]} -gt 0 ]; then
  cmd=(env "${envs[@]}" "${cmd[@]}")
fi
if [ "$DRY_RUN" = 1 ]; then
  quote_cmd "${cmd[@]}"
else
  exec "${cmd[@]}"
fi
