"""Benchmark `preprocess` on a large synthetic amazon-ratings-csv file (default 10M interactions).

Usage: python benchmarks/bench_preprocess.py [--n 10000000] [--engine memory duckdb] [--memory-limit 2GB]
                                             [--workdir DIR] [--seed 0]
The raw file is generated vectorised, in chunks of 5M rows; preprocess runs in a child process per engine so its
peak RSS is its own. With several engines the outputs must be byte-identical (sha256 of every file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mclrec.data.preprocess import ENGINES, SPLIT_FILES, preprocess

START_TS, END_TS = 946_684_800, 1_404_172_800  # 2000-01-01 .. 2014-07-01
USER_SKEW, ITEM_SKEW = 0.9, 1.0
CHUNK_ROWS = 5_000_000  # generation memory stays a few hundred MB whatever n
OUTPUTS = [f"{name}.parquet" for name in SPLIT_FILES] + ["stats.json"]
STAGES = ("read", "hash", "kcore", "split", "write")


def generate_ratings_csv(path: Path, n: int, seed: int) -> None:
    """Write `n` rows `user,item,rating,timestamp` with power-law users (~n/10) and items (~n/20)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 10, 1), max(n // 20, 1)
    user_names, item_names = rng.permutation(n_users), rng.permutation(n_items)
    user_cdf, item_cdf = _power_law_cdf(n_users, USER_SKEW), _power_law_cdf(n_items, ITEM_SKEW)
    schema = pa.schema([("user", pa.string()), ("item", pa.string()), ("rating", pa.string()),
                        ("timestamp", pa.int64())])
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with pacsv.CSVWriter(path, schema, write_options=options) as writer:
        for start in range(0, n, CHUNK_ROWS):
            size = min(CHUNK_ROWS, n - start)
            table = pa.table(
                {
                    "user": _ids("A", 13, user_names[_draw(rng, user_cdf, size)]),
                    "item": _ids("B", 9, item_names[_draw(rng, item_cdf, size)]),
                    "rating": pa.array(["1.0", "2.0", "3.0", "4.0", "5.0"]).take(pa.array(rng.integers(0, 5, size))),
                    "timestamp": pa.array(rng.integers(START_TS, END_TS, size)),
                },
                schema=schema,
            )
            writer.write_table(table)


def _power_law_cdf(n_values: int, skew: float) -> np.ndarray:
    """Cumulative weights 1/(rank+1)^skew of the values 0..n_values-1."""
    return np.cumsum(1.0 / np.arange(1, n_values + 1) ** skew)


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """`size` draws from 0..len(cdf)-1 with the probabilities the cumulative weights `cdf` give."""
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), len(cdf) - 1)


def _ids(prefix: str, width: int, numbers: np.ndarray) -> pa.Array:
    """Amazon-looking string ids: prefix + zero-padded number."""
    digits = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


class StageTimings(dict):
    """preprocess's `timings` sink that also notes the process's peak RSS (MiB) when each stage ends."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_rss_mb: dict[str, float] = {}

    def __setitem__(self, stage: str, seconds: float) -> None:
        super().__setitem__(stage, seconds)
        self.peak_rss_mb[stage] = _peak_rss_mb()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(raw: Path, out: Path, engine: str, memory_limit: str | None) -> None:
    """Run preprocess once and print its timings, stats and peak RSS as JSON (child process side)."""
    timings = StageTimings()
    start = time.perf_counter()
    stats = preprocess(raw, "amazon-ratings-csv", 5, 5, 50, out, timings=timings, engine=engine,
                       memory_limit=memory_limit)
    total = time.perf_counter() - start
    print(json.dumps({"timings": timings, "total": total, "stats": stats, "peak_rss_mb": _peak_rss_mb(),
                      "stage_peak_rss_mb": timings.peak_rss_mb}))


def output_digests(out: Path) -> dict[str, str]:
    """sha256 of every output file."""
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in OUTPUTS}


def report(n: int, raw: Path, gen_s: float | None, result: dict, engine: str, memory_limit: str | None) -> str:
    """The benchmark table (Markdown)."""
    t, s = result["timings"], result["stats"]
    raw_sizes = f"{s['n_raw_interactions']:,} / {s['n_raw_users']:,} / {s['n_raw_items']:,}"
    sizes = f"{s['n_users']:,} / {s['n_items']:,} / {s['n_interactions']:,}"
    rows = [
        ("raw interactions / users / items", raw_sizes),
        ("raw file size", f"{raw.stat().st_size / 2**20:,.0f} MiB"),
        ("after 5-core: users / items / interactions", sizes),
        ("generate raw file (not part of preprocess)", "reused" if gen_s is None else f"{gen_s:.1f} s"),
        ("read (parse + string id encoding)", f"{t['read']:.2f} s"),
        ("sha256 of raw file", f"{t['hash']:.2f} s"),
        ("k-core", f"{t['kcore']:.2f} s"),
        ("split + write (order, remap, split; Parquet + stats)", f"{t['split'] + t['write']:.2f} s"),
        ("total preprocess", f"{result['total']:.2f} s"),
        ("peak RSS (preprocess process)", f"{result['peak_rss_mb']:,.0f} MiB"),
        ("peak RSS by the end of read / hash / k-core / split / write",
         " / ".join(f"{result['stage_peak_rss_mb'][stage]:,.0f}" for stage in STAGES) + " MiB"),
        ("machine", _machine()),
    ]
    limit = f", memory_limit {memory_limit or 'default'}" if engine == "duckdb" else ""
    title = (f"preprocess benchmark, N = {n:,} (amazon-ratings-csv, user_k = item_k = 5, max_len 50), "
             f"engine {engine}{limit}")
    lines = [title, "", "| quantity | value |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows])


def _machine() -> str:
    """CPU count, memory and library versions."""
    import duckdb

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}, duckdb {duckdb.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    """Generate the raw file (unless present in --workdir), run preprocess in a child, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="number of raw interactions")
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=["auto"],
                        help="one or more preprocess engines, each run in its own child (default auto)")
    parser.add_argument("--memory-limit", help="the duckdb engine's memory limit (default: preprocess's)")
    parser.add_argument("--workdir", type=Path, help="keep the raw file and output here (default: temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child, args.engine[0], args.memory_limit)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        raw = workdir / f"ratings_{args.n}_{args.seed}.csv"
        gen_s = None
        if not raw.exists():
            start = time.perf_counter()
            generate_ratings_csv(raw, args.n, args.seed)
            gen_s = time.perf_counter() - start
        digests = {}
        for engine in args.engine:
            out = workdir / f"processed-{engine}"
            limit = ["--memory-limit", args.memory_limit] if args.memory_limit else []
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(raw), str(out), "--engine", engine, *limit],
                check=True, capture_output=True, text=True,
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            print(report(args.n, raw, gen_s, result, engine, args.memory_limit), end="\n\n", flush=True)
            digests[engine] = output_digests(out)
        if len(digests) > 1:
            same = all(d == digests[args.engine[0]] for d in digests.values())
            print(f"outputs of {', '.join(digests)}: {'byte-identical' if same else 'DIFFERENT'} (sha256 of "
                  f"{', '.join(OUTPUTS)})")
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
