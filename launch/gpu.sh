#!/usr/bin/env bash
# Run a lottery_jax config on the GPUs of one machine (data-parallel over all of them).
#
#   launch/gpu.sh configs/jackpot_r32_cifar10.py runs/r32 [--config.x=y ...]
#
# Installs JAX's CUDA build through the `cuda` extra on first use. One process
# drives every local GPU: the batch is sharded on the mesh's "data" axis.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[cuda]'
config=$1 workdir=$2
shift 2
exec .venv/bin/python -m lottery_jax.main --config="$config" --workdir="$workdir" "$@"
