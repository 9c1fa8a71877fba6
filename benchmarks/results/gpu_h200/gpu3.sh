# Third device call: determinism on the GPU. siblings_quick twice vmapped and once
# sequential, all with XLA's deterministic GPU ops; compare exports bitwise.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_gpu_deterministic_ops=true
for r in A:True B:True C:False; do
  n=${r%%:*}; v=${r##*:}; s=$(date +%s.%N)
  timeout 90 python3 -m lottery_jax.main --config=configs/siblings_quick.py --config.siblings.vmap=$v --config.progress_bar=False --workdir=/tmp/det_$n > $OUT/det_$n.log 2>&1
  echo "$n vmap=$v rc=$? wall_s=$(python3 -c "print(round($(date +%s.%N)-$s,1))")" | tee -a $OUT/det.txt
done
python3 .whl/cmp.py /tmp/det_A /tmp/det_B /tmp/det_C 2>&1 | tee -a $OUT/det.txt
