"""The real pipeline at scale: generate, preprocess, train and evaluate a synthetic 10^6-user, 10^6-item dataset.

Usage: python benchmarks/bench_scale.py [--users 1000000] [--items 1000000] [--batches 100] [--eval-users 2048]
                                        [--variants mclrec sasrec:20] [--threads 1] [--workdir DIR] [--keep]
                                        [--json FILE]

Every stage is the project's own code, each in a child process so that its peak RSS (ru_maxrss) is its own:

1. generate: `mclrec synth`'s generator (data.synth.generate_synthetic) with the synthetic dataset's settings from
   params.yaml, n_users and n_items from --users/--items and n_clusters scaled with n_items (same items per cluster).
2. preprocess: data.preprocess.preprocess with the dataset's preprocess settings and engine auto (the engine it
   took is reported: duckdb for raw files of 1 GiB or more).
3. train, per variant: load_processed, then TrainingFeed / build_parts / Optimisers / train_step through
   bench_train.VariantRun (the dataset's params.yaml settings, CPU): --warmup untimed batches, then --batches timed
   ones (NAME:N in --variants gives a variant N batches). Seconds per 100 batches are wall time, batch building
   included; s/epoch = the mean batch x batches per epoch.
4. evaluate: load_processed, the test split's rows, --eval-users of them (a seeded random sample) ranked against
   every item by ranking.evaluate (rank_all + metrics) with the run's eval_batch_size and length_buckets, after one
   untimed chunk. The encoder is freshly built: ranking costs the same for any weights. Extrapolated to all users.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASET = "synthetic"
RAW_NAME, PROCESSED_NAME, SETTINGS_NAME = "synthetic.txt", "processed", "settings.json"
EVAL_SEED = 0
PROGRESS_EVERY = 10  # training batches between progress lines on stderr
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def load_sibling(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (benchmarks/ is not a package; also works when this file is imported by path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def generator_settings(params: dict, users: int, items: int) -> dict[str, Any]:
    """The synthetic dataset's generator settings at `users` x `items`, keeping its items per cluster."""
    from mclrec.config import dataset_spec

    base = dict(dataset_spec(params, DATASET)["source"]["generator"])
    per_cluster = base["n_items"] / base["n_clusters"]
    return {**base, "n_users": users, "n_items": items, "n_clusters": max(1, min(items, round(items / per_cluster)))}


# ---- child side: one stage per process -------------------------------------------------------------------------

def stage_generate(job: dict) -> dict[str, Any]:
    """Write the raw seqtxt file with generate_synthetic."""
    from mclrec.data.synth import generate_synthetic

    start = time.perf_counter()
    info = generate_synthetic(Path(job["raw"]), **job["generator"])
    return {**info, "seconds": time.perf_counter() - start, "raw_bytes": Path(job["raw"]).stat().st_size}


def stage_preprocess(job: dict) -> dict[str, Any]:
    """Run preprocess (engine auto) on the raw file; report the engine it chose and per-stage seconds."""
    from mclrec.data.preprocess import choose_engine, preprocess

    pre, raw, timings = job["preprocess"], Path(job["raw"]), {}
    start = time.perf_counter()
    stats = preprocess(raw, "seqtxt", pre["user_k"], pre["item_k"], pre["max_len"], Path(job["processed"]),
                       {"dataset": DATASET}, timings=timings, engine="auto")
    sizes = {key: stats[key] for key in ("n_users", "n_items", "n_interactions")}
    return {"seconds": time.perf_counter() - start, "engine": choose_engine("auto", raw), "timings": timings, **sizes}


def run_cfg(job: dict, variant: str):
    """The variant's settings for the synthetic dataset on the CPU, as `mclrec train` resolves them."""
    from mclrec.config import load_params, run_config

    return run_config(load_params(Path(job["params"])), DATASET, variant, {"device": "cpu"})


def stage_train(job: dict) -> dict[str, Any]:
    """Set up one variant as training does and time its batches (wall, batch building included)."""
    import torch

    from mclrec.data.processed import load_processed

    bench_train = load_sibling("bench_train")
    variant, cfg, lap, rss = job["variant"], run_cfg(job, job["variant"]), _Lap(), {}
    data = load_processed(Path(job["processed"]))
    rss["load"], load_s = peak_rss_mib(), lap()
    run = bench_train.VariantRun(cfg, data, torch.device("cpu"))
    rss["setup"], setup_s = peak_rss_mib(), lap()
    for _ in range(job["warmup"]):
        run.step()
    walls, steps = [], []
    for done in range(1, job["batches"] + 1):
        start = time.perf_counter()
        steps.append(run.step())
        walls.append(time.perf_counter() - start)
        if done % PROGRESS_EVERY == 0:  # a full-scale stage runs for many minutes
            print(f"{variant}: {done}/{job['batches']} batches, {sum(walls):.0f} s", file=sys.stderr, flush=True)
    mean = statistics.fmean(walls)
    return {"variant": variant, "batch_size": cfg.batch_size, "instances": len(run.feed), "load_s": load_s,
            "setup_s": setup_s, "warmup": job["warmup"], "batches": job["batches"], "wall_s": sum(walls),
            "per_100_s": 100 * mean, "batch_s_mean": mean, "step_s_median": statistics.median(steps),
            "batches_per_epoch": run.feed.batches_per_epoch, "epoch_s": mean * run.feed.batches_per_epoch,
            "rss_after_load_mib": rss["load"], "rss_after_setup_mib": rss["setup"], "peak_rss_mib": peak_rss_mib()}


