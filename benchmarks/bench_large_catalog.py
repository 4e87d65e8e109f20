"""Memory and time of training and full-ranking evaluation at catalog sizes up to 10^6 items (issue: scale out).

Usage: python benchmarks/bench_large_catalog.py [--items 100000 1000000] [--batches 20] [--eval-users 2048]

The model and loss are the project's (SASRecEncoder, fast_encoding.encode, losses.rec_ce_loss, which goes chunk by
chunk over the items above its logits budget; evaluation.ranking.rank_all, which bounds the scores it holds), on
random sequences of Beauty's shape (batch 256, max_len 50, lengths 1..50); the data pipeline is not involved. Per
catalog size: seconds per training batch (median), seconds to rank `--eval-users` users against every item, and
the process's peak RSS after each phase (ru_maxrss only grows, so sizes run in increasing order).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from mclrec.data.instances import Instances
from mclrec.evaluation.ranking import rank_all, rows_per_chunk
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode
from mclrec.models.losses import LOGITS_BUDGET, rec_ce_loss


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_rows(n: int, n_items: int, max_len: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    seq = torch.randint(1, n_items + 1, (n, max_len), generator=g)
    seq[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    return seq, lengths, torch.randint(1, n_items + 1, (n,), generator=g)


def bench(n_items: int, batches: int, eval_users: int, batch_size: int = 256, max_len: int = 50) -> dict:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    encoder = SASRecEncoder(n_items, max_len).train()
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    times = []
    for _ in range(batches + 2):
        seq, lengths, targets = random_rows(batch_size, n_items, max_len, g)
        start = time.perf_counter()
        loss = rec_ce_loss(encode(encoder, seq, lengths, (8, 16, 32)), encoder.item_weights(), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    train_rss = peak_rss_mib()
    seq, lengths, targets = random_rows(eval_users, n_items, max_len, g)
    instances = Instances(seq, lengths, targets)
    start = time.perf_counter()
    rank_all(encoder, instances, 2048, (8, 16, 32))
    eval_s = time.perf_counter() - start
    return {"items": n_items, "batch_s": statistics.median(times[2:]), "chunked_ce": batch_size * (n_items + 1) > LOGITS_BUDGET,
            "train_peak_rss_mib": train_rss, "eval_users": eval_users, "eval_s": eval_s,
            "eval_rows_per_chunk": rows_per_chunk(2048, n_items), "eval_peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--eval-users", type=int, default=2048)
    args = parser.parse_args()
    print(f"- machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| items | s/train batch | CE chunked | peak RSS after training (MiB) | eval users | eval s "
          "| users per eval chunk | peak RSS after eval (MiB) |\n|---|---|---|---|---|---|---|---|")
    for n in sorted(args.items):
        r = bench(n, args.batches, args.eval_users)
        print(f"| {r['items']:,} | {r['batch_s']:.3f} | {r['chunked_ce']} | {r['train_peak_rss_mib']:.0f} "
              f"| {r['eval_users']:,} | {r['eval_s']:.2f} | {r['eval_rows_per_chunk']} | {r['eval_peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
