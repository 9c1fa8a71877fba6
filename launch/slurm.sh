#!/usr/bin/env bash
# Submit a multi-node GPU lottery_jax run to Slurm (launch/slurm.sbatch).
#
#   launch/slurm.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--time T] [options] \
#     CONFIG WORKDIR [--config.a.b=value ...]
#
# Installs the package with its `cuda` extra into a venv on the shared filesystem (here, on
# the submitting node; pip runs only when that venv has no install of this pyproject.toml),
# then runs `sbatch launch/slurm.sbatch CONFIG WORKDIR overrides...`. In the job, srun starts
# one process per node with --config.multihost=True. --dry-run prints the install and sbatch
# commands, then (after "# job runs: ") the srun command the job would run.
# See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/slurm.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--time T]
                        [--partition P] [--account A] [--job-name NAME] [--output PATTERN]
                        [--sbatch-arg ARG ...] [--venv DIR] [--python PY] [--extra NAME]
                        [--no-install] [--env KEY=VALUE ...]
                        CONFIG WORKDIR [--config.a.b=value ...]
  --dry-run          print the commands (one a line, shell-quoted) instead of running them
  --nodes N, --gpus-per-node G, --time T, --partition P, --account A, --job-name NAME,
  --output PATTERN   override launch/slurm.sbatch's #SBATCH lines
  --sbatch-arg ARG   any other sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)
  --venv DIR         virtualenv on the shared filesystem (default: REPO/.venv)
  --python PY        interpreter that creates the venv (default: python3)
  --extra NAME       pip extra to install (default: cuda)
  --no-install       skip the venv and pip steps
  --env K=V          exported into the job (e.g. TFDS_DATA_DIR=/shared/tensorflow_datasets)"

sbatch_file="$LAUNCH_REPO/launch/slurm.sbatch"
venv="$LAUNCH_REPO/.venv" python=python3 extra=cuda install=1
nodes="" gpus="" sbatch_args=() envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --nodes) need_value "$1" $#; nodes=$2; sbatch_args+=(--nodes="$2"); shift 2 ;;
    --gpus-per-node) need_value "$1" $#; gpus=$2; sbatch_args+=(--gpus-per-node="$2"); shift 2 ;;
    --time|--partition|--account|--job-name|--output)
      need_value "$1" $#; sbatch_args+=("$1=$2"); shift 2 ;;
    --sbatch-arg) need_value "$1" $#; sbatch_args+=("$2"); shift 2 ;;
    --sbatch-arg=*) sbatch_args+=("${1#--sbatch-arg=}"); shift ;;
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
# sbatch exports the submitting environment (--export=ALL is its default) into the job.
job_env=(LOTTERY_JAX_PYTHON="$venv/bin/python" ${envs[@]+"${envs[@]}"})
run_cmd env "${job_env[@]}" sbatch ${sbatch_args[@]+"${sbatch_args[@]}"} \
  "$sbatch_file" "$config" "$workdir" "$@"

if [ "$DRY_RUN" = 1 ]; then
  # The job's srun command: the sbatch script itself, asked to print it, with the allocation
  # Slurm would give it (this command's --nodes/--gpus-per-node, else the #SBATCH lines).
  sbatch_default() { sed -n "s/^#SBATCH --$1=//p" "$sbatch_file" | head -n 1; }
  printf '# job runs: '
  env "${job_env[@]}" LAUNCH_DRY_RUN=1 \
    SLURM_JOB_NUM_NODES="${nodes:-$(sbatch_default nodes)}" \
    SLURM_GPUS_ON_NODE="${gpus:-$(sbatch_default gpus-per-node)}" \
    bash "$sbatch_file" "$config" "$workdir" "$@"
fi
