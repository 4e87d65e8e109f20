"""Packed-token encoding of the read-out h_n: every per-token operation runs once, on the batch's real tokens.

With length buckets (fast_encoding.encode) each group of rows is padded to its own longest row and every
operation of the encoder (embedding, LayerNorm, QKV, feed-forward, dropout, residuals) runs once per group. Here
the positions t < length of all rows form one `[tokens, hidden]` tensor and those operations run once on it; only
attention, which mixes positions of one row, is grouped by length: each group's queries, keys and values are
gathered into `[rows, width, hidden]`, scored with RecBole's additive mask (-10000, so a query whose keys are all
masked gets a uniform softmax instead of NaN) and scattered back. As in encode_last, the final block computes
queries, attention and feed-forward for the read-out position only.

With dropout 0 the result is SASRecEncoder.forward's up to float rounding (tests/test_packed_encoding.py); with
dropout every kept/dropped draw has the law of nn.Dropout, on other draws. One corner differs, as it does with
length buckets: a read-out whose every item was masked has no visible key, so its softmax spreads over all slots
it is padded to, and that number of slots is the group's width here, the batch's width in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mclrec.models.encoder import MASK_VALUE, MultiHeadAttention, SASRecEncoder, TransformerLayer


@dataclass(frozen=True)
class Packing:
    """Where each real token of a right-padded batch lives in the packed tensor, and the attention groups."""

    tokens: Tensor  # [T] item id of each real token (row-major: row 0's positions, then row 1's, ...)
    positions: Tensor  # [T] its position in its row
    last: Tensor  # [B] packed index of each row's read-out token (position length - 1)
    groups: list[tuple[Tensor, Tensor, Tensor]]  # per length group: rows [G], gather index [G, W], key mask [G, 1, 1, W]


def pack(item_seq: Tensor, lengths: Tensor, length_buckets: Sequence[int] = ()) -> Packing:
    """The packing of `item_seq` [B, L] (right-padded) with `lengths` [B]; rows grouped by `length_buckets`.

    A group's gather index points padded slots (t >= length) at index T, a zero row appended to the packed
    tensor; those keys are masked like padding, so they never change a real query's result.
    """
    B, L = item_seq.shape
    device = item_seq.device
    steps = torch.arange(L, device=device)
    valid = steps[None, :] < lengths[:, None]
    starts = torch.cumsum(lengths, 0) - lengths
    index = torch.where(valid, starts[:, None] + steps[None, :], lengths.sum())  # [B, L] packed index or T
    buckets = torch.tensor(sorted(length_buckets), device=device, dtype=lengths.dtype)
    bucket = torch.bucketize(lengths, buckets) if len(buckets) else torch.zeros_like(lengths)
    order = torch.argsort(bucket, stable=True)
    counts = torch.bincount(bucket, minlength=len(buckets) + 1).tolist()
    groups = []
    for rows in order.split(counts):
        if rows.numel():
            width = int(lengths[rows].max())
            keys = (item_seq[rows, :width] != 0)[:, None, None, :]  # masked items (id 0) are not keys, as padding
            groups.append((rows, index[rows, :width], keys))
    return Packing(item_seq[valid], steps.expand(B, L)[valid], starts + lengths - 1, groups)


def _grouped_attention(attn: MultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, packing: Packing,
                       query_index: Tensor | None) -> Tensor:
    """Softmax attention within each row: `q` [Tq, H] per query, `k`, `v` [T, H] per token; the context [Tq, H].

    Queries are every real token (`query_index` None) or one per row (the packed indices `query_index` [B]).
    """
    H = k.shape[1]
    heads, size = attn.n_heads, attn.head_size
    k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # row T: the zero slot padded positions point at
    if query_index is None:
        q = F.pad(q, (0, 0, 0, 1))
    context = q.new_zeros(q.shape[0] - (query_index is None), H)
    for rows, gather, keys in packing.groups:
        G, W = gather.shape
        kg = k[gather].view(G, W, heads, size).transpose(1, 2)
        vg = v[gather].view(G, W, heads, size).transpose(1, 2)
        causal = torch.ones(W, W, dtype=torch.bool, device=q.device).tril()
        if query_index is None:
            qg = q[gather].view(G, W, heads, size).transpose(1, 2)
            allowed = causal[None, None] & keys
        else:
            qg = q[rows].view(G, 1, heads, size).transpose(1, 2)
            last = (query_index[rows] - gather[:, 0])  # each row's read-out position
            allowed = causal[last][:, None, None, :] & keys
        scores = qg @ kg.transpose(-1, -2) / math.sqrt(size) + (1.0 - allowed.to(qg.dtype)) * MASK_VALUE
        probs = attn.attn_dropout(torch.softmax(scores, dim=-1))
        out = (probs @ vg).transpose(1, 2).reshape(G, -1, H)
        if query_index is None:
            real = gather < context.shape[0]
            context[gather[real]] = out[real]
        else:
            context[rows] = out[:, 0]
    return context


def _block(layer: TransformerLayer, x: Tensor, packing: Packing, last_only: bool) -> Tensor:
    """One transformer block on packed tokens x [T, H]; for the read-out rows only [B, H] when `last_only`."""
    attn = layer.multi_head_attention
    xq = x[packing.last] if last_only else x
    context = _grouped_attention(attn, attn.query(xq), attn.key(x), attn.value(x), packing,
                                 packing.last if last_only else None)
    h = attn.LayerNorm(attn.out_dropout(attn.dense(context)) + xq)
    return layer.feed_forward(h)


def encode_packed(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor,
                  length_buckets: Sequence[int] = ()) -> Tensor:
    """h_n of each row of right-padded `item_seq` [B, L], as encoder(item_seq, lengths), [B, H]."""
    if item_seq.shape[1] > encoder.max_len:
        raise ValueError(f"sequence length {item_seq.shape[1]} exceeds max_len {encoder.max_len}")
    packing = pack(item_seq, lengths, length_buckets)
    x = encoder.item_embedding(packing.tokens) + encoder.position_embedding(packing.positions)
    x = encoder.dropout(encoder.LayerNorm(x))
    blocks = encoder.trm_encoder.layer
    for block in blocks[:-1]:
        x = _block(block, x, packing, last_only=False)
    return _block(blocks[-1], x, packing, last_only=True)
