"""Time `mclrec recommend`'s work: top-k for every user of a processed dataset, from a checkpoint.

Usage: python benchmarks/bench_recommend.py --dataset beauty --published published-mclrec [--k 10] [--threads N]
       python benchmarks/bench_recommend.py --dataset beauty --checkpoint models/beauty/mclrec/best.pt

Loading (data, ids, checkpoint) and the recommendation itself are timed separately; the second is what grows with
the number of users and items. Prints the machine (CPU model, threads) with the numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mclrec import config, paths
from mclrec.data.processed import load_processed
from mclrec.device import resolve_device
from mclrec.environment import cpu_model
from mclrec.evaluation.evaluate import load_encoder
from mclrec.recommend import DEFAULT_BUCKETS, Catalogue, recommend_users


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--checkpoint-format", default="mclrec")
    parser.add_argument("--published", help="a checkpoint declared in params.yaml (already downloaded)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exclude-seen", action="store_true")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint, fmt = args.checkpoint, args.checkpoint_format
    if args.published:
        spec = config.checkpoint_spec(config.load_params(args.params), args.published)
        checkpoint, fmt = paths.published_checkpoint(args.published, spec["filename"]), spec["format"]
    folder = args.data_dir or paths.processed_dir(args.dataset)
    device = resolve_device(args.device)
    start = time.perf_counter()
    data, catalogue = load_processed(folder), Catalogue.load(folder)
    encoder, meta = load_encoder(checkpoint, fmt, data, device)
    loading = time.perf_counter() - start
    users = np.arange(1, data.n_users + 1)
    recommend_users(encoder, data, catalogue, users[:256], args.k, device)  # warm-up
    start = time.perf_counter()
    frame = recommend_users(encoder, data, catalogue, users, args.k, device, args.exclude_seen,
                            meta["config"].get("length_buckets") or DEFAULT_BUCKETS)
    seconds = time.perf_counter() - start
    print(f"- machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")
    print(f"- {args.dataset}: {data.n_users} users x {data.n_items} items, top {args.k}"
          f"{' (seen excluded)' if args.exclude_seen else ''}")
    print(f"| step | seconds |\n|---|---|\n| load data, ids, checkpoint | {loading:.2f} |\n"
          f"| top-{args.k} for all users | {seconds:.2f} |")
    return {"load_seconds": loading, "seconds": seconds, "rows": len(frame)}


if __name__ == "__main__":
    main()
