#!/usr/bin/env bash
# The GPU checks of the engine and speed issues, as ONE script for a lent H100/H200 (torch preinstalled there).
# Needs the offline pack in data/cache/ (cp ../shared/data/cifar10-jpeg75.npz data/cache/) carried with the tree.
# Writes everything under $OUT (default runs/gpu-check/<timestamp>):
#   bench.json / bench.txt  : `python -m erlib bench` (all methods, batch 512, ResNet-18 CIFAR stem, same-run baseline)
#   simclr/, byol-er/       : ~4 min each of training on CIFAR-10 (JPEG q75 copy), kNN (k=200, t=0.1) every epoch
#   summary.txt             : epochs, minutes, kNN per epoch, card
# Usage: bash scripts/gpu_check.sh [minutes_per_run]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check/$(date +%Y%m%d-%H%M%S)}
MIN=${1:-4}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
python -m erlib bench --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
# epochs that fit in MIN minutes, from the measured end-to-end throughput (kNN each epoch costs extra: keep 25% slack)
epochs_for() {
  python - "$OUT/bench.json" "$1" "$2" "$MIN" <<'PY'
import json, sys
report, method, er, minutes = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
row = next(r for r in report["results"] if r["method"] == method and r["er"] == er)
print(max(1, int(0.75 * minutes * 60 * row["e2e_images_per_s"] / 50000)))
PY
}
for spec in "simclr 0 0.6" "byol 1 1.0"; do
  set -- $spec
  name=$1$([ "$2" = 1 ] && echo -er || true)
  epochs=$(epochs_for "$1" "$2")
  flag=$([ "$2" = 1 ] && echo --er || echo --no-er)
  start=$(date +%s)
  python -m erlib train --method "$1" $flag --dataset cifar10-jpeg75 --backbone resnet18_cifar --batch-size 512 \
    --epochs "$epochs" --warmup-epochs 1 --optimizer lars --lr "$(python -c "print($3 * 2)")" --log-every 50 \
    --no-progress --out-dir "$OUT" --name "$name"
  end=$(date +%s)
  python - "$OUT/$name" "$start" "$end" <<'PY' | tee -a "$OUT/summary.txt"
import sys
from erlib.runs import load_run
run = load_run(sys.argv[1])
knn = [(r["epoch"], round(r["knn200"], 4)) for r in run.records if r["kind"] == "epoch" and "knn200" in r]
print(f"{run.path.name}: {len(knn)} epochs in {(int(sys.argv[3]) - int(sys.argv[2])) / 60:.1f} min; kNN200 per epoch: {knn}")
PY
done
cat "$OUT/card.txt" >> "$OUT/summary.txt"
