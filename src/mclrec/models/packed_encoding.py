"""Packed-token encoding of the read-out h_n: every per-token operation runs once, on the batch's real tokens.

With length buckets (fast_encoding.encode) each group of rows is padded to its own longest row and every
operation of the encoder (embedding, LayerNorm, QKV, feed-forward, dropout, residuals) runs once per group. Here
the positions t < length of all rows form one `[tokens, hidden]` tensor and those operations run once on it; only
attention, which mixes positions of one row, is grouped by length. Per block, one product computes queries, keys
and values of every token together; one gather lays them out as the groups' padded slots `[slots, 3 x hidden]`
(padded slots read a zero row); each group is scored with RecBole's additive mask (-10000, so a query whose keys
are all masked gets finite weights instead of NaN), and one gather brings the real slots' outputs back into
token order. As in encode_last, the final block computes queries, attention and feed-forward for the read-out
position only.

With dropout 0 the result is SASRecEncoder.forward's up to float rounding (tests/test_packed_encoding.py); with
dropout every kept/dropped draw has the law of nn.Dropout, on other draws. One corner differs, as it does with
length buckets: a read-out whose every item was masked has no visible key, so its softmax spreads over all slots
it is padded to, and that number of slots is the group's width here, the batch's width in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mclrec.models.encoder import MASK_VALUE, MultiHeadAttention, SASRecEncoder, TransformerLayer, attend


@dataclass(frozen=True)
class Group:
    """Rows of similar length, padded to the longest of them: `size` rows of `width` slots."""

    size: int
    width: int
    mask: Tensor  # [size, 1, width, width] additive attention mask of every query slot (0 allowed, -10000 not)
    last_mask: Tensor  # [size, 1, 1, width] the same for each row's read-out query only


@dataclass(frozen=True)
class Packing:
    """Where each real token of a right-padded batch lives in the packed tensor, and the attention groups.

    The groups' slots, concatenated group after group and row after row, are `slots` in all; `token_of_slot` [slots]
    is the packed index each slot reads (T, a zero row, for padding) and `slot_of_token` [T] the slot each real
    token's result is read from. The groups' rows, concatenated, are the batch's rows in `row_order` [B]; row b's
    read-out is at `row_position[b]` of that order.
    """

    tokens: Tensor  # [T] item id of each real token (row-major: row 0's positions, then row 1's, ...)
    positions: Tensor  # [T] its position in its row
    last: Tensor  # [B] packed index of each row's read-out token (position length - 1)
    groups: list[Group]
    token_of_slot: Tensor
    slot_of_token: Tensor
    row_order: Tensor
    row_position: Tensor

    @property
    def slot_counts(self) -> list[int]:
        """The number of slots of each group."""
        return [group.size * group.width for group in self.groups]


def pack(item_seq: Tensor, lengths: Tensor, length_buckets: Sequence[int] = (), dtype: torch.dtype = torch.float32
         ) -> Packing:
    """The packing of `item_seq` [B, L] (right-padded) with `lengths` [B]; rows grouped by `length_buckets`.

    Masked items (id 0 inside a row, the mask augmentation's padding id) are not keys, exactly as padding.
    """
    B, L = item_seq.shape
    device = item_seq.device
    steps = torch.arange(L, device=device)
    valid = steps[None, :] < lengths[:, None]
    starts = torch.cumsum(lengths, 0) - lengths
    n_tokens = lengths.sum()
    index = torch.where(valid, starts[:, None] + steps[None, :], n_tokens)  # [B, L] packed index or T
    buckets = torch.tensor(sorted(length_buckets), device=device, dtype=lengths.dtype)
    bucket = torch.bucketize(lengths, buckets) if len(buckets) else torch.zeros_like(lengths)
    order = torch.argsort(bucket, stable=True)
    n_groups = len(buckets) + 1
    counts = torch.bincount(bucket, minlength=n_groups)
    widths = torch.zeros(n_groups, dtype=lengths.dtype, device=device).scatter_reduce(0, bucket, lengths, "amax")
    counts, widths = torch.stack([counts, widths]).tolist()  # the groups' shapes: one read of the host
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    groups, token_of_slot, real_slots, offset = [], [], [], 0
    for rows, width in zip(order.split(counts), widths):
        if not rows.numel():
            continue
        gather = index[rows, :width]
        keys = (item_seq[rows, :width] != 0)[:, None, None, :]
        allowed = causal[:width, :width][None, None] & keys
        last_allowed = causal[lengths[rows] - 1, :width][:, None, None, :] & keys
        groups.append(Group(len(rows), width, (1.0 - allowed.to(dtype)) * MASK_VALUE,
                            (1.0 - last_allowed.to(dtype)) * MASK_VALUE))
        token_of_slot.append(gather.reshape(-1))
        real_slots.append(offset + torch.nonzero(valid[rows, :width].reshape(-1)).squeeze(1))
        offset += len(rows) * width
    token_of_slot = torch.cat(token_of_slot)
    real_slots = torch.cat(real_slots)
    slot_of_token = torch.empty_like(real_slots).index_copy_(0, token_of_slot[real_slots], real_slots)
    row_position = torch.empty_like(order).index_copy_(0, order, torch.arange(B, device=device))
    return Packing(item_seq[valid], steps.expand(B, L)[valid], starts + lengths - 1, groups, token_of_slot,
                   slot_of_token, order, row_position)


def _heads(x: Tensor, size: int, width: int, parts: int, attn: MultiHeadAttention) -> tuple[Tensor, ...]:
    """[size * width, parts x hidden] slot rows -> `parts` tensors [size, heads, width, head_size] (strided views)."""
    return x.view(size, width, parts, attn.n_heads, attn.head_size).permute(2, 0, 3, 1, 4).unbind(0)


def _attend(attn: MultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """One group's attention with the block's kernel (encoder.attend), [size, heads, queries, head_size]."""
    return attend(q, k, v, mask, attn.attn_dropout, attn.attention)


def _all_tokens_attention(attn: MultiHeadAttention, x: Tensor, packing: Packing) -> Tensor:
    """The attention context of every real token, [T, H]: queries, keys and values from one product."""
    weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
    slots = F.pad(F.linear(x, weight, bias), (0, 0, 0, 1)).index_select(0, packing.token_of_slot)
    outputs = []
    for group, rows in zip(packing.groups, slots.split(packing.slot_counts)):  # split: one backward for all groups
        q, k, v = _heads(rows, group.size, group.width, 3, attn)
        outputs.append(_attend(attn, q, k, v, group.mask).transpose(1, 2).reshape(len(rows), -1))
    return torch.cat(outputs).index_select(0, packing.slot_of_token)


def _read_out_attention(attn: MultiHeadAttention, x: Tensor, xq: Tensor, packing: Packing) -> Tensor:
    """The attention context of each row's read-out token `xq` [B, H] over its row's keys, [B, H]."""
    weight = torch.cat([attn.key.weight, attn.value.weight])
    bias = torch.cat([attn.key.bias, attn.value.bias])
    slots = F.pad(F.linear(x, weight, bias), (0, 0, 0, 1)).index_select(0, packing.token_of_slot)
    queries = attn.query(xq).index_select(0, packing.row_order).split([group.size for group in packing.groups])
    outputs = []
    for group, rows, query in zip(packing.groups, slots.split(packing.slot_counts), queries):
        k, v = _heads(rows, group.size, group.width, 2, attn)
        (q,) = _heads(query, group.size, 1, 1, attn)
        outputs.append(_attend(attn, q, k, v, group.last_mask).reshape(group.size, -1))
    return torch.cat(outputs).index_select(0, packing.row_position)


def _block(layer: TransformerLayer, x: Tensor, packing: Packing, last_only: bool) -> Tensor:
    """One transformer block on packed tokens x [T, H]; for the read-out rows only [B, H] when `last_only`."""
    attn = layer.multi_head_attention
    if last_only:
        xq = x.index_select(0, packing.last)
        context = _read_out_attention(attn, x, xq, packing)
    else:
        xq, context = x, _all_tokens_attention(attn, x, packing)
    h = attn.LayerNorm(attn.out_dropout(attn.dense(context)) + xq)
    return layer.feed_forward(h)


def encode_packed(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor,
                  length_buckets: Sequence[int] = ()) -> Tensor:
    """h_n of each row of right-padded `item_seq` [B, L], as encoder(item_seq, lengths), [B, H]."""
    if item_seq.shape[1] > encoder.max_len:
        raise ValueError(f"sequence length {item_seq.shape[1]} exceeds max_len {encoder.max_len}")
    packing = pack(item_seq, lengths, length_buckets, encoder.item_embedding.weight.dtype)
    x = encoder.item_embedding(packing.tokens) + encoder.position_embedding(packing.positions)
    x = encoder.dropout(encoder.LayerNorm(x))
    blocks = encoder.trm_encoder.layer
    for block in blocks[:-1]:
        x = _block(block, x, packing, last_only=False)
    return _block(blocks[-1], x, packing, last_only=True)
