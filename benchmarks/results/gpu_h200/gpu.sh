# One device call: the siblings benchmark (issue 14.5) and the IMP bookkeeping
# benchmark (issue 13.6) on the lent GPU. Output under $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/env.txt
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a $OUT/env.txt
date -u +%FT%TZ | tee -a $OUT/env.txt
timeout 100 python3 benchmarks/siblings.py --models digits_cnn --counts 1,2,4,8 --steps 50 --repeats 5 --convs xla,unrolled 2>&1 | tee $OUT/siblings_small.log
timeout 170 python3 benchmarks/siblings.py --models cifar_resnet20 --counts 1,2,4,8 --steps 20 --repeats 3 --convs xla 2>&1 | tee $OUT/siblings_r20.log
timeout 110 python3 benchmarks/imp_bookkeeping.py --model cifar_resnet20 --levels 2 --steps 300 --json $OUT/bk.json 2>&1 | tee $OUT/bk.log
date -u +%FT%TZ | tee -a $OUT/env.txt
