"""Seconds per training epoch on the CPU with the cores in one process or split over several (nproc), as users run it.

Usage: python benchmarks/bench_processes.py --dataset beauty [--variants sasrec mclrec] [--epochs 1] [--rounds 1]
                                            [--arm 'nproc=1 num_threads=2' --arm 'nproc=2 num_threads=1']

Each arm is a set of run settings; the default arms are every core in one process, and one process per core with
one thread each (`nproc`: one training, the batch split over the processes, the same law: docs/performance.md).
Every (round, variant, arm) is one real `mclrec train` (subprocess) of `--epochs` epochs into a temporary folder,
validation included; its log.jsonl gives the seconds of each epoch's training and of its validation. Arms alternate
within each round so that other load on a shared machine hits them alike. The table gives, per variant and arm, the
median epoch over all rounds and epochs, each round's, the validation time, and the speed-up over the first arm.
Within one process the training step's many small operations barely use a second thread; split over processes,
each core runs its own share of every operation, at the price of one gradient all-reduce per update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_flags  # noqa: E402

from mclrec.environment import cpu_model  # noqa: E402


def default_arms() -> list[str]:
    """Every core in one process; one single-threaded process per core (on one core the two arms coincide)."""
    cores = len(os.sched_getaffinity(0))
    return [f"nproc=1 num_threads={cores}", f"nproc={cores} num_threads=1"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty", help="dataset name in params.yaml")
    parser.add_argument("--data-dir", type=Path, help="processed dataset folder (default data/processed/<dataset>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=["sasrec", "mclrec"])
    parser.add_argument("--arm", dest="arms", action="append", metavar="'KEY=VALUE ...'",
                        help="run settings of one arm (repeatable; default: %s)" % " / ".join(default_arms()))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per training")
    parser.add_argument("--rounds", type=int, default=1, help="times every (variant, arm) is trained")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every arm (repeatable)")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be >= 1")
    args.arms = args.arms or default_arms()
    for arm in args.arms:
        if not arm.split() or any("=" not in item for item in arm.split()):
            parser.error(f"--arm {arm!r}: expected space-separated KEY=VALUE settings")
    return args


def train_once(args: argparse.Namespace, variant: str, arm: str, out: Path) -> dict[str, Any]:
    """One `mclrec train` of `args.epochs` epochs with the arm's settings; its epochs' seconds from log.jsonl."""
    command = [sys.executable, "-m", "mclrec", "train", "--dataset", args.dataset, "--variant", variant,
               "--params", str(args.params), "--out", str(out), "--no-progress", "--no-resume",
               "--set", f"max_epochs={args.epochs}"]
    command += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    for setting in [*args.overrides, *arm.split()]:
        command += ["--set", setting]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} [{arm}] failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"variant": variant, "arm": arm, "epoch_seconds": [r["epoch_seconds"] for r in records],
            "eval_seconds": [r["eval_seconds"] for r in records], "wall_seconds": time.perf_counter() - started}


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and arm: median epoch and validation seconds over every round and epoch, and the speed-up."""
    rows = []
    for variant in args.variants:
        first = None
        for arm in args.arms:
            mine = [r for r in runs if r["variant"] == variant and r["arm"] == arm]
            epoch = statistics.median(s for r in mine for s in r["epoch_seconds"])
            first = first or epoch
            rows.append({"variant": variant, "arm": arm, "epoch_seconds": epoch,
                         "rounds": [round(statistics.median(r["epoch_seconds"]), 1) for r in mine],
                         "eval_seconds": statistics.median(s for r in mine for s in r["eval_seconds"]),
                         "speed_up": first / epoch})
    return rows


def render(args: argparse.Namespace, header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown table, headed by the machine."""
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| variant | settings | s/epoch (median) | each round | validation s | speed-up over the first |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['arm']} | {r['epoch_seconds']:.1f} | {', '.join(map(str, r['rounds']))} "
              f"| {r['eval_seconds']:.1f} | {r['speed_up']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train every (round, variant, arm), print the table and return all numbers."""
    args = parse_args(argv)
    header = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)),
              "torch": torch.__version__, "dataset": args.dataset, "epochs": args.epochs, "rounds": args.rounds,
              "settings for every arm": " ".join(args.overrides) or "-", "when": time.strftime("%Y-%m-%d %H:%M")}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_processes_") as work:
        for round_ in range(args.rounds):
            for variant in args.variants:
                for number, arm in enumerate(args.arms):
                    runs.append(train_once(args, variant, arm, Path(work) / f"{round_}-{variant}-{number}"))
    rows = summarise(args, runs)
    print(render(args, header, rows))
    result = {"header": header, "rows": rows, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
