#!/usr/bin/env bash
# Every benchmark in one go; each prints its own table (copy them into RESULTS.md with the machine).
#   bash benchmarks/run_all.sh                 # CPU, quick sizes
#   bash benchmarks/run_all.sh cuda full       # a GPU machine, full sizes, bf16 training
# On the project's lent GPU machines see benchmarks/GPU.md for the wheels to carry first.
set -uo pipefail
cd "$(dirname "$0")/.."
dev=${1:-cpu}
size=${2:-quick}
q=$([ "$size" = quick ] && echo --quick || echo)
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run() { echo; echo "### $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"; "$py" "$@" || echo "!!! failed: $*"; }
run benchmarks/bench_loader.py $q
run benchmarks/bench_ingest.py $q
run benchmarks/bench_features.py $q --device "$dev"
[ "$dev" = cuda ] && run benchmarks/bench_features.py $q --device cuda --batch 256 --compile reduce-overhead
run benchmarks/bench_augment.py $q --device "$dev"
if [ "$dev" = cuda ]; then
  run benchmarks/bench_train.py --device cuda --precision bf16 --batch-size 256 --steps 30
else
  run benchmarks/bench_train.py --workers 0 ${q:+--quick}
fi
run benchmarks/bench_classify.py $q
# the original TensorFlow musicnn runs from a TF venv (GENRE_ENGINE_TF_PYTHON); the lent GPUs have none
if [ "$dev" = cuda ]; then
  run benchmarks/bench_pretrained.py $q --device cuda --precision bf16 --skip-tf
else
  run benchmarks/bench_pretrained.py $q
fi
