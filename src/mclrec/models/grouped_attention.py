"""Attention of the packed encoder's length groups as one autograd node whose backward writes one gradient tensor.

The packed encoder (packed_encoding.py) gathers every group's queries, keys and values into one tensor of head rows
and attends group by group. With autograd, each group's inputs are pieces of a split of that tensor and its outputs
are concatenated, so the backward concatenates every group's input gradients into a fresh tensor (a copy of the
whole gathered gradient) after copying each key gradient out of its transposed layout. Here the forward writes
each group's outputs into its slice of one output tensor, and the backward writes each group's query, key and value
gradients straight into their slices of one gradient tensor.

The operations are the math kernel's (encoder.attend with RecBole's additive mask) and their backward is the one
autograd runs for them, call for call: the same products on the same layouts, softmax's backward kernel, the
division by sqrt(head_size), the dropout mask's product. So outputs and gradients equal the autograd path's bit for
bit, and the attention dropout draws the same masks from the same generator in the same order
(tests/test_grouped_attention.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd import Function

from mclrec.models.dropout import Dropout, cpu_keep_mask


@dataclass(frozen=True)
class GroupShape:
    """One group's attention: `size` rows of `width` key slots, `queries` query slots per row (width, or 1 for the
    read-out), and its additive mask [size, 1, queries, width]."""

    size: int
    width: int
    queries: int
    mask: Tensor


def can_draw_dropout(dropout: Dropout, x: Tensor) -> bool:
    """Whether grouped_attention can draw `dropout`'s masks itself: off, or a CPU Dropout with 0 < p < 1 (where
    Dropout.forward multiplies by cpu_keep_mask; elsewhere nn.Dropout draws masks that cannot be kept)."""
    if not dropout.training or dropout.p == 0.0:
        return True
    return isinstance(dropout, Dropout) and x.device.type == "cpu" and dropout.p < 1.0


def grouped_attention(slots: Tensor, queries: Optional[Tensor], groups: Sequence[GroupShape], n_heads: int,
                      dropout: Dropout) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with attention dropout for each group, outputs concatenated as rows
    [sum of size x heads x queries, head_size].

    slots [rows, head_size]: group after group, the group's parts [parts, size, heads, width] (parts 3: queries,
    keys, values; 2: keys and values, the queries then being `queries` [sum of size x heads, head_size], group after
    group). The caller checks can_draw_dropout(dropout, slots).
    """
    p = dropout.p if dropout.training else 0.0
    return _GroupedAttention.apply(slots, queries, tuple(groups), n_heads, p, getattr(dropout, "draws", "bytes"))


def _pieces(slots: Tensor, queries: Optional[Tensor], groups: Sequence[GroupShape], n_heads: int):
    """Each group's (q, k, v) views [size, heads, queries or width, head_size] and its output rows' slice."""
    head_size = slots.shape[1]
    parts = 2 if queries is not None else 3
    offset = query_offset = out_offset = 0
    for group in groups:
        n = group.size * n_heads * group.width
        pieces = [slots[offset + i * n: offset + (i + 1) * n].view(group.size, n_heads, group.width, head_size)
                  for i in range(parts)]
        offset += parts * n
        if queries is not None:
            n_queries = group.size * n_heads * group.queries
            q = queries[query_offset: query_offset + n_queries].view(group.size, n_heads, group.queries, head_size)
            query_offset += n_queries
            pieces.insert(0, q)
        n_out = group.size * n_heads * group.queries
        yield pieces[0], pieces[1], pieces[2], slice(out_offset, out_offset + n_out)
        out_offset += n_out


def _product(a: Tensor, b: Tensor, out: Tensor) -> None:
    """torch.matmul(a, b, out=out); an inner dimension of 1 (the read-out's single query) as a broadcast product.

    With one term per output the product is a single rounding either way, so the numbers are the same bit for bit,
    but batched matmul pays a per-matrix cost for each of the thousands of tiny [width, 1] x [1, head_size] outer
    products (3-5 ms of an MCLRec step), the broadcast multiplication one pass."""
    if a.shape[-1] == 1:
        torch.mul(a, b, out=out)
    else:
        torch.matmul(a, b, out=out)


class _GroupedAttention(Function):
    @staticmethod
    def forward(ctx, slots: Tensor, queries: Optional[Tensor], groups: tuple[GroupShape, ...], n_heads: int,
                p: float, draws: str) -> Tensor:
        head_size = slots.shape[1]
        rows = sum(group.size * n_heads * group.queries for group in groups)
        out = slots.new_empty(rows, head_size)
        saved = []
        for group, (q, k, v, rows_out) in zip(groups, _pieces(slots, queries, groups, n_heads)):
            scores = q @ k.transpose(-1, -2) / math.sqrt(head_size) + group.mask
            weights = torch.softmax(scores, dim=-1)
            keep = cpu_keep_mask(weights, p, draws) if p > 0 else None
            dropped = weights * keep if keep is not None else weights
            torch.matmul(dropped, v, out=out[rows_out].view(group.size, n_heads, group.queries, head_size))
            saved += [weights, dropped] + ([keep] if keep is not None else [])
        ctx.groups, ctx.n_heads, ctx.dropout = groups, n_heads, p > 0
        ctx.save_for_backward(slots, queries, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        slots, queries, *saved = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        head_size = slots.shape[1]
        grad_slots = torch.empty_like(slots)
        grad_queries = torch.empty_like(queries) if queries is not None else None
        per_group = 3 if ctx.dropout else 2
        grads = _pieces(grad_slots, grad_queries, ctx.groups, ctx.n_heads)
        for g, (group, (q, k, v, rows_out), (dq, dk, dv, _)) in enumerate(
                zip(ctx.groups, _pieces(slots, queries, ctx.groups, ctx.n_heads), grads)):
            weights, dropped = saved[per_group * g: per_group * g + 2]
            grad = grad_out[rows_out].view(group.size, ctx.n_heads, group.queries, head_size)
            grad_dropped = grad @ v.transpose(-1, -2)
            _product(dropped.transpose(-1, -2), grad, out=dv)
            grad_weights = grad_dropped * saved[per_group * g + 2] if ctx.dropout else grad_dropped
            grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype) / math.sqrt(head_size)
            torch.matmul(grad_scores, k, out=dq)
            if group.queries == 1:  # the read-out: (q^T grad_scores)^T = grad_scores^T q, an outer product
                _product(grad_scores.transpose(-1, -2), q, out=dk)
            else:
                dk.copy_((q.transpose(-1, -2) @ grad_scores).transpose(-1, -2))
        return grad_slots, grad_queries, None, None, None, None
