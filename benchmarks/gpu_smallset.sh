#!/usr/bin/env bash
# The small-set comparison (issues 12 and 13) on a lent GPU machine, in one device call: every recipe x both
# sets, 5-fold cv over the same folds, rows run side by side (one GPU, 16 cores), then a table.
#
#   bash benchmarks/gpu_smallset.sh OUT_DIR [SECONDS]
#
# Inputs (see benchmarks/GPU.md): our audio stack importable (benchmarks/gpu_session.sh installs the carried
# wheels first), devdata/realmusic/ (the real-music set of benchmarks/realmusic/build.py, transcoded to Ogg Vorbis so that it
# fits the 64 MiB a device call carries; clips.csv beside it) and devdata/cache/pretrained/ (the converted
# musicnn checkpoint, so no musicnn wheel travels). The synthetic set is rebuilt there with the same command as
# here; its sha256 list is written so that the two machines' corpora can be compared.
# EXTRA="optim.epochs=1 ..." appends overrides to every cv run (a dry run on the CPU).
# SECONDS caps the whole script (default 400): the cv phase gets what data and embeddings leave, less 20 s;
# a row still running then is stopped, its finished folds still count.
set -uo pipefail
out=$(realpath -m "${1:?usage: gpu_smallset.sh OUT_DIR [SECONDS]}")
total=${2:-400}
cd "$(dirname "$0")/.."
t0=$(date +%s)
extra=${EXTRA:-}
mkdir -p "$out"
work=${WORK:-/tmp/smallset}
rm -rf "$work" && mkdir -p "$work/runs"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 GENRE_ENGINE_CACHE=$PWD/devdata/cache
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
py=${PYTHON:-python3}
ncpu=$(nproc)
log() { echo "### $* ($(date -u +%H:%M:%S))"; }

log "data"
"$py" tools/make_shards.py --layout csv devdata/realmusic/clips.csv --out "$work/real" --folds 5 --group-by artist \
  --split-ratios 0.85,0.15,0 --workers "$ncpu" --no-progress 2>&1 | tail -3
"$py" tools/make_synthetic.py "$work/synth10" --clips-per-genre 20 --duration 10 --workers "$ncpu" --quiet
(cd "$work/synth10" && find . -name '*.wav' | sort | xargs sha256sum) > "$out/synth10.sha256"
"$py" tools/make_shards.py "$work/synth10" --out "$work/synth" --layout folder --folds 5 --seed 0 \
  --workers "$ncpu" --no-progress 2>&1 | tail -3

log "embeddings"
for s in real synth; do
  timeout -k 15 120 "$py" -m engine embed musicnn:MSD_musicnn --shards "$work/$s" --out "$work/${s}_emb" > "$work/runs/embed_$s.log" 2>&1 \
    || echo "!!! embed $s failed"
done

# the classic baseline outside the engine (librosa + scikit-learn, CPU) on the same shards and folds
for s in real synth; do
  "$py" benchmarks/realmusic/baseline.py --shards "$work/$s" --json "$work/runs/baseline_$s.json" \
    > "$work/runs/baseline_$s.log" 2>&1 &
done

# name set config [overrides...]
# configs/{cnn,crnn,rnn,resnet}.yaml are the small-set recipe (8 crops x 15 epochs, EMA, 30-s evaluation windows);
# configs/seed_cnn.yaml the seed's. The 2026-11-26 run measured the recipe as overrides over the seed-recipe
# configs of that day (its rows crnn_long etc.); the table is in benchmarks/RESULTS.md.
# probe.yaml probes 30-window crops (the clip mean of clips up to ~89 s); probe_window: single 3-s windows
window="data.segment_seconds=1 data.eval_hop_seconds=1 data.batch_size=32"
rows=(
  "crnn real configs/crnn.yaml"
  "crnn synth configs/crnn.yaml"
  "resnet real configs/resnet.yaml"
  "cnn real configs/cnn.yaml"
  "rnn real configs/rnn.yaml"
  "finetune real configs/musicnn_finetune.yaml"
  "finetune synth configs/musicnn_finetune.yaml"
  "stats real configs/stats.yaml"
  "stats synth configs/stats.yaml"
  "seed_cnn real configs/seed_cnn.yaml"
  "seed_cnn synth configs/seed_cnn.yaml"
  "probe real_emb configs/probe.yaml"
  "probe_window real_emb configs/probe.yaml $window"
  "probe synth_emb configs/probe.yaml"
  "probe_window synth_emb configs/probe.yaml $window"
)
budget=$((total - ($(date +%s) - t0) - 20)); [ "$budget" -lt 60 ] && budget=60
log "cv: ${#rows[@]} rows side by side, at most ${budget}s"
for r in "${rows[@]}"; do
  read -r name set cfg ov <<< "$r"
  dir="$work/runs/${set}__$name"
  # shellcheck disable=SC2086
  timeout -k 15 -s INT "$budget" "$py" -m engine cv --config "$cfg" --shards "$work/$set" --out "$dir" \
    data.num_workers=0 run.tensorboard=false $ov $extra > "$dir.log" 2>&1 &
done
wait
log "cv done"

"$py" - "$work/runs" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
from pathlib import Path
runs = Path(sys.argv[1])
print("| set | row | folds | track acc (mean ± std) | per fold | s per fold |")
print("|---|---|---|---|---|---|")
for d in sorted(p for p in runs.iterdir() if p.is_dir()):
    s, name = d.name.split("__")
    folds = [json.loads(f.read_text()) for f in sorted(d.glob("fold*/test_metrics.json"))]
    accs = [f["track_accuracy"] for f in folds if "track_accuracy" in f]
    times = [f["train_seconds"] for f in folds if "train_seconds" in f]
    secs = f"{statistics.mean(times):.0f}" if times else ""
    if accs:
        m, sd = statistics.mean(accs) * 100, statistics.pstdev(accs) * 100
        per = " ".join(f"{a * 100:.1f}" for a in accs)
        print(f"| {s} | {name} | {len(accs)} | {m:.1f} ± {sd:.1f} | {per} | {secs} |")
    else:
        print(f"| {s} | {name} | 0 | – | – | |")
for f in sorted(runs.glob("baseline_*.json")):  # benchmarks/realmusic/baseline.py (scikit-learn), same folds
    b = json.loads(f.read_text())
    per = " ".join(f"{r['track_accuracy'] * 100:.1f}" for r in b["folds"])
    print(f"| {f.stem[9:]} | sklearn {b['features']} | {len(b['folds'])} | {b['mean'] * 100:.1f} ± {b['std'] * 100:.1f} | {per} | |")
EOF
# only what a table needs (metrics, histories, logs): checkpoints and states do not fit the 16 MB a file brings back
(cd "$work" && find runs \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.log' \) -print0 \
  | tar -czf "$out/runs.tar.gz" --null -T -)
