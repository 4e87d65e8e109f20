"""Full-ranking evaluation: every user's target ranked against all items, in bounded-memory chunks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mclrec.evaluation.metrics import metrics_from_ranks, target_ranks
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode
from mclrec.data.instances import Instances


@torch.no_grad()
def rank_all(encoder: SASRecEncoder, instances: Instances, batch_size: int, length_buckets: Sequence[int] = ()) -> Tensor:
    """Rank of each row's target among items 1..N (0 = best), computed chunk by chunk, on the CPU at the end.

    The read-out goes through fast_encoding.encode (exactly encoder(seq, lengths)); `length_buckets` as in training.
    """
    was_training = encoder.training
    encoder.eval()
    ranks = []
    for index in torch.arange(len(instances), device=instances.seq.device).split(batch_size):
        seq, lengths, targets = instances.rows(index)
        scores = encoder.full_scores(encode(encoder, seq, lengths, length_buckets))
        ranks.append(target_ranks(scores, targets))
    encoder.train(was_training)
    return torch.cat(ranks).cpu()


def evaluate(encoder: SASRecEncoder, instances: Instances, batch_size: int, ks: list[int],
             length_buckets: Sequence[int] = ()) -> dict[str, float]:
    """HR/NDCG/MRR at each k over all rows of `instances`."""
    return metrics_from_ranks(rank_all(encoder, instances, batch_size, length_buckets), tuple(ks))
