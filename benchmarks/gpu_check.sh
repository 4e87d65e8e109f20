#!/usr/bin/env bash
# GPU check for one CUDA machine, run from the project root. Phases (all by default, or a list in PHASES):
#   bench        per-variant step times, FLOP share and evaluation time on Beauty (bench_train.py)
#   cpu          the machine's own CPU: sasrec and mclrec in fp32 against `precision: bf16` (AMX where the flags show
#                amx_bf16), at 2 threads (the project's CPU) and at every core (CPU_THREADS), with both matmul rates
#   buckets      sasrec and mclrec with and without length buckets (their host syncs: do they pay here?)
#   kernels      attention math against sdpa, eager against compiled (compile=true), round-robin in one run
#   syncs        host syncs per training batch, counted by torch.cuda.set_sync_debug_mode (count_syncs.py)
#   determinism  two `--deterministic` one-epoch trainings with the same seed: identical logs
#   resume       one epoch on the CPU, resumed on the GPU for a second (random streams reseeded, with a warning)
#   concurrency  study throughput: 1, 4 and 8 (CONCURRENT) concurrent one-epoch Beauty MCLRec trainings on this GPU
#   train        one full Beauty MCLRec training to early stop (capped at MAX_MINUTES) with nvidia-smi sampling
#
#   MCLREC_MIRROR=<dir with Amazon_Beauty.txt> OUT=<folder for logs> bash benchmarks/gpu_check.sh [MAX_MINUTES]
#
# MAX_MINUTES (default 5) caps the training (issue target: a full Beauty MCLRec run in under 5 minutes on an H200).
# Every phase writes <phase>.md into OUT; the end prints them all. Needs the package importable (pip install -e .
# or PYTHONPATH=src) and a CUDA build of torch. DATASET (default beauty) and DEVICE (default cuda) exist to rehearse
# the script on a CPU machine, e.g.
#   DATASET=synthetic DEVICE=cpu BATCHES=2 bash benchmarks/gpu_check.sh 1
# where nvidia-smi is absent and GPU-only numbers are reported as n/a (CONCURRENT="1 2" keeps the concurrency phase
# small there).
set -euo pipefail
max_minutes="${1:-5}"
out="${OUT:-gpu-check}"
dataset="${DATASET:-beauty}"
device="${DEVICE:-cuda}"
batches="${BATCHES:-30}"
phases="${PHASES:-bench cpu buckets kernels syncs determinism resume concurrency train}"
cpu_threads="${CPU_THREADS:-2 $(nproc)}"
concurrent="${CONCURRENT:-1 4 8}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
mclrec() { python3 -m mclrec "$@"; }
has() { [[ " $phases " == *" $1 "* ]]; }
bench() { python3 benchmarks/bench_train.py --dataset "$dataset" --device "$device" --batches "$batches" --warmup 5 "$@"; }

if [ "$device" != cpu ]; then
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
fi
mclrec download "$dataset"
mclrec preprocess "$dataset"

if has bench; then
    bench --json "$out/bench.json" | tee "$out/bench.md"
fi
if has cpu; then
    : > "$out/cpu.md"
    for threads in $cpu_threads; do
        python3 benchmarks/bench_train.py --dataset "$dataset" --device cpu --threads "$threads" --batches "$batches" \
            --warmup 5 --variants sasrec mclrec --compare precision=bf16 --no-eval --json "$out/cpu-$threads.json" \
            | tee "$out/cpu-$threads.log"
        { echo "#### CPU, $threads threads"; sed -n '/^- cpu/p;/matmul_/p;/^| variant/,$p' "$out/cpu-$threads.log"
          echo; } >> "$out/cpu.md"
    done
fi
if has buckets; then
    bench --variants sasrec mclrec --set 'length_buckets=[]' --compare 'length_buckets=[8,16,32]' --no-eval \
        --json "$out/buckets.json" | sed -n '/^| variant/,$p' | tee "$out/buckets.md"
