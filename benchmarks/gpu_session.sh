#!/usr/bin/env bash
# Everything a lent GPU session measures, in ONE device call of at most 10 minutes (benchmarks/GPU.md):
# the wheels, a smoke check, the GPU benchmarks (each capped), the CUDA tests, then the small-set cv of
# benchmarks/gpu_smallset.sh with whatever time is left. Logs and tables go to OUT_DIR.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [TOTAL_SECONDS]
set -uo pipefail
out=$(realpath -m "${1:?usage: gpu_session.sh OUT_DIR [TOTAL_SECONDS]}")  # before the cd: relative to the caller
cd "$(dirname "$0")/.."
total=${2:-540}
t0=$(date +%s)
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -z "${NO_WHL:-}" ] && ls .whl/*.whl > /dev/null 2>&1; then  # NO_WHL=1: a local dry run
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "!!! wheel install failed"
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 GENRE_ENGINE_CACHE=$PWD/devdata/cache
skip=" ${SKIP:-} "  # SKIP="features compile": benchmarks already measured on this lease
want() { [[ "$skip" != *" $1 "* ]]; }
left() { echo $((total - ($(date +%s) - t0))); }
cap() { local s=$1; shift; echo; echo "### $* (cap ${s}s, $(date -u +%H:%M:%S))"; timeout -k 15 -s INT "$s" "$@" || echo "!!! failed or capped ($?): $*"; }

{
  nvidia-smi -L 2>&1; nproc
  "$py" - <<'EOF'
import torch, accelerate
import engine.models, kernels, shards  # noqa: F401 -- registration, import graph
from engine.models import build_model  # noqa: F401
print("torch", torch.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$out/smoke.log"

{
  want features && cap 45 "$py" benchmarks/bench_features.py --device cuda
  want compile && cap 60 "$py" benchmarks/bench_features.py --device cuda --batch 256 --compile reduce-overhead --librosa-clips 1
  want augment && cap 15 "$py" benchmarks/bench_augment.py --device cuda --quick
  want train && cap 45 "$py" benchmarks/bench_train.py --device cuda --precision bf16 --batch-size 256 --steps 30
  want classify && cap 30 "$py" benchmarks/bench_classify.py --quick --format-tracks 0
  want pretrained && cap 30 "$py" benchmarks/bench_pretrained.py --quick --device cuda --precision bf16 --skip-tf
  want tests && cap 30 "$py" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
} 2>&1 | tee "$out/bench.log"

rest=$(( $(left) - 45 ))
if [ "$rest" -lt 150 ]; then  # data, embeddings and a fold each need more than what is left
  echo "### small-set cv skipped: ${rest}s left"
else
  echo "### small-set cv with ${rest}s of $(left)s left"
  bash benchmarks/gpu_smallset.sh "$out" "$rest" 2>&1 | tee "$out/smallset.log"
fi
echo "### done in $(( $(date +%s) - t0 ))s"
