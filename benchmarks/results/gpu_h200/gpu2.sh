# Second device call: siblings.py on the other small models, then the whole
# siblings_quick experiment with siblings.vmap True and False (wall clock, same seed).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
date -u +%FT%TZ | tee $OUT/env2.txt
timeout 80 python3 benchmarks/siblings.py --models mnist1d_cnn,lenet_300_100 --counts 1,2,4,8 --steps 50 --repeats 5 --convs xla 2>&1 | grep -v cuda_timer | tee $OUT/siblings_more.log
for v in True False; do
  s=$(date +%s.%N)
  timeout 130 python3 -m lottery_jax.main --config=configs/siblings_quick.py --config.siblings.vmap=$v --config.progress_bar=False --workdir=/tmp/sq_$v > $OUT/sq_$v.log 2>&1
  rc=$?; e=$(date +%s.%N)
  python3 -c "import json,sys; d=json.load(open('/tmp/sq_$v/summary.json')); print('vmap=$v rc=$rc wall_s=%.1f' % ($e-$s), 'per_sibling', [round(x['test_accuracy'],4) for x in d['per_sibling']], 'iou', round(d['overlap']['mean_iou'],4), 'union', d['union']['test_accuracy'], 'inter', d['intersection']['test_accuracy'], 'one_shot', d['one_shot']['test_accuracy'])" 2>&1 | tee -a $OUT/env2.txt
  cp /tmp/sq_$v/summary.json $OUT/sq_summary_$v.json 2>/dev/null
done
date -u +%FT%TZ | tee -a $OUT/env2.txt
