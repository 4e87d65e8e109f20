"""Fault injection: SIGKILL a tiny training at random instants, resume it each time, compare with an uninterrupted run.

Usage: python benchmarks/fault_injection.py [--kills 10] [--seed 0] [--variant mclrec] [--epochs 3] [--users 400]
                                            [--threads 1] [--workdir DIR]

An uninterrupted `mclrec train` + `mclrec evaluate` on a generated dataset is the reference; its wall time and the
per-epoch seconds of its log give a timeline (startup, then each epoch's training and validation). `--kills` points
are drawn uniformly (seeded) over the training time and sorted; for each, `mclrec train --resume` is started and
SIGKILLed when the run should reach that point (startup + the point - the training time up to the checkpoint it
resumed from), or at a uniform instant of the startup when its checkpoint is already past the point. A last
`--resume` finishes the run; the final log.jsonl (epoch, losses, validation metrics) and the results JSON metrics
must equal the reference's. Exit status 0 when they do, 1 otherwise. The phase column is exact when a temp file or a
newer checkpoint shows where the kill landed, else estimated from the reference timeline ("est.").
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from mclrec.data.preprocess import preprocess
from mclrec.data.synth import generate_synthetic
from mclrec.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("last.pt", "last.prev.pt")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="number of SIGKILLs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill instants (default 0)")
    parser.add_argument("--variant", default="mclrec", help="variant from params.yaml (default mclrec)")
    parser.add_argument("--epochs", type=int, default=3, help="max_epochs of the training (default 3)")
    parser.add_argument("--users", type=int, default=400, help="users of the generated dataset (default 400)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each training (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for data and runs (default: a temp folder)")
    return parser.parse_args(argv)


def make_data(workdir: Path, users: int) -> tuple[Path, Path]:
    """A tiny processed synthetic dataset (max_len 20) and a params.yaml for it."""
    raw = workdir / "raw.txt"
    generate_synthetic(raw, seed=3, n_users=users, n_items=150, n_clusters=6, mean_length=9, min_length=5,
                       stay_probability=0.8)
    preprocess(raw, "seqtxt", 5, 5, 20, workdir / "processed")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["synthetic"]["preprocess"]["max_len"] = 20
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return workdir / "processed", workdir / "params.yaml"


def train_cmd(args: argparse.Namespace, data: Path, params: Path, out: Path, *extra: str) -> list[str]:
    """The `mclrec train` command line of every attempt."""
    return [sys.executable, "-m", "mclrec", "train", "-d", "synthetic", "-m", args.variant, "--params", str(params),
            "--data-dir", str(data), "--out", str(out), "--device", "cpu", "--max-epochs", str(args.epochs),
            "--no-progress", "--set", "batch_size=128", "--set", f"num_threads={args.threads}", *extra]


def evaluate(data: Path, params: Path, run_dir: Path, output: Path) -> dict[str, Any]:
    """Evaluate run_dir/best.pt with `mclrec evaluate`; the results JSON's metrics."""
    cmd = [sys.executable, "-m", "mclrec", "evaluate", "-d", "synthetic", "--params", str(params), "--data-dir",
           str(data), "--checkpoint", str(run_dir / "best.pt"), "--output", str(output), "--device", "cpu"]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(output.read_text())["metrics"]


