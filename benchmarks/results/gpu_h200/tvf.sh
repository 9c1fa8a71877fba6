# Device call of 2026-12-04 (second lent H200 session): ticket vs re-init vs prune &
# fine-tune (issue 13.2/13.5) with VGG-19, then MobileNetV2 if time is left, on a
# class-balanced 35k-image CIFAR-10 train subset (all 10k test images), E epochs per
# training, each learning rate a separate process on the one GPU (all three in
# parallel). A second round runs only if the first took less than the time left.
# Results (configs, summaries, histories, logs; no weights or checkpoints) come back as $OUT/tvf.tgz.
# The subset (here, before the call; carried as runs/gpu):
#   python -c "import sys; sys.path.insert(0, 'benchmarks'); import cifar_results; cifar_results.make_subset('../shared/datasets/cifar10-jpeg.zip', 'runs/gpu/cifar10-train35k.zip', train_per_class=3500, test_per_class=0, seed=0)"
# The call (device tool): `BUDGET=530 bash benchmarks/results/gpu_h200/tvf.sh` with carry
# runs/gpu and .whl (the wheels the image lacks: grain 0.2.18, array_record 0.8.6,
# ml_collections 1.1.0, tensorboardX 2.6.5, mnist1d 0.0.2.post1, portpicker 1.6.0,
# orbax-checkpoint 0.12.8); VGG-19 took 313 s, so MobileNetV2 was skipped and run in a
# second call, `BUDGET=430 NETS=mobilenet_v2 bash ...`, cut in its last arm.
# The tracked benchmarks/runs and benchmarks/checkpoints (95 MB) were taken out of the
# index for the calls (git rm -r --cached + .git/info/exclude, restored after) so that
# what travels fit the tool's 64 MiB.
#
#   DRY=1 bash benchmarks/results/gpu_h200/tvf.sh    # CPU dry run: a few steps, 256 test images
set -o pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-500}        # seconds from the start until results are packed
E=${E:-8}
SEED=${SEED:-0}              # runs of seed 0 are <net>_lr<eta>, others <net>_s<seed>_lr<eta>
NETS=${NETS:-"vgg19 mobilenet_v2"}
LRS=${LRS:-"0.01 0.03 0.1"}
W=${W:-/tmp/tvf}
OUT=${OUT:-/tmp/tvf_out}
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
if [ -z "$DRY" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD XLA_FLAGS=--xla_gpu_deterministic_ops=true XLA_PYTHON_CLIENT_MEM_FRACTION=0.25
  PY=python3; WORKERS=4; EXTRA=()
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$W/env.txt"
else
  PY=.venv/bin/python; WORKERS=0; E=${E_DRY:-0.02}
  EXTRA=(--config.data.max_eval_examples=256 --config.model.conv=torch)
fi
$PY -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" >> "$W/env.txt" 2>&1
echo "E=$E SEED=$SEED NETS=$NETS LRS=$LRS BUDGET=$BUDGET workers=$WORKERS start=$(date -u +%FT%TZ)" | tee -a "$W/env.txt"

round() {  # one net, every learning rate in parallel, each process cut at the budget
  local net=$1 left=$(( BUDGET - ($(date +%s) - T0) )) name
  for lr in $LRS; do
    name=${net}_lr$lr; [ "$SEED" = 0 ] || name=${net}_s${SEED}_lr$lr
    timeout "$left" $PY -m lottery_jax.main \
      --config=configs/ticket_vs_finetune_cifar10.py:$net,folder=runs/gpu/cifar10-train35k.zip,subset \
      --config.num_epochs=$E --config.ticket_vs_finetune.sparse_epochs=$E \
      "--config.ticket_vs_finetune.learning_rates=($lr,)" --config.optimizer.warmup_epochs=1 \
      --config.checkpoint_every_steps=100000 --config.log_every_steps=100 \
      --config.data.num_workers=$WORKERS --config.seed=$SEED --config.progress_bar=False \
      "${EXTRA[@]}" --workdir="$W/$name" > "$W/$name.log" 2>&1 &
  done
  wait
}

for net in $NETS; do
  s=$(date +%s); elapsed=$(( s - T0 ))
  if [ -n "$last" ] && [ $(( elapsed + last * 11 / 10 )) -gt "$BUDGET" ]; then
    echo "skip $net: ${elapsed}s gone, the last round took ${last}s" | tee -a "$W/env.txt"; continue
  fi
  round "$net"
  last=$(( $(date +%s) - s ))
  echo "$net round: ${last}s $(date -u +%FT%TZ)" | tee -a "$W/env.txt"
  grep -h "final eval\|Traceback\|Error" "$W/${net}"_*lr*.log | tail -20
done
(cd "$W" && find . -name '*.json' -o -name '*.log' -o -name '*.txt' | grep -v -e /checkpoints/ -e /rewind/ \
  | tar czf "$OUT/tvf.tgz" -T -) && ls -la "$OUT"
