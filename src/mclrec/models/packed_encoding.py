"""Packed-token encoding of the read-out h_n: every per-token operation runs once, on the batch's real tokens.

With length buckets (fast_encoding.encode) each group of rows is padded to its own longest row and every
operation of the encoder (embedding, LayerNorm, QKV, feed-forward, dropout, residuals) runs once per group. Here
the positions t < length of all rows form one `[tokens, hidden]` tensor and those operations run once on it; only
attention, which mixes positions of one row, is grouped by length. Per block, one product computes queries, keys
and values of every token together; one gather lays them out head-major as the groups' padded slots (`[parts,
rows, heads, width, head_size]`, padded slots reading a zero row; HeadLayout), so the attention products read
contiguous inputs and no per-head layout copy is made in either direction; each group is scored with RecBole's
additive mask (-10000, so a query whose keys are all masked gets finite weights instead of NaN), all groups in
one autograd node whose backward fills one gradient tensor (grouped_attention.py), and one gather brings the real
slots' outputs back into token order. As in encode_last, the final block computes queries,
attention and feed-forward for the read-out position only.

With `precision: bf16` on the CPU the linear layers (queries, keys, values, dense, feed-forward) run in bfloat16 on
row counts rounded up to a multiple of CPU_BF16_ROW_MULTIPLE (oneDNN then reuses one kernel per shape instead of
building one per batch) and attention in float32 as one node (_grouped).

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
from torch.autograd import Function

from mclrec.models.encoder import MASK_VALUE, MultiHeadAttention, SASRecEncoder, TransformerLayer, attend, uses_sdpa
from mclrec.models.grouped_attention import GroupShape, can_draw_dropout, grouped_attention


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
    token's result is read from; `token_group` [T] is the group of each real token's row. The groups' rows,
    concatenated, are the batch's rows in `row_order` [B]; row b's read-out is at `row_position[b]` of that order.
    """

    tokens: Tensor  # [T] item id of each real token (row-major: row 0's positions, then row 1's, ...)
    positions: Tensor  # [T] its position in its row
    last: Tensor  # [B] packed index of each row's read-out token (position length - 1)
    groups: list[Group]
    token_of_slot: Tensor
    slot_of_token: Tensor
    token_group: Tensor
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
    Every index is computed for the whole batch at once (a few dozen tensor operations, whatever the number of
    rows); only the groups' attention masks, whose shapes differ, are made group by group.
    """
    B, L = item_seq.shape
    device = item_seq.device
    steps = torch.arange(L, device=device)
    beyond = steps[None, :] >= lengths[:, None]  # [B, L] padding
    real = torch.nonzero(~beyond.view(-1)).squeeze(1)  # [T] the real tokens' places in item_seq, row-major
    token_row, positions = real // L, real % L
    buckets = torch.tensor(sorted(length_buckets), device=device, dtype=lengths.dtype)
    bucket = torch.bucketize(lengths, buckets) if len(buckets) else torch.zeros_like(lengths)
    order = torch.argsort(bucket, stable=True)
    row_position = torch.empty_like(order).index_copy_(0, order, torch.arange(B, device=device))
    n_groups = len(buckets) + 1
    counts = torch.bincount(bucket, minlength=n_groups)
    widths = torch.zeros(n_groups, dtype=lengths.dtype, device=device).scatter_reduce(0, bucket, lengths, "amax")
    # row b is row `rank` of its group; its slots start after the earlier groups' slots and the earlier rows'
    group_slots = counts * widths
    rank = row_position - (torch.cumsum(counts, 0) - counts).index_select(0, bucket)
    row_first_slot = ((torch.cumsum(group_slots, 0) - group_slots).index_select(0, bucket)
                      + rank * widths.index_select(0, bucket))
    slot_of_token = row_first_slot.index_select(0, token_row) + positions
    token_group = (torch.cumsum(counts > 0, 0) - 1).index_select(0, bucket).index_select(0, token_row)  # of `groups`
    shapes = torch.stack([counts, widths]).tolist()  # the groups' shapes: one read of the host
    n_tokens, n_slots = len(real), sum(count * width for count, width in zip(*shapes))
    token_of_slot = torch.full((n_slots,), n_tokens, dtype=real.dtype, device=device).index_copy_(
        0, slot_of_token, torch.arange(n_tokens, device=device))
    # a key is hidden from a query when it comes later, is padding or is a masked item (id 0)
    hidden = (beyond | (item_seq == 0)).index_select(0, order)
    later = torch.ones(L, L, dtype=dtype, device=device).triu(1).mul_(MASK_VALUE)
    groups, first = [], 0
    for size, width in zip(*shapes):
        if not size:
            continue
        keys = hidden[first:first + size, :width].to(dtype)[:, None, None, :].mul_(MASK_VALUE)
        # a key both later and hidden sums to twice the mask value, clamped back to it; the same mask as the
        # boolean "or" converted, without a bool result and its conversion (each 5x a float pass on the CPU)
        mask = torch.add(later[:width, :width], keys).clamp_min_(MASK_VALUE)
        groups.append(Group(size, width, mask, keys))
        first += size
    return Packing(item_seq.reshape(-1).index_select(0, real), positions, torch.cumsum(lengths, 0) - 1, groups,
                   token_of_slot, slot_of_token, token_group, order, row_position)


class _RowGather(Function):
    """x.index_select(0, index) where every row of x is read exactly once, or is a constant (padding's zero rows,
    whose gradient F.pad drops): the backward gathers each row's one gradient row (`inverse`) instead of
    scatter-adding into a zero-filled tensor. The same gradients, bit for bit, for every row but the constants."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


