#!/usr/bin/env bash
# Run a lottery_jax config on every host (worker) of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project ID] [options] \
#     CONFIG WORKDIR [--config.a.b=value ...]
#
# 1. packs this checkout's sources (pyproject.toml, README.md, lottery_jax/, configs/),
# 2. copies the archive to every worker (gcloud compute tpus tpu-vm scp --worker=all),
# 3. installs it on every worker with the `tpu` extra (tpu-vm ssh --worker=all); pip runs
#    only where the worker's venv has no install of this same pyproject.toml,
# 4. runs the same command on every worker with --config.multihost=True, so each process
#    calls jax.distributed.initialize() once and the slice trains as one job.
# CONFIG is resolved on the workers, relative to the copied checkout. WORKDIR is passed
# through untouched (gs://bucket/run or a path every worker sees); nothing is created
# locally. After a preemption, recreate the slice and run the same command again: the run
# resumes from WORKDIR's checkpoints. See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project ID] [--extra NAME]
                          [--remote-dir DIR] [--no-install] [--env KEY=VALUE ...]
                          CONFIG WORKDIR [--config.a.b=value ...]
  --dry-run         print the commands (one a line, shell-quoted) instead of running them
  --tpu NAME        the TPU VM (slice) name
  --zone ZONE       its zone, e.g. us-central2-b
  --project ID      its Google Cloud project (default: gcloud's configured project)
  --extra NAME      pip extra to install on the workers (default: tpu)
  --remote-dir DIR  checkout directory on the workers, relative to \$HOME (default: lottery_jax)
  --no-install      skip packing, copying and installing; only run
  --env K=V         set an environment variable for the run on every worker
                    (e.g. TFDS_DATA_DIR=gs://bucket/tensorflow_datasets)"

tpu="" zone="" project="" extra=tpu remote_dir=lottery_jax install=1
envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --tpu) need_value "$1" $#; tpu=$2; shift 2 ;;
    --zone) need_value "$1" $#; zone=$2; shift 2 ;;
    --project) need_value "$1" $#; project=$2; shift 2 ;;
    --extra) need_value "$1" $#; extra=$2; shift 2 ;;
    --remote-dir) need_value "$1" $#; remote_dir=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    --env) need_value "$1" $#; check_env_assignment "$2"; envs+=("$2"); shift 2 ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    --) shift; break ;;
    -*) usage_error "unknown option: $1" ;;
    *) break ;;
  esac
done
[ -n "$tpu" ] || usage_error "--tpu is required"
[ -n "$zone" ] || usage_error "--zone is required"
[ $# -ge 2 ] || usage_error "CONFIG and WORKDIR are required"
case $extra in *[!A-Za-z0-9_,-]*|"") usage_error "bad --extra: $extra" ;; esac
case $tpu in *[!A-Za-z0-9_-]*) usage_error "bad --tpu name: $tpu" ;; esac
config=$1 workdir=$2
shift 2

gcloud_flags=(--zone="$zone")
if [ -n "$project" ]; then
  gcloud_flags+=(--project="$project")
fi
gcloud_flags+=(--worker=all)
archive="${TMPDIR:-/tmp}/lottery_jax_src-$tpu.tgz"
remote_archive=lottery_jax_src.tgz   # in the workers' $HOME
dir=$(quote_word "$remote_dir")
stamp=".venv/.lottery_jax-$extra.pyproject.toml"

if [ "$install" = 1 ]; then
  run_cmd tar -czf "$archive" --exclude=__pycache__ -C "$LAUNCH_REPO" \
    pyproject.toml README.md lottery_jax configs
  run_cmd gcloud compute tpus tpu-vm scp "$archive" "$tpu:$remote_archive" "${gcloud_flags[@]}"
  # Runs in each worker's login shell (bash on the TPU VM images). Stale modules go, the venv
  # stays; pip runs only when the venv's recorded pyproject.toml differs from the new one.
  setup="set -euo pipefail; mkdir -p $dir; cd $dir; rm -rf lottery_jax configs"
  setup+="; tar -xzf ~/$remote_archive"
  setup+="; [ -x .venv/bin/python ] || python3 -m venv .venv"
  setup+=" || { sudo apt-get install -y -q python3-venv && python3 -m venv .venv; }"
  setup+="; if ! cmp -s pyproject.toml $stamp; then"
  setup+=" .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e $(quote_word ".[$extra]")"
  setup+=" && cp pyproject.toml $stamp; fi"
  run_cmd gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" --command="$setup"
fi

# --config.multihost=True comes last so that it wins over any override.
main=(.venv/bin/python -m lottery_jax.main --config="$config" --workdir="$workdir" "$@"
      --config.multihost=True)
assign=""
for kv in ${envs[@]+"${envs[@]}"}; do
  assign+="${kv%%=*}=$(quote_word "${kv#*=}") "
done
run_cmd gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
  --command="cd $dir && ${assign}exec $(quote_cmd "${main[@]}")"
