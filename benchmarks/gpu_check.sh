#!/usr/bin/env bash
# GPU check for one CUDA machine, run from the project root: per-variant step times on Beauty, then one full
# Beauty MCLRec training to early stop with GPU utilisation sampled by nvidia-smi, then a summary table.
#
#   MCLREC_MIRROR=<dir with Amazon_Beauty.txt> OUT=<folder for logs> bash benchmarks/gpu_check.sh [MAX_MINUTES]
#
# MAX_MINUTES (default 9) caps the training (issue target: early stop in under 10 minutes on an H200-class GPU).
# Needs the package importable (pip install -e . or PYTHONPATH=src) and a CUDA build of torch.
# BENCH=0 skips the two benchmarks (to fit the training into a separate call of at most 10 minutes).
# DATASET (default beauty) and DEVICE (default cuda) exist to rehearse the script on a CPU machine, e.g.
#   DATASET=synthetic DEVICE=cpu BATCHES=2 bash benchmarks/gpu_check.sh 1
# where nvidia-smi is absent and utilisation is reported as n/a.
set -euo pipefail
max_minutes="${1:-9}"
out="${OUT:-gpu-check}"
dataset="${DATASET:-beauty}"
device="${DEVICE:-cuda}"
batches="${BATCHES:-30}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
mclrec() { python3 -m mclrec "$@"; }

if [ "$device" != cpu ]; then
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
fi
mclrec download "$dataset"
mclrec preprocess "$dataset"

if [ "${BENCH:-1}" != 0 ]; then
    python3 benchmarks/bench_train.py --dataset "$dataset" --device "$device" --batches "$batches" --warmup 5 \
        --json "$out/bench-$device.json" | tee "$out/bench-$device.md"
    # length buckets cost host syncs (.tolist()) per encoder call, so `auto` turns them off on CUDA: do they pay on
    # this device? Both settings timed round-robin in one run.
    python3 benchmarks/bench_train.py --dataset "$dataset" --device "$device" --batches "$batches" --warmup 5 \
        --variants sasrec mclrec --set 'length_buckets=[]' --compare 'length_buckets=[8,16,32]' --no-eval \
        --json "$out/bench-$device-buckets.json" | tail -n 8 | tee "$out/bench-$device-buckets.md"
fi

: > "$out/gpu-util.csv"
smi=""
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
        > "$out/gpu-util.csv" &
    smi=$!
    trap 'kill $smi 2>/dev/null || true' EXIT
fi
start=$(date +%s)
mclrec train -d "$dataset" -m mclrec --device "$device" --set "max_minutes=$max_minutes" --out "$out/run" --no-progress \
    2> "$out/train.log"
wall=$(( $(date +%s) - start ))
[ -n "$smi" ] && kill "$smi" 2>/dev/null || true
mclrec evaluate --dataset "$dataset" --variant mclrec --checkpoint "$out/run/best.pt" \
    --output "$out/$dataset-mclrec.json" 2>> "$out/train.log"

python3 - "$out" "$wall" "$dataset" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, wall, dataset = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
summary = json.loads((out / "run" / "summary.json").read_text())
test = json.loads((out / f"{dataset}-mclrec.json").read_text())["metrics"]["test"]
samples = [r.split(",") for r in (out / "gpu-util.csv").read_text().splitlines() if r.count(",") == 2]
util, mem = [float(r[1]) for r in samples], [float(r[2]) for r in samples]
paper = " (paper 0.1243 / 0.0539)" if dataset == "beauty" else ""
rows = [
    ("epochs run / best epoch", f"{summary['epochs_run']} / {summary['best_epoch']} ({summary['stopped']})"),
    ("wall seconds (train command)", f"{wall}"),
    ("median train s/epoch", f"{statistics.median(r['epoch_seconds'] for r in log):.2f}"),
    ("median valid eval s/epoch", f"{statistics.median(r['eval_seconds'] for r in log):.2f}"),
    ("GPU utilisation mean / median %", f"{statistics.mean(util):.0f} / {statistics.median(util):.0f}" if util else "n/a"),
    ("GPU memory used max MiB", f"{max(mem):.0f}" if mem else "n/a"),
    ("test HR@20 / NDCG@20", f"{test['HR@20']:.4f} / {test['NDCG@20']:.4f}{paper}"),
]
print(f"\n| {dataset} MCLRec on {'the GPU' if util else 'this device'} | value |\n|---|---|")
for name, value in rows:
    print(f"| {name} | {value} |")
EOF
