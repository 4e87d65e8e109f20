"""Exact speed paths for the encoder's read-out h_n: the same numbers as SASRecEncoder.forward, less work.

- The final block computes queries, attention output and feed-forward for the read-out position only (keys
  and values still cover every position): the states at other positions of the last block are never read.
- `length_buckets` (e.g. (8, 16, 32)) encode a batch in groups of rows by length, each group padded only to its
  own longest row, and put the rows back in order. With right padding and causal attention a row's result does
  not depend on how far it is padded, so the outputs are those of one fully padded call. With dropout the masks
  are drawn per group, so training follows the same law with other draws. Without buckets nothing here reads a
  device value on the host, so a CUDA step (length_buckets: auto is [] there) never waits for the GPU.

tests/test_models_encoder.py checks both against SASRecEncoder.forward; tests/test_optimised_paths.py checks
whole training runs against the fully padded path.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mclrec.models.encoder import SASRecEncoder, attention_mask


def encode(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor, length_buckets: Sequence[int] = ()) -> Tensor:
    """h_n of each row of right-padded `item_seq` [B, L], as encoder(item_seq, lengths), [B, H]."""
    buckets = tuple(sorted(length_buckets))
    if not buckets or item_seq.shape[1] <= buckets[0]:
        return encode_last(encoder, item_seq, lengths)
    limits = torch.tensor(buckets, device=lengths.device)
    bucket = torch.bucketize(lengths, limits)  # bucket k holds lengths in (limits[k-1], limits[k]]
    order = torch.argsort(bucket, stable=True)
    n_buckets = len(buckets) + 1
    counts = torch.bincount(bucket, minlength=n_buckets)
    widths = torch.zeros(n_buckets, dtype=lengths.dtype, device=lengths.device).scatter_reduce(0, bucket, lengths, "amax")
    # the groups' sizes and widths shape the slices, so they must reach the host: one read (a sync on CUDA, which
    # is why `length_buckets: auto` is off there)
    counts, widths = torch.stack([counts, widths]).tolist()
    pieces = [encode_last(encoder, item_seq[rows, :width], lengths[rows])
              for rows, width in zip(order.split(counts), widths) if rows.numel()]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(pieces)[inverse]


def encode_last(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor) -> Tensor:
    """h_n with the final block computed for the read-out position only, [B, H]."""
    x = encoder.embed(item_seq)
    mask = attention_mask(item_seq, x.dtype)
    blocks = encoder.trm_encoder.layer
    for block in blocks[:-1]:
        x = block(x, mask)
    rows = torch.arange(x.shape[0], device=x.device)
    last = lengths - 1
    x_last = x[rows, last].unsqueeze(1)
    mask_last = mask[rows, :, last].unsqueeze(2)
    return blocks[-1](x, mask_last, x_last).squeeze(1)