@dataclass(frozen=True)
class RowIndex:
    """A gather of rows (`index`) that reads every source row once, but the constants (rows from some row on, read
    any number of times), and for its backward the result row each source row went to (`inverse`; 0 for the
    constants, whose gradient is dropped)."""

    index: Tensor
    inverse: Tensor

    def gather(self, x: Tensor) -> Tensor:
        """x.index_select(0, index), with the gathering backward of _RowGather."""
        return _RowGather.apply(x, self.index, self.inverse)


@dataclass(frozen=True)
class HeadLayout:
    """Gather indexes that lay attention inputs out head-major, so attention needs no layout copies.

    A product's output [T, parts x hidden] with one zero row appended, viewed as rows of one head's slice
    `[(T + 1) x parts x heads, head_size]`, is read by `qkv` (parts 3) or `kv` (parts 2) as each group's
    `[parts, size, heads, width, head_size]` in turn, contiguous (padded slots read the zero row's first head
    row); the groups' outputs `[size, heads, width, head_size]`, concatenated, are read back into token order
    `[T x heads, head_size]` by `tokens`.
    """

    qkv: RowIndex
    kv: RowIndex
    tokens: Tensor
    n_heads: int
    slot_counts: list[int]

    def counts(self, parts: int) -> list[int]:
        """The gathered rows of each group for `parts` (3: qkv, 2: kv)."""
        return [parts * self.n_heads * count for count in self.slot_counts]


