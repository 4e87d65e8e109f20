"""Benchmark `preprocess` on a large synthetic amazon-ratings-csv file (default 10M interactions).

Usage: python benchmarks/bench_preprocess.py [--n 10000000] [--workdir DIR] [--seed 0]
The raw file is generated vectorised; preprocess runs in a child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
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

from mclrec.data.preprocess import preprocess

START_TS, END_TS = 946_684_800, 1_404_172_800  # 2000-01-01 .. 2014-07-01
USER_SKEW, ITEM_SKEW = 0.9, 1.0


def generate_ratings_csv(path: Path, n: int, seed: int) -> None:
    """Write `n` rows `user,item,rating,timestamp` with power-law users (~n/10) and items (~n/20)."""
    rng = np.random.default_rng(seed)
    users = _power_law(rng, n // 10, n, USER_SKEW)
    items = _power_law(rng, n // 20, n, ITEM_SKEW)
    ratings = pa.array(["1.0", "2.0", "3.0", "4.0", "5.0"]).take(pa.array(rng.integers(0, 5, n)))
    table = pa.table(
        {
            "user": _ids("A", 13, rng.permutation(n // 10)[users]),
            "item": _ids("B", 9, rng.permutation(n // 20)[items]),
            "rating": ratings,
            "timestamp": pa.array(rng.integers(START_TS, END_TS, n)),
        }
    )
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))


def _power_law(rng: np.random.Generator, n_values: int, size: int, skew: float) -> np.ndarray:
    """`size` draws from 0..n_values-1 with probability proportional to 1/(rank+1)^skew."""
    cdf = np.cumsum(1.0 / np.arange(1, n_values + 1) ** skew)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), n_values - 1)


def _ids(prefix: str, width: int, numbers: np.ndarray) -> pa.Array:
    """Amazon-looking string ids: prefix + zero-padded number."""
    digits = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def run_child(raw: Path, out: Path) -> None:
    """Run preprocess once and print its timings, stats and peak RSS as JSON (child process side)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    stats = preprocess(raw, "amazon-ratings-csv", 5, 5, 50, out, timings=timings)
    total = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"timings": timings, "total": total, "stats": stats, "peak_rss_mb": rss_mb}))


def report(n: int, raw: Path, gen_s: float | None, result: dict) -> str:
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
        ("machine", _machine()),
    ]
    lines = [f"preprocess benchmark, N = {n:,} (amazon-ratings-csv, user_k = item_k = 5, max_len 50)", "",
             "| quantity | value |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in rows])


def _machine() -> str:
    """CPU count and library versions."""
    return (
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    """Generate the raw file (unless present in --workdir), run preprocess in a child, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="number of raw interactions")
    parser.add_argument("--workdir", type=Path, help="keep the raw file and output here (default: temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
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
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(raw), str(workdir / "processed")],
            check=True, capture_output=True, text=True,
        )
        print(report(args.n, raw, gen_s, json.loads(child.stdout.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()