def log_records(run_dir: Path) -> list[dict[str, Any]]:
    """log.jsonl, every field."""
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def reproducible(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields of a log that must not depend on interruptions (timings dropped)."""
    return [{k: r[k] for k in ("epoch", "loss", "valid")} for r in records]


def checkpoint_epoch(run_dir: Path) -> int:
    """Epoch of the newest loadable checkpoint (last.pt, else last.prev.pt); 0 when none."""
    for name in CHECKPOINTS:
        try:
            return int(load_checkpoint(run_dir / name)["epoch"])
        except CheckpointError:
            continue
    return 0


def timeline(startup: float, records: list[dict[str, Any]], done: int) -> list[tuple[float, str]]:
    """(end offset in s, phase) of an attempt resuming after `done` epochs, from the reference's timings."""
    phases, t = [(startup, "startup")], startup
    for r in records[done:]:
        t += r["epoch_seconds"]
        phases.append((t, f"epoch {r['epoch']} train"))
        t += r["eval_seconds"]
        phases.append((t, f"epoch {r['epoch']} valid+save"))
    return phases


def describe(phases: list[tuple[float, str]], instant: float, done: int, after: int, epochs: int,
             temps: set[str]) -> str:
    """Where the kill landed: exact if a temp file or a newer checkpoint shows it, else estimated from the timeline."""
    if temps:
        return f"writing {', '.join(sorted(temps))}"
    if after > done:
        return f"epoch {after + 1}" if after < epochs else "after the last epoch"
    first = phases[:3]  # the checkpoint did not advance: startup or the first epoch of this attempt
    return next((name for end, name in first if instant < end), first[-1][1]) + " (est.)"


def temp_files(run_dir: Path) -> set[str]:
    """The files whose atomic write left a temp file (.<name>.<random>.tmp) in a run folder."""
    return {p.name[1:].rsplit(".", 2)[0] for p in run_dir.glob(".*.tmp")} if run_dir.is_dir() else set()


def kill_once(cmd: list[str], run_dir: Path, instant: float) -> tuple[bool, str, set[str]]:
    """Start an attempt, SIGKILL it `instant` s later; (killed?, its stderr, temp files it left)."""
    before = temp_files(run_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=instant)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    return killed, proc.stderr.read(), temp_files(run_dir) - before


def main(argv: Optional[list[str]] = None) -> int:
    """Run the reference, the kills and the final resume; print the table and the verdict."""
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mclrec-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data, params = make_data(workdir, args.users)
    straight, killed_dir = workdir / "straight", workdir / "killed"

    t0 = time.monotonic()
    subprocess.run(train_cmd(args, data, params, straight), check=True, capture_output=True)
    wall = time.monotonic() - t0
    records = log_records(straight)
    startup = max(wall - sum(r["epoch_seconds"] + r["eval_seconds"] for r in records), 0.0)
    print(f"reference: {len(records)} epochs in {wall:.1f} s (startup + shutdown ~{startup:.1f} s); "
          f"workdir {workdir}")

    rng = random.Random(args.seed)
    durations = [r["epoch_seconds"] + r["eval_seconds"] for r in records]
    points = sorted(rng.uniform(0.0, sum(durations)) for _ in range(args.kills))
    cmd = train_cmd(args, data, params, killed_dir, "--resume")
    print(f"{'kill':>4}  {'instant s':>9}  {'resumed from':>12}  {'phase when killed':<28}  "
          f"{'checkpoint after':>16}  notes")
    for kill, point in enumerate(points, start=1):
        done = checkpoint_epoch(killed_dir)
        phases = timeline(startup, records, done)
        ahead = point - sum(durations[:done])
        instant = startup + ahead if ahead > 0 else rng.uniform(0.0, startup)
        killed, stderr, temps = kill_once(cmd, killed_dir, instant)
        after = checkpoint_epoch(killed_dir)
        phase = describe(phases, instant, done, after, args.epochs, temps) if killed else "finished before the kill"
        notes = "started from last.prev.pt (last.pt missing/unreadable)" if "warning:" in stderr else ""
        print(f"{kill:>4}  {instant:>9.2f}  {'epoch ' + str(done):>12}  {phase:<28}  "
              f"{'epoch ' + str(after):>16}  {notes}")

    final = subprocess.run(cmd, capture_output=True, text=True)
    if final.returncode != 0:
        print(f"final resume failed:\n{final.stderr}")
        return 1
    same_log = reproducible(log_records(killed_dir)) == reproducible(records)
    same_results = evaluate(data, params, killed_dir, workdir / "killed.json") == evaluate(
        data, params, straight, workdir / "straight.json")
    print(f"final log equals the uninterrupted run: {same_log}; results metrics equal: {same_results}"
          + (" (the final resume started from last.prev.pt)" if "warning:" in final.stderr else ""))
    return 0 if same_log and same_results else 1


if __name__ == "__main__":
    sys.exit(main())
