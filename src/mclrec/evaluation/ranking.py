"""Full-ranking evaluation: every user's target ranked against all items, in bounded-memory chunks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mclrec.evaluation.metrics import metrics_from_ranks, target_ranks
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode
from mclrec.data.instances import Instances


SCORE_BUDGET = 2**27  # scores held at once (512 MiB of float32): bounds memory for catalogs of 10^6 items
# Scores per product on the CPU (8 MiB of float32, below glibc's largest mmap threshold, so the kept heap serves it):
# a Beauty chunk of 2,048 users is scored 173 users at a time instead of as one 99 MB block that is mapped, faulted
# in and compared from memory (docs/performance.md, "Full-ranking evaluation").
CPU_SCORE_BLOCK = 2**21


def rows_per_chunk(batch_size: int, n_items: int, budget: int = SCORE_BUDGET) -> int:
    """Users scored at once: `batch_size`, fewer when their [rows, n_items] scores would exceed `budget` values."""
    return max(1, min(batch_size, budget // max(n_items, 1)))


@torch.no_grad()
def rank_all(encoder: SASRecEncoder, instances: Instances, batch_size: int, length_buckets: Sequence[int] = (),
             score_budget: int = SCORE_BUDGET) -> Tensor:
    """Rank of each row's target among items 1..N (0 = best), computed chunk by chunk, on the CPU at the end.

    The read-out goes through fast_encoding.encode (exactly encoder(seq, lengths)); `length_buckets` as in training.
    Chunks hold at most `batch_size` users and `score_budget` scores, so memory stays bounded for any catalog; on
    the CPU each chunk's read-outs are scored CPU_SCORE_BLOCK scores at a time. Each row's rank is computed from its
    own scores only, so neither split changes it.
    """
    was_training = encoder.training
    encoder.eval()
    ranks = []
    rows = rows_per_chunk(batch_size, encoder.n_items, score_budget)
    block = rows_per_chunk(rows, encoder.n_items, CPU_SCORE_BLOCK) if instances.seq.device.type == "cpu" else rows
    for index in torch.arange(len(instances), device=instances.seq.device).split(rows):
        seq, lengths, targets = instances.rows(index)
        h = encode(encoder, seq, lengths, length_buckets)
        ranks += [target_ranks(encoder.full_scores(h_block), targets_block, overwrite=True)
                  for h_block, targets_block in zip(h.split(block), targets.split(block))]
    encoder.train(was_training)
    return torch.cat(ranks).cpu()


def evaluate(encoder: SASRecEncoder, instances: Instances, batch_size: int, ks: list[int],
             length_buckets: Sequence[int] = ()) -> dict[str, float]:
    """HR/NDCG/MRR at each k over all rows of `instances`."""
    return metrics_from_ranks(rank_all(encoder, instances, batch_size, length_buckets), tuple(ks))
