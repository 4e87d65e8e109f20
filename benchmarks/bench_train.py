"""Training and full-ranking evaluation speed per variant, with FLOPs counted on real training steps.

Usage: python benchmarks/bench_train.py --dataset beauty [--batches 20] [--device auto] [--naive] [--threads N]
                                         [--set KEY=VALUE] [--compare KEY=VALUE] [--variants ...] [--json FILE]
                                         [--profile VARIANT]

Each variant's settings resolve from params.yaml exactly as `mclrec train` resolves them, and the real code runs:
the TrainingFeed builds the batches, the modules and optimisers are the trainer's, and `train_step` is timed.
Per variant: `--warmup` untimed batches, then the median over `--batches` timed batches, taken round-robin over
the variants so that other load on a shared machine hits them all alike. Seconds per epoch = that median x the
batches per epoch. FLOPs per batch: torch.utils.flop_counter.FlopCounterMode around real steps (every matrix
product, forward and backward), averaged over `--flop-batches` batches. The share of peak is the achieved FLOP
rate over this machine's float32 matrix-multiply rate (the fastest of ten 2048^3 products, measured at the start
and end); the floor is the epoch time at that rate. A shared or virtual machine's speed drifts by 10% within
minutes, so every round of the timing also times one such product, and the share of the in-run rate divides by
the median of those: the rate under the same conditions as the steps. When a run uses `precision: bf16` the
bfloat16 product rate is measured too (same way, at a smaller size where bfloat16 products are slow), FLOPs are
counted by the products' dtype (without the zero rows that CPU bf16 pads its token products with so that oneDNN
reuses its kernels: the model's products), and those rows' floor is their bfloat16 products at the bf16 rate plus the rest at
fp32's; "share of bf16 peak" is that floor over the measured step. Evaluation times `rank_all` over every test
user once.
`--naive` turns the exact speed-ups off (params.NAIVE_PATH) for every variant. `--compare KEY=VALUE` (repeatable)
also times every variant with those settings added, as rows `<variant> [KEY=VALUE]`, in the same round-robin, so
two settings are compared on the same machine in one run; `--also 'KEY=VALUE ...'` (repeatable) adds one more
set of settings each, so several (say, before and after each speed-up) share the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mclrec.cpu_heap import heap_state, huge_pages_state, keep_freed_memory, use_huge_pages
from mclrec.config import NAIVE_PATH, load_params, parse_overrides, run_config
from mclrec.data.processed import ProcessedData, load_processed
from mclrec.environment import cpu_flags as environment_cpu_flags, cpu_model
from mclrec.evaluation import ranking
from mclrec.models import packed_encoding
from mclrec.evaluation.ranking import rank_all
from mclrec.paths import processed_dir
from mclrec.run_config import RunConfig
from mclrec.data.instances import eval_instances
from mclrec.training.feed import TrainingFeed
from mclrec.device import resolve_device
from mclrec.models.losses import rec_ce_loss
from mclrec.models.parts import build_parts
from mclrec.training.trainer import Optimisers, schedule_of, train_step
from mclrec.vector_math import resolve_vector_math

VARIANTS = ("sasrec", "cl4srec", "duorec", "mclrec", "mclrec-paper", "mclrec-j")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what decides fp32/bf16 matmul speed


def sync(device: torch.device) -> None:
    """Wait for queued device work so that host timers measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 10,
                  dtype: torch.dtype = torch.float32) -> float:
    """size x size products of `dtype` after one warm-up: the fastest of `repeats`, in GFLOP/s (the machine's peak
    for that dtype; bfloat16 products are what `precision: bf16` runs the encoder's linear layers as)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def affordable_size(device: torch.device, dtype: torch.dtype, largest: int, seconds: float = 0.5) -> int:
    """The largest of largest, largest / 2, ... (at least 256) whose product of `dtype` takes about `seconds` at the
    rate of a 256^3 one: bfloat16 products on a CPU without AVX512-BF16 or AMX run at ~1 GFLOP/s, where ten 2048^3
    ones would take minutes."""
    rate = matmul_gflops(device, 256, repeats=2, dtype=dtype) * 1e9
    size = largest
    while size > 256 and 2 * size**3 / rate > seconds:
        size //= 2
    return size


def cpu_flags() -> list[str]:
    """The CPU_FLAGS this machine has, from /proc/cpuinfo (empty where it cannot be read)."""
    return environment_cpu_flags(CPU_FLAGS) or []


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class VariantRun:
    """One variant's modules, optimisers and feed, stepping through random batches as training does."""

    def __init__(self, cfg: RunConfig, data: ProcessedData, device: torch.device, sync_free_step: bool | None = None):
        """sync_free_step: the feed and Adam kernel of a sync-free step (default: on CUDA, as train chooses)."""
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, device
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.parts = build_parts(cfg, data.n_items).to(device)
        if cfg.compile:
            self.parts.compile(device)
        self.parts.train(True)
        self.optimisers = Optimisers(cfg, self.parts, fused=sync_free_step)
        self.feed = TrainingFeed.build(cfg, data, device, sync_free_step=sync_free_step)
        self._batches = iter(())

    def next_batch(self):
        """The next batch of an endless sequence of shuffled epochs."""
        batch = next(self._batches, None)
        if batch is None:
            self._batches = self.feed.epoch(self.generator)
            batch = next(self._batches)
        return batch

    def step(self) -> float:
        """Seconds of one train_step on the next batch (its construction not included)."""
        batch = self.next_batch()
        sync(self.device)
        start = time.perf_counter()
        train_step(self.cfg, self.parts, self.optimisers, batch, self.generator)
        sync(self.device)
        return time.perf_counter() - start

    def peak_memory_mib(self, batches: int = 2) -> float | None:
        """CUDA memory this variant's steps allocate above what is already held (its own peak: the counters are reset
        first), in MiB; None off CUDA."""
        if self.device.type != "cuda":
            return None
        sync(self.device)
        held = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(batches):
            self.step()
        return (torch.cuda.max_memory_allocated(self.device) - held) / 2**20

    def flops_by_dtype(self, batches: int) -> dict[torch.dtype, float]:
        """Mean matrix-product FLOPs of one train_step (forward and backward), counted by FlopCounterMode, by the
        products' dtype (`precision: bf16`: the encoder's linear layers are bfloat16, L_rec's products and the scores
        float32)."""
        counter = FlopsByDtype()
        padding = packed_encoding.CPU_BF16_ROW_MULTIPLE
        packed_encoding.CPU_BF16_ROW_MULTIPLE = 1  # the model's products, not the rows CPU bf16 pads them to
        try:
            with counter:
                for _ in range(batches):
                    train_step(self.cfg, self.parts, self.optimisers, self.next_batch(), self.generator)
        finally:
            packed_encoding.CPU_BF16_ROW_MULTIPLE = padding
        if not counter.by_dtype:  # a FlopCounterMode without the hook: every product counted as float32
            return {torch.float32: counter.get_total_flops() / batches}
        return {dtype: flops / batches for dtype, flops in counter.by_dtype.items()}

    def flops(self, batches: int) -> float:
        """Mean matrix-product FLOPs of one train_step (forward and backward), counted by FlopCounterMode."""
        return sum(self.flops_by_dtype(batches).values())


