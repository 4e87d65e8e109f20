"""Benchmark training and full-ranking evaluation speed per variant on a processed dataset.

Usage: python benchmarks/bench_train.py --dataset beauty [--batches 20] [--device auto] [--naive] [--threads N]
                                         [--json FILE] [--profile VARIANT]

For each variant (sasrec, cl4srec, duorec, mclrec, mclrec-paper, mclrec-j) the run config is resolved from
params.yaml exactly as `mclrec train` resolves it; the real modules, optimisers, batch construction
(`Instances.rows`, DuoRec partners, `make_batch`) and `train_step` are timed on random batches of the real prefix
instances: 2 untimed warm-up batches per variant, then the median over `--batches` timed batches, taken
round-robin over the variants (so that other load on a shared machine hits all variants alike). Seconds per epoch
are that median times the number of batches per epoch. Evaluation times `rank_all` over every test user once (after an
untimed warm-up chunk). `--naive` sets length_buckets=[] and batch_views=false (the unoptimised reference path) for
every variant; `--set KEY=VALUE` overrides any other train setting.

FLOP estimate (see `step_flops` and benchmarks/README.md): matrix-multiply work only, on the tokens the encoder
actually processes (each length bucket padded to its own longest row; one group padded to the batch's longest row
on the naive path). Per layer and processed token: QKV + output projections 8 H^2, feed-forward 4 H I, scores and
context 4 W H for a group of width W. Plus the full-softmax logits 2 B H (N + 1). Backward = 2x forward, so a
SASRec step = 3x forward. Embedding lookups, LayerNorm, dropout, GELU, softmax and Adam are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from mclrec.config import NAIVE_PATH, load_params, parse_overrides, resolve_run
from mclrec.data.processed import ProcessedData, load_processed
from mclrec.evaluation.ranking import rank_all
from mclrec.paths import processed_dir
from mclrec.training.batches import Instances, SameTargetIndex, batch_indices, eval_instances, training_instances
from mclrec.training.objectives import Batch, contrasts_views, build_parts, make_batch, uses_augmenters
from mclrec.training.trainer import Optimisers, resolve_device, train_step

VARIANTS = ("sasrec", "cl4srec", "duorec", "mclrec", "mclrec-paper", "mclrec-j")
RATIO_TARGET = 3.0
EVAL_TARGET_S = 5.0


# --------------------------------------------------------------------------------------------------- timing helpers

def sync(device: torch.device) -> None:
    """Wait for queued device work so that host timers measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """float32 size x size @ size x size after one warm-up: the fastest of `repeats` timed products, in GFLOP/s
    (the fastest, because it is meant as the machine's peak; the median is kept too)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device)
    b = torch.randn(size, size, generator=gen, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    flops = 2 * size**3
    return {"size": size, "seconds": min(times), "gflops": flops / min(times) / 1e9,
            "median_gflops": flops / statistics.median(times) / 1e9}


def best_rate(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """The faster of two matmul measurements (start and end of the run), with both rates kept."""
    best = dict(max(first, second, key=lambda m: m["gflops"]))
    best["gflops_start"], best["gflops_end"] = first["gflops"], second["gflops"]
    return best


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# ------------------------------------------------------------------------------------------------- FLOP estimates

def encoder_groups(lengths: torch.Tensor, buckets: tuple[int, ...]) -> list[tuple[int, int]]:
    """(rows, padded width) of each group the encoder runs for one batch, mirroring SASRecEncoder.forward.

    `Instances.rows` trims the batch to its longest row; with buckets the rows are grouped by length
    (bucket k holds lengths in (b[k-1], b[k]]), each group padded to its own longest row.
    """
    lengths = lengths.cpu()
    width = int(lengths.max())
    buckets = tuple(sorted(buckets))
    if not buckets or width <= buckets[0]:
        return [(len(lengths), width)]
    bucket = torch.bucketize(lengths, torch.tensor(buckets))
    groups = []
    for k in range(len(buckets) + 1):
        members = lengths[bucket == k]
        if members.numel():
            groups.append((int(members.numel()), int(members.max())))
    return groups


def encoder_forward_flops(groups: list[tuple[int, int]], hidden: int, inner: int, n_layers: int) -> float:
    """Matmul FLOPs of one encoder forward over the given (rows, width) groups (all positions, all layers)."""
    per_layer = 0.0
    for rows, width in groups:
        tokens = rows * width
        per_layer += tokens * (8 * hidden * hidden + 4 * hidden * inner) + tokens * width * 4 * hidden
    return n_layers * per_layer


def step_flops(cfg: dict, batch: Batch, n_items: int) -> dict[str, float]:
    """Estimated matmul FLOPs of one `train_step` of this variant on `batch`, and the original rows' token counts.

    An encoder update = 3 x (its encoder forwards + full-softmax logits 2 B H (N+1) + 2 (2B)^2 H per contrastive
    similarity matrix); MCLRec's augmenter step = 1 x the two views' encoder forwards (no autograd) + 3 x its
    similarity matrices; meta schedule = 2 encoder updates + 1 augmenter step, paper = 1 + 1, joint = 1 update.
    The augmenter MLPs, InfoNCE's cross-entropy and Adam are not counted.
    """
    buckets, hidden = tuple(cfg["length_buckets"]), cfg["hidden_size"]

    def forward(*lengths: torch.Tensor) -> float:
        """Encoder forward work for these row groups: one call on all of them with batch_views, else one each."""
        calls = [torch.cat(lengths)] if cfg["batch_views"] else lengths
        return sum(encoder_forward_flops(encoder_groups(c, buckets), hidden, cfg["inner_size"], cfg["n_layers"])
                   for c in calls)

    rows = len(batch.lengths)
    softmax = 2 * rows * hidden * (n_items + 1)
    similarity = 2 * (2 * rows) ** 2 * hidden
    inputs, n_sims, views, aug_sims = [batch.lengths], 0, 0.0, 0
    if cfg["model"] == "duorec" and cfg["lambda_sem"] > 0:
        inputs += [batch.lengths, batch.partner[1]]
        n_sims += 1
    if contrasts_views(cfg):
        views = forward(batch.view1[1], batch.view2[1])
        inputs += [batch.view1[1], batch.view2[1]]
        n_sims += 1 if cfg["lambda_cl1"] > 0 else 0
    if uses_augmenters(cfg):
        aug_sims = 3 + (3 if cfg["reg"] else 0)
        n_sims += aug_sims
    passes = forward(*inputs)
    update = 3 * (passes + softmax + n_sims * similarity)
    total = update
    if uses_augmenters(cfg) and cfg["schedule"] != "joint":
        total = (2 if cfg["schedule"] == "meta" else 1) * update + views + 3 * aug_sims * similarity
    groups = encoder_groups(batch.lengths, buckets)
    return {"flops": float(total), "tokens": float(sum(r * w for r, w in groups)),
            "real_tokens": float(batch.lengths.sum())}


def eval_flops(cfg: dict, instances: Instances, batch_size: int, n_items: int) -> float:
    """Estimated matmul FLOPs of rank_all: encoder forward per chunk + the (users x H) @ (H x N) scores."""
    total = 0.0
    lengths = instances.lengths.cpu()
    for chunk in lengths.split(batch_size):
        groups = encoder_groups(chunk, tuple(cfg["length_buckets"]))
        total += encoder_forward_flops(groups, cfg["hidden_size"], cfg["inner_size"], cfg["n_layers"])
        total += 2 * len(chunk) * cfg["hidden_size"] * n_items
    return total


# ------------------------------------------------------------------------------------------------------- the runs

def encoder_passes(cfg: dict) -> str:
    """Encoder forwards per batch: with autograd, and without (MCLRec's augmenter step)."""
    grad = 1 + (2 if contrasts_views(cfg) else 0)
    grad += 2 if cfg["model"] == "duorec" and cfg["lambda_sem"] > 0 else 0
    no_grad = 0
    if uses_augmenters(cfg) and cfg["schedule"] != "joint":
        no_grad = 2
        if cfg["schedule"] == "meta":
            grad *= 2
    return f"{grad}+{no_grad}ng" if no_grad else str(grad)


def updates_per_batch(cfg: dict) -> int:
    """Optimiser steps per batch."""
    if uses_augmenters(cfg) and cfg["schedule"] != "joint":
        return 3 if cfg["schedule"] == "meta" else 2
    return 1


def cycle_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Random full batches of instance ids, as the trainer draws them, reshuffling when a permutation runs out."""
    while True:
        for index in batch_indices(n, batch_size, generator, device):
            if len(index) == batch_size or n < batch_size:
                yield index


class VariantRun:
    """One variant's modules, optimisers and batch stream, set up as `train` sets them up."""

    def __init__(self, cfg: dict, data: ProcessedData, train: Instances, device: torch.device):
        self.cfg, self.train, self.device = cfg, train, device
        torch.manual_seed(cfg["seed"])
        self.generator = torch.Generator(device=device).manual_seed(cfg["seed"])
        self.parts = build_parts(cfg, data.n_items).to(device)
        self.optimisers = Optimisers(cfg, self.parts)
        self.parts.train(True)
        self.same_target = SameTargetIndex.build(train.targets) if cfg["model"] == "duorec" else None
        self.batches = cycle_batches(len(train), cfg["batch_size"], self.generator, device)

    def step(self) -> tuple[float, float, Batch]:
        """One batch: (seconds building it, seconds in train_step, the batch)."""
        sync(self.device)
        t0 = time.perf_counter()
        index = next(self.batches)
        seq, lengths, targets = self.train.rows(index)
        partner = None
        if self.same_target is not None:
            partner = self.train.rows(self.same_target.partners(index, targets, self.generator))[:2]
        batch = make_batch(self.cfg, seq, lengths, targets, self.generator, partner)
        sync(self.device)
        t1 = time.perf_counter()
        train_step(self.cfg, self.parts, self.optimisers, batch, self.generator)
        sync(self.device)
        return t1 - t0, time.perf_counter() - t1, batch


def setup_variant(cfg: dict, data: ProcessedData, train: Instances, device: torch.device,
                  warmup: int) -> tuple[VariantRun, dict[str, float]]:
    """Build a variant's run and warm it up (alone); memory high-water marks after its warm-up."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = VariantRun(cfg, data, train, device)
    for _ in range(warmup):
        run.step()
    memory = {"peak_rss_mib_so_far": peak_rss_mib()}
    if device.type == "cuda":
        memory["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return run, memory


def time_variants(runs: list[VariantRun], batches: int) -> list[list[tuple[float, float, Batch]]]:
    """`batches` timed batches per run, round-robin (one batch of each variant in turn), so that load from other
    processes, thermal or frequency drift hits every variant alike and the ratios stay fair."""
    samples: list[list[tuple[float, float, Batch]]] = [[] for _ in runs]
    for _ in range(batches):
        for k, run in enumerate(runs):
            samples[k].append(run.step())
    return samples


def summarise_variant(run: VariantRun, samples: list[tuple[float, float, Batch]], memory: dict[str, float],
                      n_items: int) -> dict[str, Any]:
    """Medians, the per-epoch extrapolation and the SASRec-step FLOP estimate of one variant's timed batches."""
    cfg = run.cfg
    prep = [p for p, _, _ in samples]
    step = [s for _, s, _ in samples]
    total = [p + s for p, s, _ in samples]
    est = [step_flops(cfg, batch, n_items) for _, _, batch in samples]
    n_batches = math.ceil(len(run.train) / cfg["batch_size"])
    per_batch = statistics.median(total)
    return {
        "variant": cfg["variant"], "model": cfg["model"], "schedule": cfg["schedule"],
        "length_buckets": list(cfg["length_buckets"]), "batch_views": cfg["batch_views"],
        "updates_per_batch": updates_per_batch(cfg),
        "encoder_passes": encoder_passes(cfg), "prep_s": statistics.median(prep), "step_s": statistics.median(step),
        "batch_s": per_batch, "batch_s_min": min(total), "batch_s_max": max(total), "batch_s_all": total,
        "batches_per_epoch": n_batches, "epoch_s": per_batch * n_batches,
        "encoder_tokens_per_batch": statistics.mean(e["tokens"] for e in est),
        "real_tokens_per_batch": statistics.mean(e["real_tokens"] for e in est),
        "flops_per_batch": statistics.mean(e["flops"] for e in est),
        **memory,
    }


def bench_eval(run: VariantRun, data: ProcessedData, device: torch.device) -> dict[str, Any]:
    """rank_all over every test user once, after an untimed warm-up on the first chunk."""
    cfg = run.cfg
    test = eval_instances(data, "test", device)
    warm = torch.arange(min(len(test), cfg["eval_batch_size"]), device=device)
    rank_all(run.parts.encoder, Instances(*test.rows(warm)), cfg["eval_batch_size"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    ranks = rank_all(run.parts.encoder, test, cfg["eval_batch_size"])
    sync(device)
    seconds = time.perf_counter() - t0
    result = {"users": len(test), "items": data.n_items, "eval_batch_size": cfg["eval_batch_size"],
              "seconds": seconds, "flops": eval_flops(cfg, test, cfg["eval_batch_size"], data.n_items),
              "ranks_checksum": int(ranks.sum()), "peak_rss_mib_so_far": peak_rss_mib()}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def profile_variant(run: VariantRun, steps: int, top: int) -> str:
    """torch.profiler table of the `steps` next batches of a (warm) run, top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.step()
    key = "self_cuda_time_total" if run.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


# ------------------------------------------------------------------------------------------------------ reporting

def machine_header(device: torch.device, data: ProcessedData, train: Instances, naive: bool, args) -> dict[str, Any]:
    """What the numbers depend on: device, versions, threads, dataset sizes, path."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    lengths = train.lengths.cpu().float()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "device": f"{device} ({name})",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "python": platform.python_version(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": data.stats.get("n_interactions"),
        "train_instances": len(train),
        "mean_instance_length": float(lengths.mean()),
        "full_length_share": float((lengths >= data.max_len).float().mean()),
        "max_len": data.max_len,
        "path": ("naive (length_buckets=[], batch_views=false for every variant)" if naive
                 else "optimised (length_buckets and batch_views from params.yaml)"),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "batches_timed": args.batches,
        "warmup_batches": args.warmup,
    }


def render(header: dict, matmul: dict, rows: list[dict], evaluation: dict | None, summary: dict) -> str:
    """The Markdown report; the last two lines are the ratio and eval lines."""
    h = header
    lines = [
        f"# mclrec training benchmark: {h['dataset']}",
        "",
        f"- device: {h['device']}; torch {h['torch']}; torch threads {h['torch_threads']} "
        f"(interop {h['torch_interop_threads']}); CPUs {h['cpu_count']} (usable {h['cpu_affinity']}); "
        f"python {h['python']}; float32 matmul precision '{h['float32_matmul_precision']}'",
        f"- dataset: {h['n_users']:,} users, {h['n_items']:,} items, {h['n_interactions']:,} interactions, "
        f"{h['train_instances']:,} training instances (mean length {h['mean_instance_length']:.1f}, "
        f"{100 * h['full_length_share']:.1f}% at max_len {h['max_len']}); data {h['data_dir']}",
        f"- encoder path: {h['path']}",
        f"- timing: batch size {h['batch_size']}, median of {h['batches_timed']} batches per variant, "
        f"variants interleaved round-robin, after {h['warmup_batches']} warm-up batches each; "
        f"s/epoch = median s/batch x batches per epoch; load average (1 min) {_load(h.get('load_average_start'))} "
        f"at the start, {_load(summary.get('load_average_end'))} at the end",
        f"- float32 matmul {matmul['size']}x{matmul['size']}: {matmul['seconds'] * 1e3:.1f} ms = "
        f"{matmul['gflops']:,.1f} GFLOP/s (fastest of 10, at the start {matmul['gflops_start']:,.1f} and at the end "
        f"{matmul['gflops_end']:,.1f}); used as the peak for the % columns",
        "",
        "| variant | updates/batch | encoder passes | batch build s | train_step s | s/batch (min-max) | batches/epoch "
        "| s/epoch | x sasrec | est. GFLOP/batch (x sasrec) | % of matmul rate | peak mem MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sasrec = next((r for r in rows if r["variant"] == "sasrec"), None)
    for r in rows:
        ratio = f"{r['epoch_s'] / sasrec['epoch_s']:.2f}" if sasrec else "-"
        flop_ratio = f" ({r['flops_per_batch'] / sasrec['flops_per_batch']:.2f})" if sasrec else ""
        share = r["flops_per_batch"] / r["batch_s"] / 1e9 / matmul["gflops"]
        mem = r.get("cuda_peak_mib", r["peak_rss_mib_so_far"])
        lines.append(
            f"| {r['variant']} | {r['updates_per_batch']} | {r['encoder_passes']} | {r['prep_s']:.4f} | "
            f"{r['step_s']:.4f} | {r['batch_s']:.4f} ({r['batch_s_min']:.4f}-{r['batch_s_max']:.4f}) | "
            f"{r['batches_per_epoch']} | {r['epoch_s']:.1f} | {ratio} | {r['flops_per_batch'] / 1e9:.2f}{flop_ratio} | "
            f"{100 * share:.1f}% | {mem:,.0f} |"
        )
    lines.append("")
    on_cuda = bool(rows) and "cuda_peak_mib" in rows[0]
    mem_note = "CUDA max_memory_allocated per variant (over its warm-up batches)" if on_cuda \
        else "process ru_maxrss high-water mark after each variant's warm-up (cumulative over the rows above it)"
    lines.append(f"peak mem: {mem_note}; process peak RSS at the end {summary['peak_rss_mib']:,.0f} MiB")
    if "sasrec_achieved_gflops" in summary:
        lines.append(
            f"sasrec step: ~{summary['sasrec_gflop_per_batch']:.2f} GFLOP estimated "
            f"({summary['sasrec_tokens_per_batch']:,.0f} encoder tokens/batch, of them "
            f"{summary['sasrec_real_tokens_per_batch']:,.0f} real), {summary['sasrec_achieved_gflops']:,.1f} GFLOP/s "
            f"achieved = {100 * summary['sasrec_achieved_over_peak']:.1f}% of the matmul rate; "
            f"epoch floor at the matmul rate {summary['sasrec_epoch_floor_s']:.1f} s"
        )
    if evaluation:
        lines.append(
            f"eval: {evaluation['users']:,} test users x {evaluation['items']:,} items, chunks of "
            f"{evaluation['eval_batch_size']}, ~{evaluation['flops'] / 1e9:.1f} GFLOP = "
            f"{evaluation['flops'] / 1e9 / evaluation['seconds']:,.1f} GFLOP/s; peak mem "
            f"{evaluation.get('cuda_peak_mib', evaluation['peak_rss_mib_so_far']):,.0f} MiB"
        )
    if "mclrec_sasrec_flop_ratio" in summary:
        lines.append(f"mclrec/sasrec estimated FLOP ratio: {summary['mclrec_sasrec_flop_ratio']:.2f} "
                     "(the time ratio if both steps ran at the same FLOP/s)")
    ratio = summary.get("mclrec_sasrec_epoch_ratio")
    lines.append(f"mclrec/sasrec epoch ratio: {ratio:.2f} (target <= {RATIO_TARGET:g})" if ratio is not None
                 else f"mclrec/sasrec epoch ratio: n/a (target <= {RATIO_TARGET:g})")
    eval_s = evaluation["seconds"] if evaluation else None
    lines.append(f"eval seconds: {eval_s:.2f} (target < {EVAL_TARGET_S:g} s on CPU)" if eval_s is not None
                 else f"eval seconds: n/a (target < {EVAL_TARGET_S:g} s on CPU)")
    return "\n".join(lines)


def _load(values: list[float] | None) -> str:
    """The 1-minute load average, or n/a."""
    return f"{values[0]:.2f}" if values else "n/a"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty",
                        help="dataset name in params.yaml (its settings resolve the runs)")
    parser.add_argument("--data-dir", type=Path, help="processed dataset folder (default data/processed/<dataset>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up batches per variant")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--naive", action="store_true",
                        help="length_buckets=[] and batch_views=false for every variant (the unoptimised reference)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train setting for every variant (repeatable), as `mclrec train --set`")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: params num_threads, else torch's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, help="override the training batch size (default: params.yaml's)")
    parser.add_argument("--no-eval", action="store_true", help="skip the full-ranking evaluation timing")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--profile", metavar="VARIANT",
                        help="also profile this variant's step (printed before the table)")
    parser.add_argument("--profile-batches", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 0:
        parser.error("--batches must be >= 1 and --warmup >= 0")
    args.data_dir = args.data_dir or processed_dir(args.dataset)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the Markdown report and return (and optionally save) all numbers."""
    args = parse_args(argv)
    params = load_params(args.params)
    overrides: dict[str, Any] = dict(NAIVE_PATH) if args.naive else {}
    overrides.update(parse_overrides(args.overrides))
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfgs = [resolve_run(params, args.dataset, v, overrides) for v in args.variants]
    device = resolve_device(args.device)
    threads = args.threads or cfgs[0]["num_threads"]
    if threads:
        torch.set_num_threads(threads)

    data = load_processed(args.data_dir)
    if data.max_len != cfgs[0]["max_len"]:
        raise SystemExit(f"{args.data_dir}: max_len {data.max_len} differs from params.yaml's {cfgs[0]['max_len']}")
    train = training_instances(data, device)
    header = machine_header(device, data, train, args.naive, args)
    header["batch_size"] = cfgs[0]["batch_size"]
    matmul = matmul_rate(device, args.matmul_size)

    runs, memory = {}, {}
    for cfg in cfgs:
        runs[cfg["variant"]], memory[cfg["variant"]] = setup_variant(cfg, data, train, device, args.warmup)
    samples = time_variants(list(runs.values()), args.batches)
    rows = [summarise_variant(run, got, memory[name], data.n_items) for (name, run), got in zip(runs.items(), samples)]
    for r in rows:
        print(f"[{r['variant']}] {r['batch_s']:.4f} s/batch, {r['epoch_s']:.1f} s/epoch", file=sys.stderr, flush=True)
    profile_text = None
    evaluation = None
    if not args.no_eval:
        eval_run = runs.get("sasrec") or next(iter(runs.values()))
        evaluation = bench_eval(eval_run, data, device)
    rss_end, load_end = peak_rss_mib(), (list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    matmul = best_rate(matmul, matmul_rate(device, args.matmul_size))
    if args.profile in runs:  # after all timings, so the profiler's memory and time do not leak into them
        profile_text = profile_variant(runs[args.profile], args.profile_batches, 20)

    by_name = {r["variant"]: r for r in rows}
    summary: dict[str, Any] = {"peak_rss_mib": rss_end, "load_average_end": load_end}
    if "sasrec" in by_name:
        s = by_name["sasrec"]
        achieved = s["flops_per_batch"] / s["batch_s"] / 1e9
        summary.update(
            sasrec_gflop_per_batch=s["flops_per_batch"] / 1e9,
            sasrec_tokens_per_batch=s["encoder_tokens_per_batch"],
            sasrec_real_tokens_per_batch=s["real_tokens_per_batch"],
            sasrec_achieved_gflops=achieved,
            sasrec_achieved_over_peak=achieved / matmul["gflops"],
            sasrec_epoch_floor_s=s["flops_per_batch"] * s["batches_per_epoch"] / (matmul["gflops"] * 1e9),
        )
        if "mclrec" in by_name:
            summary["mclrec_sasrec_epoch_ratio"] = by_name["mclrec"]["epoch_s"] / s["epoch_s"]
            summary["mclrec_sasrec_flop_ratio"] = by_name["mclrec"]["flops_per_batch"] / s["flops_per_batch"]
    if evaluation:
        summary["eval_seconds"] = evaluation["seconds"]

    if profile_text:
        print(f"profile of {args.profile}, {args.profile_batches} batches (top ops by self time):\n{profile_text}\n")
    print(render(header, matmul, rows, evaluation, summary))
    out = {"header": header, "matmul": matmul, "variants": rows, "eval": evaluation, "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