def stage_evaluate(job: dict) -> dict[str, Any]:
    """Rank a seeded sample of test users against every item through ranking.evaluate."""
    import torch

    from mclrec.config import load_params
    from mclrec.data.instances import Instances, eval_instances
    from mclrec.data.processed import load_processed
    from mclrec.evaluation.ranking import evaluate, rows_per_chunk
    from mclrec.models.parts import build_parts

    cfg, lap = run_cfg(job, job["variant"]), _Lap()
    torch.manual_seed(cfg.seed)
    data = load_processed(Path(job["processed"]))
    test = eval_instances(data, "test", torch.device("cpu"))
    encoder = build_parts(cfg, data.n_items).encoder
    load_s = lap()
    n = min(job["eval_users"], len(test))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(EVAL_SEED))[:n].sort().values
    sample = Instances(*test.rows(pick, trim=False))
    chunk = rows_per_chunk(cfg.eval_batch_size, data.n_items)
    ks = load_params(Path(job["params"]))["evaluate"]["ks"]
    evaluate(encoder, Instances(*sample.rows(torch.arange(min(chunk, n)))), cfg.eval_batch_size, ks,
             cfg.length_buckets)  # warm-up
    lap()
    evaluate(encoder, sample, cfg.eval_batch_size, ks, cfg.length_buckets)
    seconds = lap()
    return {"variant": job["variant"], "users": n, "items": data.n_items, "all_users": len(test), "load_s": load_s,
            "seconds": seconds, "users_per_s": n / seconds, "all_users_s": len(test) * seconds / n,
            "users_per_chunk": chunk, "peak_rss_mib": peak_rss_mib()}