def head_layout(packing: Packing, n_heads: int) -> HeadLayout:
    """The HeadLayout of `packing` for attention with `n_heads` heads.

    Token t at slot s (position `step` in its row) of a group of `width` slots per row, `slots` in all, the first
    at `first`, is row r = (s - first - step) / width of its group. In the group's gathered block `[parts, size,
    heads, width]`, which starts at parts x heads x first, its (part p, head h) row is p x heads x slots +
    (r x heads + h) x width + step, that is

        heads x s - (heads - 1) x step + h x width + (parts - 1) x heads x first + p x heads x slots,

    and in the outputs `[size, heads, width]` (parts 1) the same without the last two terms. So every index is a
    few operations on [T] tensors; the gathers' indexes are these positions inverted (one index_copy_ each).
    """
    device = packing.slot_of_token.device
    dtype = packing.slot_of_token.dtype
    group_slots = torch.tensor(packing.slot_counts, dtype=dtype, device=device)
    group_width = torch.tensor([group.width for group in packing.groups], dtype=dtype, device=device)
    width, slots, first = (values.index_select(0, packing.token_group) for values in
                           (group_width, group_slots, torch.cumsum(group_slots, 0) - group_slots))
    heads = torch.arange(n_heads, dtype=dtype, device=device)
    token_heads = ((n_heads * packing.slot_of_token - (n_heads - 1) * packing.positions)[:, None]
                   + width[:, None] * heads)  # [T, heads]: where token t's head h output is
    n_tokens, n_slots = len(packing.slot_of_token), sum(packing.slot_counts)

    def rows(parts: int) -> RowIndex:
        part = torch.arange(parts, dtype=dtype, device=device)[:, None] * n_heads
        inverse = ((token_heads + ((parts - 1) * n_heads) * first[:, None])[:, None, :]
                   + part * slots[:, None, None]).reshape(-1)  # [T x parts x heads]: source row -> gathered row
        index = torch.full((parts * n_heads * n_slots,), parts * n_heads * n_tokens, dtype=dtype,
                           device=device).index_copy_(0, inverse, torch.arange(len(inverse), device=device))
        return RowIndex(index, torch.cat([inverse, inverse.new_zeros(parts * n_heads)]))

    return HeadLayout(rows(3), rows(2), token_heads.reshape(-1), n_heads, packing.slot_counts)


class _PaddedLinear(Function):
    """F.pad(F.linear(x, weight, bias), (0, 0, 0, 1)): the product written into the first rows of its padded
    output, so the zero row costs no copy of the product (nor of its gradient). The forward is F.linear's addmm and
    the backward the products and sum autograd takes for it, on the same layouts: the same numbers bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        out = x.new_empty(len(x) + 1, weight.shape[0])
        out[-1].zero_()
        torch.addmm(bias, x, weight.t(), out=out[:-1])
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad[:-1]  # the zero row is a constant
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        # autograd's addmm backward for the column-major weight.t(): (grad^T x)^T, transposed back by .t()'s
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


# bfloat16 products on the CPU run on oneDNN, which builds (JIT-compiles) a kernel for every new shape and caches
# it: 1-3 ms per product at the packed encoder's shapes, several times the product itself, and the packed token count
# changes with every batch. Rounded up to a multiple of this, the row counts repeat and the kernels are reused.
CPU_BF16_ROW_MULTIPLE = 128


def cpu_bf16(x: Tensor) -> bool:
    """Whether products of `x` run in bfloat16 on the CPU (`precision: bf16`: autocast to bfloat16)."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _rows_bf16(x: Tensor, rows: int) -> Tensor:
    """x [n, k] as bfloat16 [rows, k], rows n.. zero: the cast and the padding in one pass."""
    out = x.new_empty(rows, x.shape[1], dtype=torch.bfloat16)
    out[: len(x)].copy_(x)
    out[len(x):].zero_()
    return out


