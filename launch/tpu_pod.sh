#!/usr/bin/env bash
# Run a lottery_jax config on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/jackpot_r50.py /mnt/shared/runs/r50 [--config.x=y ...]
#
# Every host installs the package (with the TPU extra) from this checkout, then
# runs the same command; the config's `multihost=True` makes each call
# jax.distributed.initialize(), each host reads only its shard of the data, and
# Orbax writes one checkpoint to the workdir, which must be a filesystem every host
# sees (Filestore/NFS, or a GCS bucket mounted with gcsfuse at the same path). Re-running the
# same command after a preemption resumes from the last checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$repo" "$tpu":~/lottery_jax
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd ~/lottery_jax
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/python -m lottery_jax.main --config=$config --workdir=$workdir --config.multihost=True $*
"