class _Lap:
    """Seconds since the previous call (or creation)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


STAGES = {"generate": stage_generate, "preprocess": stage_preprocess, "train": stage_train,
          "evaluate": stage_evaluate}


def run_child(job: dict) -> None:
    """Child side: set the thread counts, run the stage, print its result and peak RSS as the last stdout line."""
    if job.get("threads"):
        import pyarrow

        pyarrow.set_cpu_count(job["threads"])
        if job["stage"] in ("train", "evaluate"):  # generate and preprocess do not import torch (nor its RSS)
            import torch

            torch.set_num_threads(job["threads"])
    result = STAGES[job["stage"]](job)
    print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))


# ---- parent side --------------------------------------------------------------------------------------------------

def spawn(job: dict) -> dict[str, Any]:
    """Run one stage in a fresh interpreter and return its JSON result (its stderr passes through)."""
    env = dict(os.environ)
    if job.get("threads"):  # OpenMP/BLAS pools of numpy and torch follow the same limit
        env.update({name: str(job["threads"]) for name in THREAD_VARIABLES})
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], check=True, stdout=subprocess.PIPE,
                           text=True, env=env)
    return json.loads(child.stdout.strip().splitlines()[-1])


def prepare_data(workdir: Path, base: dict, settings: dict) -> tuple[dict, dict]:
    """Generate and preprocess into `workdir`, or reuse what a kept run with the same settings left there."""
    marker = workdir / SETTINGS_NAME
    if marker.exists() and json.loads(marker.read_text()).get("settings") == settings:
        saved = json.loads(marker.read_text())
        return {**saved["generate"], "reused": True}, {**saved["preprocess"], "reused": True}
    marker.unlink(missing_ok=True)
    generated = spawn({**base, "stage": "generate"})
    preprocessed = spawn({**base, "stage": "preprocess"})
    marker.write_text(json.dumps({"settings": settings, "generate": generated, "preprocess": preprocessed}))
    return generated, preprocessed


def parse_variants(specs: list[str], batches: int) -> list[tuple[str, int]]:
    """NAME or NAME:BATCHES per variant."""
    out = []
    for spec in specs:
        name, _, count = spec.partition(":")
        out.append((name, int(count) if count else batches))
    return out


def machine_header(threads: int | None) -> dict[str, Any]:
    """bench_train's machine description (CPU model, flags, versions, load now) plus RAM, with the stages' threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    header = load_sibling("bench_train").machine(torch.device("cpu"))
    header["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return header


def render(out: dict) -> str:
    """The Markdown report: machine and sizes, one row per stage."""
    g, p, ev = out["generate"], out["preprocess"], out["evaluate"]
    lines = [f"- {key}: {value}" for key, value in out["header"].items()]
    lines += [f"- generator: {json.dumps(out['settings']['generator'], sort_keys=True)}",
              f"- raw: {g['n_users']:,} users, {g['n_items']:,} items, {g['n_interactions']:,} interactions, "
              f"{g['raw_bytes'] / 2**20:,.0f} MiB",
              f"- after preprocess (engine {p['engine']}): {p['n_users']:,} users, {p['n_items']:,} items, "
              f"{p['n_interactions']:,} interactions", "",
              "| stage | batches / users | seconds | s per 100 batches | extrapolated | peak RSS (MiB) |",
              "|---|---|---|---|---|---|"]
    reused = " (reused)" if g.get("reused") else ""
    lines.append(f"| generate{reused} | | {g['seconds']:.1f} | | | {g['peak_rss_mib']:,.0f} |")
    steps = ", ".join(f"{k} {v:.1f}" for k, v in p["timings"].items())
    lines.append(f"| preprocess ({p['engine']}){reused} | | {p['seconds']:.1f} ({steps}) | | "
                 f"| {p['peak_rss_mib']:,.0f} |")
    for t in out["train"]:
        lines.append(f"| train {t['variant']} (setup {t['load_s'] + t['setup_s']:.0f} s, {t['instances']:,} "
                     f"instances) | {t['batches']} (+{t['warmup']} warm-up) | {t['wall_s']:.1f} | {t['per_100_s']:.1f} "
                     f"| {t['epoch_s'] / 3600:.1f} h/epoch ({t['batches_per_epoch']:,} batches) "
                     f"| {t['peak_rss_mib']:,.0f} |")
    if ev:
        lines.append(f"| evaluate (full ranking, {ev['items']:,} items) | {ev['users']:,} users | {ev['seconds']:.1f} "
                     f"({ev['users_per_s']:.0f} users/s) | | {ev['all_users_s'] / 3600:.1f} h for all "
                     f"{ev['all_users']:,} users | {ev['peak_rss_mib']:,.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=100, help="timed training batches per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training batches per variant")
    parser.add_argument("--eval-users", type=int, default=2048, help="test users ranked (0: no evaluation)")
    parser.add_argument("--variants", nargs="+", default=["mclrec", "sasrec"], metavar="NAME[:BATCHES]")
    parser.add_argument("--threads", type=int, help="torch and pyarrow threads of every stage")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--workdir", type=Path, help="data folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated data in --workdir (a rerun with the same sizes reuses it)")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.users, args.items, args.batches) < 1 or args.warmup < 0 or args.eval_users < 0:
        parser.error("--users, --items and --batches must be >= 1, --warmup and --eval-users >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run every stage in its own child, print the Markdown report and return (and optionally save) the numbers."""
    args = parse_args(argv)
    if args.child:
        run_child(json.loads(args.child))
        return None
    from mclrec.config import dataset_spec, load_params

    params = load_params(args.params)
    created = args.workdir is None or not args.workdir.exists()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {"generator": generator_settings(params, args.users, args.items),
                "preprocess": dict(dataset_spec(params, DATASET)["preprocess"])}
    header = machine_header(args.threads)  # before the stages: the load average they start under
    base = {**settings, "params": str(args.params.resolve()), "raw": str(workdir / RAW_NAME),
            "processed": str(workdir / PROCESSED_NAME), "threads": args.threads}
    try:
        generated, preprocessed = prepare_data(workdir, base, settings)
        variants = parse_variants(args.variants, args.batches)
        train = [spawn({**base, "stage": "train", "variant": name, "batches": count, "warmup": args.warmup})
                 for name, count in variants]
        evaluation = (spawn({**base, "stage": "evaluate", "variant": variants[0][0], "eval_users": args.eval_users})
                      if args.eval_users else None)
    finally:
        if not args.keep:
            _remove_data(workdir, created)
    header["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out = {"header": header, "settings": {**settings, "users": args.users, "items": args.items,
           "warmup": args.warmup, "eval_users": args.eval_users, "threads": args.threads},
           "generate": generated, "preprocess": preprocessed, "train": train, "evaluate": evaluation}
    print(render(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _remove_data(workdir: Path, created: bool) -> None:
    """Delete what this benchmark wrote, and the folder itself when it made it."""
    if created:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    (workdir / RAW_NAME).unlink(missing_ok=True)
    (workdir / SETTINGS_NAME).unlink(missing_ok=True)
    shutil.rmtree(workdir / PROCESSED_NAME, ignore_errors=True)


if __name__ == "__main__":
    main()