class _CpuBf16Linear(Function):
    """F.linear(x, weight, bias) in bfloat16, as autocast computes it (bfloat16 inputs and output, float32
    accumulation), with the product's rows padded to a multiple of CPU_BF16_ROW_MULTIPLE so that oneDNN reuses its
    kernels; `zero_row` appends one zero row to the output (padded_linear). The padding rows' outputs are never
    read, so their gradient is zero and the gradients are autocast's up to the products' rounding."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, zero_row: bool) -> Tensor:
        n = len(x)
        rows = -(-(n + zero_row) // CPU_BF16_ROW_MULTIPLE) * CPU_BF16_ROW_MULTIPLE
        xb, wb = _rows_bf16(x, rows), weight.to(torch.bfloat16)
        out = torch.addmm(bias.to(torch.bfloat16), xb, wb.t())
        if zero_row:
            out[n].zero_()
        ctx.save_for_backward(xb, wb)
        ctx.n, ctx.dtypes = n, (x.dtype, weight.dtype, bias.dtype)
        return out[: n + zero_row]

    @staticmethod
    def backward(ctx, grad: Tensor):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad = grad[: ctx.n]  # a zero row is a constant
        gb = _rows_bf16(grad, len(xb))
        grad_x = gb.mm(wb)[: ctx.n].to(x_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = gb.t().mm(xb).to(w_dtype) if ctx.needs_input_grad[1] else None
        # the bias gradient as a product with a ones row: a column sum of bfloat16 rows is ten times slower here
        grad_bias = (gb.new_ones(1, len(gb)).mm(gb)[0].to(b_dtype) if ctx.needs_input_grad[2] else None)
        return grad_x, grad_weight, grad_bias, None


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """F.linear(x, weight, bias) of rows x [n, in] (tokens or read-outs); under CPU bfloat16 autocast with its rows
    padded (_CpuBf16Linear)."""
    if cpu_bf16(x):
        return _CpuBf16Linear.apply(x, weight, bias, False)
    return F.linear(x, weight, bias)


def padded_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """F.linear(x, weight, bias) with one zero row appended, [len(x) + 1, out_features]. Under CUDA autocast it is
    F.pad of F.linear (an `out=` product would skip autocast's casts)."""
    if cpu_bf16(x):
        return _CpuBf16Linear.apply(x, weight, bias, True)
    if torch.is_autocast_enabled(x.device.type):
        return F.pad(F.linear(x, weight, bias), (0, 0, 0, 1))
    return _PaddedLinear.apply(x, weight, bias)


def _head_slots(x: Tensor, weight: Tensor, bias: Tensor, head_size: int, rows: RowIndex) -> Tensor:
    """F.linear(x, weight, bias) [T, parts x hidden] gathered by a HeadLayout index as rows [*, head_size]."""
    return rows.gather(padded_linear(x, weight, bias).view(-1, head_size))


def _attend(attn: MultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """One group's attention with the block's kernel (encoder.attend), [size, heads, queries, head_size]."""
    return attend(q, k, v, mask, attn.attn_dropout, attn.attention)


def _one_node(attn: MultiHeadAttention, x: Tensor) -> bool:
    """Whether the groups' attention runs as one autograd node (grouped_attention: the math kernel, with dropout
    masks it can draw; under CPU bf16 in float32, _grouped); else group by group through autograd (the sdpa kernel,
    dropout on CUDA, or CUDA autocast, which casts the products' inputs where the node's `out=` products would not)."""
    return (not uses_sdpa(attn.attention, x) and can_draw_dropout(attn.attn_dropout, x)
            and (cpu_bf16(x) or not torch.is_autocast_enabled(x.device.type)))


def _grouped(slots: Tensor, queries: Tensor | None, shapes: list[GroupShape], attn: MultiHeadAttention) -> Tensor:
    """grouped_attention of the gathered `slots`; under CPU bf16 in float32 with autocast off: its products are small
    and of a new shape in every group of every batch (a kernel build each in bfloat16), and softmax wants float32."""
    if not cpu_bf16(slots):
        return grouped_attention(slots, queries, shapes, attn.n_heads, attn.attn_dropout)
    with torch.autocast("cpu", enabled=False):
        return grouped_attention(slots.float(), None if queries is None else queries.float(), shapes, attn.n_heads,
                                 attn.attn_dropout)


def _group_inputs(attn: MultiHeadAttention, slots: Tensor, packing: Packing, layout: HeadLayout,
                  parts: int) -> list[tuple[Tensor, ...]]:
    """Each group's `parts` attention inputs (queries, keys, values or keys, values), [size, heads, width,
    head_size] each, as views of one split of the gathered `slots`: its backward is one concatenation of their
    gradients (a split per group and an unbind per part would copy every gradient twice)."""
    pieces = slots.split([count // parts for count in layout.counts(parts) for _ in range(parts)])
    return [tuple(piece.view(group.size, attn.n_heads, group.width, attn.head_size)
                  for piece in pieces[parts * g: parts * (g + 1)]) for g, group in enumerate(packing.groups)]


def _all_tokens_attention(attn: MultiHeadAttention, x: Tensor, packing: Packing, layout: HeadLayout) -> Tensor:
    """The attention context of every real token, [T, H]: queries, keys and values from one product."""
    weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
    slots = _head_slots(x, weight, bias, attn.head_size, layout.qkv)
    if _one_node(attn, x):
        shapes = [GroupShape(group.size, group.width, group.width, group.mask) for group in packing.groups]
        outputs = _grouped(slots, None, shapes, attn)
    else:
        outputs = torch.cat([_attend(attn, q, k, v, group.mask).view(-1, attn.head_size) for group, (q, k, v)
                             in zip(packing.groups, _group_inputs(attn, slots, packing, layout, 3))])
    return outputs.index_select(0, layout.tokens).view(len(x), -1)


def _read_out_attention(attn: MultiHeadAttention, x: Tensor, xq: Tensor, packing: Packing,
                        layout: HeadLayout) -> Tensor:
    """The attention context of each row's read-out token `xq` [B, H] over its row's keys, [B, H]."""
    weight = torch.cat([attn.key.weight, attn.value.weight])
    bias = torch.cat([attn.key.bias, attn.value.bias])
    slots = _head_slots(x, weight, bias, attn.head_size, layout.kv)
    queries = linear(xq, attn.query.weight, attn.query.bias).index_select(0, packing.row_order)
    if _one_node(attn, x):
        shapes = [GroupShape(group.size, group.width, 1, group.last_mask) for group in packing.groups]
        outputs = _grouped(slots, queries.view(-1, attn.head_size), shapes, attn).view(len(xq), -1)
    else:
        outputs = []
        for group, (k, v), query in zip(packing.groups, _group_inputs(attn, slots, packing, layout, 2),
                                        queries.split([group.size for group in packing.groups])):
            q = query.view(group.size, attn.n_heads, 1, attn.head_size)
            outputs.append(_attend(attn, q, k, v, group.last_mask).reshape(group.size, -1))
        outputs = torch.cat(outputs)
    return outputs.index_select(0, packing.row_position)


def _block(layer: TransformerLayer, x: Tensor, packing: Packing, layout: HeadLayout, last_only: bool) -> Tensor:
    """One transformer block on packed tokens x [T, H]; for the read-out rows only [B, H] when `last_only`."""
    attn = layer.multi_head_attention
    if last_only:
        xq = x.index_select(0, packing.last)
        context = _read_out_attention(attn, x, xq, packing, layout)
    else:
        xq, context = x, _all_tokens_attention(attn, x, packing, layout)
    return layer.feed_forward(attn.output(context, xq, linear), linear)


@dataclass(frozen=True)
class PackedInputs:
    """What encode_packed derives from the item ids and lengths alone (no weights): the packing and its head layout.
    An encoder call on the same inputs can reuse it (MCLRec's step 3 encodes step 1's inputs again)."""

    packing: Packing
    layout: HeadLayout


def packed_inputs(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor,
                  length_buckets: Sequence[int] = ()) -> PackedInputs:
    """The PackedInputs of right-padded `item_seq` [B, L] with `lengths` [B] for `encoder`."""
    if item_seq.shape[1] > encoder.max_len:
        raise ValueError(f"sequence length {item_seq.shape[1]} exceeds max_len {encoder.max_len}")
    packing = pack(item_seq, lengths, length_buckets, encoder.item_embedding.weight.dtype)
    return PackedInputs(packing, head_layout(packing, encoder.trm_encoder.layer[0].multi_head_attention.n_heads))


def encode_packed(encoder: SASRecEncoder, item_seq: Tensor, lengths: Tensor,
                  length_buckets: Sequence[int] = ()) -> Tensor:
    """h_n of each row of right-padded `item_seq` [B, L], as encoder(item_seq, lengths), [B, H]."""
    return encode_packed_inputs(encoder, packed_inputs(encoder, item_seq, lengths, length_buckets))


def encode_packed_inputs(encoder: SASRecEncoder, inputs: PackedInputs) -> Tensor:
    """encode_packed of the rows `inputs` were made from, [B, H]."""
    packing, layout = inputs.packing, inputs.layout
    x = encoder.item_embedding(packing.tokens) + encoder.position_embedding(packing.positions)
    x = encoder.dropout(encoder.LayerNorm(x))
    blocks = encoder.trm_encoder.layer
    for block in blocks[:-1]:
        x = _block(block, x, packing, layout, last_only=False)
    return _block(blocks[-1], x, packing, layout, last_only=True)