fi
if has kernels; then
    # each comparison in one round-robin run; compile's first batches (the compilation) are warm-up
    bench --variants sasrec mclrec --set attention=math --compare attention=sdpa --no-eval \
        --json "$out/attention.json" | sed -n '/^| variant/,$p' | tee "$out/kernels.md"
    bench --variants sasrec mclrec --set compile=false --compare compile=true --warmup 10 --no-eval \
        --json "$out/compile.json" | sed -n '/^| variant/,$p' | tee -a "$out/kernels.md"
fi
if has syncs; then
    python3 benchmarks/count_syncs.py --dataset "$dataset" --device "$device" --batches 10 | tee "$out/syncs.md"
fi

epoch_log() {  # a run's log without its timings: what two runs of the same seed must share
    python3 -c "import json,sys; [print(json.dumps({k: v for k, v in json.loads(l).items() if not k.endswith('seconds')}, sort_keys=True)) for l in open(sys.argv[1])]" "$1"
}
if has determinism; then
    for k in 1 2; do
        rm -rf "$out/det$k"
        mclrec train -d "$dataset" -m mclrec --device "$device" --deterministic --set max_epochs=1 \
            --out "$out/det$k" --no-progress 2> "$out/det$k.log"
    done
    if [ "$(epoch_log "$out/det1/log.jsonl")" = "$(epoch_log "$out/det2/log.jsonl")" ]; then same=yes; else same=NO; fi
    printf '| deterministic runs | identical logs |\n|---|---|\n| 2 x 1 epoch, seed 0 | %s |\n' "$same" | tee "$out/determinism.md"
fi
if has resume; then
    rm -rf "$out/moved"
    mclrec train -d synthetic -m mclrec --device cpu --set max_epochs=1 --out "$out/moved" --no-progress 2> "$out/moved.log"
    mclrec train -d synthetic -m mclrec --device "$device" --set max_epochs=2 --out "$out/moved" --resume --no-progress \
        2>> "$out/moved.log"
    epochs=$(wc -l < "$out/moved/log.jsonl")
    warned=$(grep -c "random streams cannot move between device types" "$out/moved.log" || true)
    printf '| resume cpu -> %s | epochs in log | reseed warning |\n|---|---|---|\n| synthetic mclrec | %s | %s |\n' \
        "$device" "$epochs" "$warned" | tee "$out/resume.md"
fi
if has concurrency; then
    printf '| concurrent trainings | wall s | trainings per hour |\n|---|---|---|\n' > "$out/concurrency.md"
    for n in $concurrent; do
        start=$(date +%s.%N)
        for i in $(seq 1 "$n"); do
            mclrec train -d "$dataset" -m mclrec --device "$device" --seed "$i" --set max_epochs=1 \
                --out "$out/conc$n/seed$i" --no-progress 2> "$out/conc$n-$i.log" &
        done
        wait
        wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
        python3 -c "import sys; n, w = int(sys.argv[1]), float(sys.argv[2]); print(f'| {n} x 1 epoch | {w} | {3600 * n / w:.0f} epochs/h |')" \
            "$n" "$wall" >> "$out/concurrency.md"
    done
    cat "$out/concurrency.md"
fi

if has train; then
    : > "$out/gpu-util.csv"
    smi=""
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
            > "$out/gpu-util.csv" &
        smi=$!
        trap 'kill $smi 2>/dev/null || true' EXIT
    fi
    start=$(date +%s)
    mclrec train -d "$dataset" -m mclrec --device "$device" --set "max_minutes=$max_minutes" --out "$out/run" \
        --no-progress 2> "$out/train.log"
    wall=$(( $(date +%s) - start ))
    [ -n "$smi" ] && kill "$smi" 2>/dev/null || true
    mclrec evaluate --dataset "$dataset" --variant mclrec --checkpoint "$out/run/best.pt" \
        --output "$out/$dataset-mclrec.json" 2>> "$out/train.log"

    python3 - "$out" "$wall" "$dataset" <<'EOF' | tee "$out/train.md"
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
fi

echo
echo "== gpu_check summary ($dataset on $device; phases: $phases) =="
for phase in $phases; do
    [ -f "$out/$phase.md" ] && { echo "### $phase"; cat "$out/$phase.md"; echo; }
done
