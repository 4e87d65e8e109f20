"""What keeping freed memory in the process, and huge pages (mclrec/cpu_heap.py), save per training step.

Usage: python benchmarks/bench_heap.py --dataset beauty [--variants sasrec mclrec] [--rounds 3] [--steps 30]

glibc's thresholds are set once per process and cannot be put back to their dynamic defaults, and PyTorch reads
THP_MEM_ALLOC_ENABLE once, so the arms cannot share a process as bench_train.py's --compare rows do. Each round
runs one child process per variant and arm (glibc defaults; heap kept; heap kept and tensors of 2 MiB and more on
transparent huge pages, as `mclrec train` runs), one after the other; a child warms up 3 steps of the real
train_step, then times `--steps` more. Per arm the table gives the median over rounds of: the median step's wall
time, minor page faults per step, the kernel (system) CPU time per step and the peak RSS. The faults and the
system time are the direct measure of the work saved; the wall time on a shared or virtual machine moves between
processes by more than that (this project's 2-core VM: +-15% for the same settings), hence the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import VariantRun, cpu_flags  # noqa: E402

from mclrec.config import load_params, run_config  # noqa: E402
from mclrec.cpu_heap import (HUGE_PAGES, THP_MODE, USER_SETTINGS, heap_state,  # noqa: E402
                             huge_pages_offered, huge_pages_state, keep_freed_memory)
from mclrec.data.processed import load_processed  # noqa: E402
from mclrec.environment import cpu_model  # noqa: E402
from mclrec.paths import processed_dir  # noqa: E402

ARMS = ("glibc defaults", "kept", "kept, huge pages")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process, one arm: time `steps` training steps of one variant; JSON numbers on stdout."""
    if args.arm != "glibc defaults":
        keep_freed_memory()
    params = load_params(args.params)
    cfg = run_config(params, args.dataset, args.variant, {"device": "cpu"}).on_device("cpu")
    if args.threads or cfg.num_threads:
        torch.set_num_threads(args.threads or cfg.num_threads)
    run = VariantRun(cfg, load_processed(args.data_dir or processed_dir(args.dataset)), torch.device("cpu"))
    for _ in range(3):
        run.step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [run.step() for _ in range(args.steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": args.variant, "arm": args.arm, "heap": heap_state(), "huge_pages": huge_pages_state(),
            "peak_rss_mib": after.ru_maxrss / 1024, "step_ms": 1e3 * statistics.median(times),
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
            "system_ms_per_step": 1e3 * (after.ru_stime - before.ru_stime) / args.steps,
            "threads": torch.get_num_threads()}


def _thp_mode() -> str:
    """The kernel's transparent huge page mode, e.g. "always [madvise] never", or "n/a"."""
    try:
        return THP_MODE.read_text().strip()
    except OSError:
        return "n/a"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=["sasrec", "mclrec"])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), metavar="ARM",
                        help=f"which of {', '.join(map(repr, ARMS))} to run (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default: params num_threads, else torch's)")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the rounds of child processes, print the Markdown table and return all numbers."""
    args = parse_args(argv)
    if args.arm:
        print(json.dumps(child(args)))
        return {}
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}  # the arms set the heap, not the caller
    if "kept, huge pages" in args.arms and not huge_pages_offered():
        raise SystemExit(f"this kernel offers no transparent huge pages ({THP_MODE}): leave out the arm "
                         "'kept, huge pages'")
    common = ["--dataset", args.dataset, "--params", str(args.params), "--steps", str(args.steps)]
    common += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    common += ["--threads", str(args.threads)] if args.threads else []
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for variant in args.variants:
            for arm in args.arms:
                arm_env = {**env, HUGE_PAGES: "1" if arm == "kept, huge pages" else "0"}
                out = subprocess.run([sys.executable, __file__, *common, "--variant", variant, "--arm", arm],
                                     env=arm_env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{variant} ({arm}) failed:\n{out.stderr[-2000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if any(r["arm"] != "glibc defaults" and r["heap"] != "kept" for r in runs):
        raise SystemExit(f"the heap could not be kept on this machine ({runs[-1]['heap']}): nothing to compare")
    rows = []
    for variant in args.variants:
        for arm in args.arms:
            mine = [r for r in runs if r["variant"] == variant and r["arm"] == arm]
            rows.append({"variant": variant, "arm": arm, "rounds": [round(r["step_ms"], 1) for r in mine],
                         **{key: statistics.median(r[key] for r in mine)
                            for key in ("step_ms", "faults_per_step", "system_ms_per_step", "peak_rss_mib")}})
    header = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "threads": runs[0]["threads"], "transparent_huge_pages": _thp_mode(), "dataset": args.dataset,
              "rounds": args.rounds, "steps": args.steps,
              "when": time.strftime("%Y-%m-%d %H:%M")}
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| variant | heap | median step ms | each round | page faults/step | system CPU ms/step "
              "| peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['arm']} | {r['step_ms']:.1f} | {', '.join(map(str, r['rounds']))} "
              f"| {r['faults_per_step']:.0f} | {r['system_ms_per_step']:.1f} | {r['peak_rss_mib']:.0f} |" for r in rows]
    print("\n".join(lines))
    result = {"header": header, "rows": rows, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