class FlopsByDtype(FlopCounterMode):
    """FlopCounterMode that also sums each counted product's FLOPs by the dtype of its first matrix operand (what
    autocast cast it to). It hooks FlopCounterMode._count_flops; a torch without that method counts only totals."""

    def __init__(self):
        super().__init__(display=False)
        self.by_dtype: dict[torch.dtype, float] = {}

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            operand = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2), None)
            dtype = operand.dtype if operand is not None else torch.float32
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            self.by_dtype[dtype] = self.by_dtype.get(dtype, 0) + flops
        return super()._count_flops(func_packet, out, args, kwargs)


def rec_losses_per_batch(cfg: RunConfig) -> int:
    """L_rec (Eq. 3, full softmax) evaluations per training batch: two in MCLRec's meta schedule (steps 1 and 3),
    one in every other schedule; none with the bpr or bce losses."""
    if cfg.loss != "ce":
        return 0
    return 2 if schedule_of(cfg) == "meta" else 1


def bench_rec_loss(cfg: RunConfig, n_items: int, device: torch.device, repeats: int = 20) -> dict[str, float]:
    """L_rec alone at one batch's shape ([batch, hidden] read-outs against the n_items + 1 item rows), forward and
    backward with the step's own code (losses.rec_ce_loss, the run's fused_losses), on random inputs: the median
    seconds of `repeats` after three untimed, and its matrix-product FLOPs (FlopCounterMode)."""
    gen = torch.Generator(device=device).manual_seed(0)
    weights = (0.02 * torch.randn(n_items + 1, cfg.hidden_size, generator=gen, device=device)).requires_grad_()
    h = torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen, device=device).requires_grad_()
    targets = torch.randint(1, n_items + 1, (cfg.batch_size,), generator=gen, device=device)

    def once() -> None:
        rec_ce_loss(h, weights, targets, fused=cfg.fused_losses).backward()

    counter = FlopCounterMode(display=False)
    with counter:
        once()
    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        once()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "gflop": counter.get_total_flops() / 1e9}


