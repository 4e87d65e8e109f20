#!/usr/bin/env bash
# GPU check for one CUDA machine, run from the project root: per-variant step times on Beauty, then one full
# Beauty MCLRec training to early stop with GPU utilisation sampled by nvidia-smi, then a summary table.
#
#   MCLREC_MIRROR=<dir with Amazon_Beauty.txt> OUT=<folder for logs> bash benchmarks/gpu_check.sh [MAX_MINUTES]
#
# MAX_MINUTES (default 9) caps the training (issue target: early stop in under 10 minutes on an H200-class GPU).
# Needs the package importable (pip install -e . or PYTHONPATH=src) and a CUDA build of torch.
set -euo pipefail
max_minutes="${1:-9}"
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
mclrec() { python3 -m mclrec "$@"; }

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
mclrec download beauty
mclrec preprocess beauty

python3 benchmarks/bench_train.py --dataset beauty --device cuda --batches 30 --warmup 5 \
    --json "$out/bench-cuda.json" | tee "$out/bench-cuda.md"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$out/gpu-util.csv" &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
start=$(date +%s)
mclrec train -d beauty -m mclrec --device cuda --max-minutes "$max_minutes" --out "$out/run" --no-progress \
    2> "$out/train.log"
wall=$(( $(date +%s) - start ))
kill $smi 2>/dev/null || true
mclrec evaluate --dataset beauty --variant mclrec --checkpoint "$out/run/best.pt" --output "$out/beauty-mclrec.json" \
    2>> "$out/train.log"

python3 - "$out" "$wall" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, wall = Path(sys.argv[1]), int(sys.argv[2])
log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
summary = json.loads((out / "run" / "summary.json").read_text())
test = json.loads((out / "beauty-mclrec.json").read_text())["metrics"]["test"]
util = [float(r.split(",")[1]) for r in (out / "gpu-util.csv").read_text().splitlines() if r.count(",") == 2]
mem = [float(r.split(",")[2]) for r in (out / "gpu-util.csv").read_text().splitlines() if r.count(",") == 2]
rows = [
    ("epochs run / best epoch", f"{summary['epochs_run']} / {summary['best_epoch']} ({summary['stopped']})"),
    ("wall seconds (train command)", f"{wall}"),
    ("median train s/epoch", f"{statistics.median(r['epoch_seconds'] for r in log):.2f}"),
    ("median valid eval s/epoch", f"{statistics.median(r['eval_seconds'] for r in log):.2f}"),
    ("GPU utilisation mean / median %", f"{statistics.mean(util):.0f} / {statistics.median(util):.0f}" if util else "n/a"),
    ("GPU memory used max MiB", f"{max(mem):.0f}" if mem else "n/a"),
    ("test HR@20 / NDCG@20", f"{test['HR@20']:.4f} / {test['NDCG@20']:.4f} (paper 0.1243 / 0.0539)"),
]
print("\n| Beauty MCLRec on GPU | value |\n|---|---|")
for name, value in rows:
    print(f"| {name} | {value} |")
EOF