def split_rec_loss(row: dict[str, Any], cfg: RunConfig, rec: dict[str, float], peak: float) -> dict[str, Any]:
    """A variant's step split into its L_rec evaluations (timed alone, bench_rec_loss) and the rest (encoder,
    contrastive losses, augmenters, optimiser updates, packing): the rest's FLOPs, seconds and share of peak."""
    calls = rec_losses_per_batch(cfg)
    rest_gflop = row["gflop_per_batch"] - calls * rec["gflop"]
    rest_s = row["batch_s"] - calls * rec["seconds"]
    return {"rec_calls": calls, "rec_gflop_share": calls * rec["gflop"] / row["gflop_per_batch"],
            "rest_gflop": rest_gflop, "rest_s": rest_s,
            "rest_share_of_peak": rest_gflop / rest_s / peak if rest_s > 0 else None}


def bench_eval(run: VariantRun, data: ProcessedData, repeats: int = 3, score_blocks: list[int] | None = None
               ) -> dict[str, Any]:
    """rank_all over every test user, `repeats` times after an untimed warm-up; seconds = the median.

    `score_blocks`: also time these values of ranking.CPU_SCORE_BLOCK (scores per product on the CPU), round-robin
    with the default in every repeat, so the block sizes are compared in one process.
    """
    cfg, device = run.cfg, run.device
    test = eval_instances(data, "test", device)
    default = ranking.CPU_SCORE_BLOCK
    blocks = [default] + [b for b in (score_blocks or []) if b != default]
    rank_all(run.parts.encoder, test, cfg.eval_batch_size, cfg.length_buckets)  # warm-up
    times: dict[int, list[float]] = {block: [] for block in blocks}
    try:
        for _ in range(repeats):
            for block in blocks:
                ranking.CPU_SCORE_BLOCK = block
                sync(device)
                start = time.perf_counter()
                rank_all(run.parts.encoder, test, cfg.eval_batch_size, cfg.length_buckets)
                sync(device)
                times[block].append(time.perf_counter() - start)
    finally:
        ranking.CPU_SCORE_BLOCK = default
    return {"users": len(test), "items": data.n_items, "seconds": statistics.median(times[default]),
            "each": times[default],
            "score_blocks": {str(block): statistics.median(t) for block, t in times.items()} if score_blocks else None}


def profile_variant(run: VariantRun, steps: int, top: int = 20) -> str:
    """torch.profiler table of `steps` more batches of a warm run, top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.step()
    key = "self_cuda_time_total" if run.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: processor, flags, versions, threads, load."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": f"{device} ({name})", "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "cpu_heap": heap_state(), "cpu_huge_pages": huge_pages_state(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def render(header: dict, rows: list[dict], evaluation: dict | None, summary: dict) -> str:
    """The Markdown report: machine, one row per variant, then the MCLRec/SASRec ratio and the evaluation time."""
    lines = [f"- {key}: {value}" for key, value in header.items()]
    gpu = any(r.get("gpu_peak_mib") for r in rows)  # CUDA: each variant's own peak memory (counters reset per variant)
    bf16 = any(r.get("share_of_bf16_peak") is not None for r in rows)  # a row with `precision: bf16`
    lines += ["", "| variant | s/batch | batches/epoch | s/epoch | GFLOP/batch | GFLOP/s | share of fp32 peak "
              "| share of in-run rate |" + (" share of bf16 peak |" if bf16 else "") + " floor s/epoch |"
              + (" GPU peak MiB |" if gpu else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if bf16 else "") + ("---|" if gpu else "")]

    def bf16_cell(row: dict) -> str:
        share = row.get("share_of_bf16_peak")
        return "" if not bf16 else " - |" if share is None else f" {100 * share:.1f}% |"

    lines += [f"| {r['variant']} | {r['batch_s']:.4f} | {r['batches_per_epoch']} | {r['epoch_s']:.1f} "
              f"| {r['gflop_per_batch']:.2f} | {r['gflops']:.1f} | {100 * r['share_of_peak']:.1f}% "
              f"| {100 * r['share_of_in_run_rate']:.1f}% |" + bf16_cell(r)
              + f" {r['floor_epoch_s']:.1f} |" + (f" {r['gpu_peak_mib']:.0f} |" if r.get("gpu_peak_mib") else "")
              for r in rows]
    rec = summary.get("rec_loss")
    if rec:
        lines += ["", f"L_rec alone (forward and backward, timed apart): {1e3 * rec['seconds']:.1f} ms, "
                      f"{rec['gflop']:.2f} GFLOP, {100 * rec['share_of_peak']:.1f}% of fp32 peak. Without its "
                      "evaluations, the rest of each step (encoder, contrastive terms, updates):", "",
                  "| variant | L_rec per batch | L_rec share of GFLOP | rest GFLOP/batch | rest s/batch "
                  "| rest share of fp32 peak |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} (rest) | {r['rec_calls']} | {100 * r['rec_gflop_share']:.1f}% "
                  f"| {r['rest_gflop']:.2f} | {r['rest_s']:.4f} | "
                  + (f"{100 * r['rest_share_of_peak']:.1f}% |" if r["rest_share_of_peak"] is not None else "n/a |")
                  for r in rows if "rec_calls" in r]
    lines.append("")
    ratio = summary.get("mclrec_sasrec_epoch_ratio")
    lines.append(f"mclrec/sasrec epoch ratio: {ratio:.2f}" if ratio else "mclrec/sasrec epoch ratio: n/a")
    for variant, speedup in summary.get("speedup", {}).items():
        lines.append(f"{variant}: epoch time / epoch time with the compared settings = {speedup:.2f}")
    for set_label, speedups in summary.get("speedup_also", {}).items():
        for variant, speedup in speedups.items():
            lines.append(f"{variant}: epoch time / epoch time with [{set_label}] = {speedup:.2f}")
    lines.append(f"eval seconds ({evaluation['users']} users x {evaluation['items']} items, median of "
                 f"{len(evaluation['each'])}): {evaluation['seconds']:.2f}" if evaluation else "eval seconds: n/a")
    for block, seconds in ((evaluation or {}).get("score_blocks") or {}).items():
        lines.append(f"eval seconds with CPU_SCORE_BLOCK={block}: {seconds:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty", help="dataset name in params.yaml (its settings resolve the runs)")
    parser.add_argument("--data-dir", type=Path, help="processed dataset folder (default data/processed/<dataset>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up batches per variant")
    parser.add_argument("--flop-batches", type=int, default=3, help="batches whose FLOPs are counted per variant")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--naive", action="store_true", help="every exact speed-up off (the reference path)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train setting for every variant (repeatable), as `mclrec train --set`")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: params num_threads, else torch's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, help="override the training batch size")
    parser.add_argument("--no-eval", action="store_true", help="skip the full-ranking evaluation timing")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timed evaluations (the median is reported)")
    parser.add_argument("--score-blocks", type=int, nargs="+", metavar="SCORES",
                        help="also time the evaluation with these scores per product on the CPU (CPU_SCORE_BLOCK)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--profile", metavar="VARIANT", help="also print a torch.profiler table of this variant")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                        help="also time every variant with these settings (rows '<variant> [KEY=VALUE ...]')")
    parser.add_argument("--also", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="another set of settings to time every variant with (repeatable: one set each; "
                             "rows '<variant> [KEY=VALUE ...]'), round-robin with the others")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--heap-defaults", action="store_true",
                        help="leave glibc's malloc thresholds as they are (mclrec train raises them on the CPU)")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 0 or args.flop_batches < 1 or args.eval_repeats < 1:
        parser.error("--batches, --flop-batches and --eval-repeats must be >= 1, --warmup >= 0")
    args.data_dir = args.data_dir or processed_dir(args.dataset)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the Markdown report and return (and optionally save) all numbers."""
    args = parse_args(argv)
    params = load_params(args.params)
    overrides: dict[str, Any] = dict(NAIVE_PATH) if args.naive else {}
    overrides.update(parse_overrides(args.overrides))
    overrides.setdefault("device", args.device)  # `length_buckets: auto` resolves for the benchmarked device
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfgs = {v: run_config(params, args.dataset, v, overrides) for v in args.variants}
    if args.compare:
        label = " ".join(args.compare)
        extra = {**overrides, **parse_overrides(args.compare)}
        cfgs.update({f"{v} [{label}]": run_config(params, args.dataset, v, extra) for v in args.variants})
    also = {" ".join(entry.split()): parse_overrides(entry.split()) for entry in args.also}
    for set_label, settings in also.items():
        cfgs.update({f"{v} [{set_label}]": run_config(params, args.dataset, v, {**overrides, **settings})
                     for v in args.variants})
    first = next(iter(cfgs.values()))
    device = resolve_device(args.device)
    if device.type == "cpu" and not args.heap_defaults:
        keep_freed_memory()  # as the trainer does
        use_huge_pages()  # as the `mclrec` commands do, before the first tensor
    resolve_vector_math()  # as the trainer does
    if args.threads or first.num_threads:
        torch.set_num_threads(args.threads or first.num_threads)
    data = load_processed(args.data_dir)
    if data.max_len != first.max_len:
        raise SystemExit(f"{args.data_dir}: max_len {data.max_len} differs from params.yaml's {first.max_len}")

    peak = matmul_gflops(device, args.matmul_size)
    uses_bf16 = any(cfg.precision == "bf16" for cfg in cfgs.values())
    bf16_size = affordable_size(device, torch.bfloat16, args.matmul_size) if uses_bf16 else None
    bf16_peak = matmul_gflops(device, bf16_size, dtype=torch.bfloat16) if uses_bf16 else None
    runs = {name: VariantRun(cfg, data, device) for name, cfg in cfgs.items()}
    for run in runs.values():
        for _ in range(args.warmup):
            run.step()
    times: dict[str, list[float]] = {name: [] for name in runs}
    round_rates = []  # the matmul rate in every round, under the load the round's steps saw
    for _ in range(args.batches):
        for name, run in runs.items():
            times[name].append(run.step())
        round_rates.append(matmul_gflops(device, args.matmul_size, repeats=1))
    peak = max(peak, matmul_gflops(device, args.matmul_size))
    if uses_bf16:
        bf16_peak = max(bf16_peak, matmul_gflops(device, bf16_size, dtype=torch.bfloat16))
    in_run = statistics.median(round_rates)
    rows = []
    for name, run in runs.items():
        by_dtype = run.flops_by_dtype(args.flop_batches)
        batch_s, flops = statistics.median(times[name]), sum(by_dtype.values())
        bf16_flops = by_dtype.get(torch.bfloat16, 0.0)
        per_epoch = run.feed.batches_per_epoch
        # bf16 rows: the time the products would take at the two rates (bfloat16 ones at the bf16 rate, the rest at
        # fp32's), the floor that a share of it can be measured against
        mixed_floor_s = bf16_flops / (bf16_peak * 1e9) + (flops - bf16_flops) / (peak * 1e9) if bf16_flops else None
        rows.append({"variant": name, "batch_s": batch_s, "batches_per_epoch": per_epoch,
                     "epoch_s": batch_s * per_epoch,
                     "gflop_per_batch": flops / 1e9, "gflops": flops / batch_s / 1e9,
                     "share_of_peak": flops / batch_s / 1e9 / peak,
                     "floor_epoch_s": (mixed_floor_s or flops / (peak * 1e9)) * per_epoch,
                     "share_of_in_run_rate": flops / batch_s / 1e9 / in_run, "precision": run.cfg.precision,
                     "gflop_bf16_per_batch": bf16_flops / 1e9,
                     "share_of_bf16_peak": mixed_floor_s / batch_s if mixed_floor_s else None,
                     "length_buckets": list(run.cfg.length_buckets), "batch_views": run.cfg.batch_views,
                     "packed_tokens": run.cfg.packed_tokens, "gpu_peak_mib": run.peak_memory_mib()})
    rec_times: dict[tuple, dict[str, float]] = {}  # L_rec alone, once per shape and loss kernel the variants use
    for row, run in zip(rows, runs.values()):
        if run.cfg.loss == "ce":
            key = (run.cfg.batch_size, run.cfg.hidden_size, run.cfg.fused_losses)
            if key not in rec_times:
                rec_times[key] = bench_rec_loss(run.cfg, data.n_items, device)
            row.update(split_rec_loss(row, run.cfg, rec_times[key], peak))
    rec = next(iter(rec_times.values()), None)  # the default settings' (the first variant's), for the report
    evaluation = None if args.no_eval else bench_eval(runs.get("sasrec") or next(iter(runs.values())), data,
                                                      args.eval_repeats, args.score_blocks)
    by_name = {r["variant"]: r for r in rows}
    summary: dict[str, Any] = {"peak_rss_mib": peak_rss_mib()}
    if "sasrec" in by_name and "mclrec" in by_name:
        summary["mclrec_sasrec_epoch_ratio"] = by_name["mclrec"]["epoch_s"] / by_name["sasrec"]["epoch_s"]
        summary["mclrec_sasrec_flop_ratio"] = by_name["mclrec"]["gflop_per_batch"] / by_name["sasrec"]["gflop_per_batch"]
    if args.compare:
        summary["speedup"] = {v: by_name[v]["epoch_s"] / by_name[f"{v} [{label}]"]["epoch_s"] for v in args.variants}
    if also:
        summary["speedup_also"] = {set_label: {v: by_name[v]["epoch_s"] / by_name[f"{v} [{set_label}]"]["epoch_s"]
                                               for v in args.variants} for set_label in also}
    header = {**machine(device), "fp32_matmul_gflops": round(peak, 1),
              "fp32_matmul_gflops_in_run": f"{in_run:.1f} (median of one product per round; "
                                           f"{min(round_rates):.1f}-{max(round_rates):.1f})",
              **({"bf16_matmul_gflops": round(bf16_peak, 1), "bf16_matmul_size": bf16_size} if uses_bf16 else {}),
              "dataset": args.dataset,
              "batch_size": first.batch_size, "path": "naive (speed-ups off)" if args.naive else "params.yaml",
              "batches_timed": args.batches, "peak_rss_mib": round(summary["peak_rss_mib"])}
    if args.profile in runs:  # after all timings, so the profiler's cost does not leak into them
        print(f"profile of {args.profile} (top ops by self time):\n{profile_variant(runs[args.profile], 3)}\n")
    if rec:
        summary["rec_loss"] = {**rec, "share_of_peak": rec["gflop"] / rec["seconds"] / peak}
    print(render(header, rows, evaluation, summary))
    out = {"header": header, "variants": rows, "eval": evaluation, "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
