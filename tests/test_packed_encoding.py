"""The packed-token read-out against the reference forward: same h_n with dropout 0, gradients, masked items
(against the naive re-implementation: tests/test_models_encoder.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mclrec.models.packed_encoding import encode_packed, head_layout, pack, padded_linear

from .test_models_encoder import make_encoder, random_batch


@pytest.mark.parametrize("buckets", [(), (4,), (3, 6, 9), (2, 4, 8, 16)])
def test_packed_read_out_equals_the_reference_forward(buckets):
    encoder = make_encoder(5)
    seq, lengths = random_batch(7, batch=40)
    with torch.no_grad():
        torch.testing.assert_close(encode_packed(encoder, seq, lengths, buckets), encoder(seq, lengths),
                                   atol=1e-6, rtol=1e-6)


def test_masked_items_inside_a_row_and_a_query_with_no_visible_key():
    encoder = make_encoder(3)
    seq, lengths = random_batch(4, batch=12)
    seq[:, 0] = 0  # the mask augmentation (mask_item: padding) can zero items inside a row, the first included
    seq[3, : int(lengths[3])] = 0  # a row whose every item is masked: uniform attention, not NaN
    with torch.no_grad():
        got, reference = encode_packed(encoder, seq, lengths, (3, 6)), encoder(seq, lengths)
    assert torch.isfinite(got).all()
    # A read-out with no visible key attends (near-uniformly) to every slot of its group, as with length buckets;
    # its value depends on how far the row is padded. Every other row is exact.
    keep = torch.arange(len(seq)) != 3
    torch.testing.assert_close(got[keep], reference[keep], atol=1e-6, rtol=1e-6)


def test_packing_holds_each_real_token_once_in_row_order():
    seq = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 0, 0]])
    lengths = torch.tensor([3, 1, 2])
    packing = pack(seq, lengths, (1, 2))
    assert packing.tokens.tolist() == [5, 6, 7, 8, 1, 2]
    assert packing.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert packing.last.tolist() == [2, 3, 5]
    # bucket (0, 1]: row 1; (1, 2]: row 2; above: row 0, each group padded only to its own longest row
    assert packing.row_order.tolist() == [1, 2, 0]
    assert [(group.size, group.width) for group in packing.groups] == [(1, 1), (1, 2), (1, 3)]
    assert packing.row_position.tolist() == [2, 0, 1]
    # slots: row 1's [8], row 2's [1, 2], row 0's [5, 6, 7]; T = 6 is the zero row padded slots read
    assert packing.token_of_slot.tolist() == [3, 4, 5, 0, 1, 2]
    assert packing.slot_of_token.tolist() == [3, 4, 5, 0, 1, 2]


def test_padded_slots_read_the_zero_row_and_are_never_read_back():
    seq = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 0, 0]])
    packing = pack(seq, torch.tensor([3, 1, 2]))  # one group of width 3
    assert packing.token_of_slot.tolist() == [0, 1, 2, 3, 6, 6, 4, 5, 6]
    assert packing.slot_of_token.tolist() == [0, 1, 2, 3, 6, 7]
    assert packing.groups[0].mask[1, 0, 0].tolist() == [0.0, -10000.0, -10000.0]  # row 1 sees only its item
    assert packing.groups[0].last_mask[:, 0, 0].tolist() == [[0.0, 0.0, 0.0], [0.0, -10000.0, -10000.0],
                                                            [0.0, 0.0, -10000.0]]


def test_gradients_flow_to_every_item_of_the_batch():
    encoder = make_encoder(7).train()
    seq, lengths = random_batch(9, batch=30)
    for module in encoder.modules():  # dropout 0: the packed and reference gradients are then the same
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    out = encode_packed(encoder, seq, lengths, (3, 6))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    packed_grad = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    encoder.zero_grad()
    (encoder(seq, lengths) * weights).sum().backward()
    for name, param in encoder.named_parameters():
        torch.testing.assert_close(packed_grad[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert packed_grad["item_embedding.weight"][seq.unique()[1:]].abs().sum(dim=1).min() > 0


@pytest.mark.parametrize("n_heads", [1, 2, 4])
def test_head_layout_gathers_what_the_permuted_slots_hold(n_heads):
    seq, lengths = random_batch(11, batch=25)
    packing = pack(seq, lengths, (3, 6))
    layout = head_layout(packing, n_heads)
    head_size, T = 3, len(packing.tokens)
    for parts, index, counts in ((3, layout.qkv.index, layout.counts(3)), (2, layout.kv.index, layout.counts(2))):
        product = torch.randn(T, parts * n_heads * head_size)
        padded = torch.cat([product, torch.zeros(1, product.shape[1])])
        gathered = padded.view(-1, head_size).index_select(0, index).split(counts)
        slots = padded.index_select(0, packing.token_of_slot).split(packing.slot_counts)
        for group, got, rows in zip(packing.groups, gathered, slots):  # the layout the permuted views had
            expected = rows.view(group.size, group.width, parts, n_heads, head_size).permute(2, 0, 3, 1, 4)
            assert torch.equal(got.view(parts, group.size, n_heads, group.width, head_size), expected)
    outputs = [torch.randn(group.size, n_heads, group.width, head_size) for group in packing.groups]
    by_slot = torch.cat([out.transpose(1, 2).reshape(-1, n_heads * head_size) for out in outputs])
    got = torch.cat([out.reshape(-1, head_size) for out in outputs]).index_select(0, layout.tokens).view(T, -1)
    assert torch.equal(got, by_slot.index_select(0, packing.slot_of_token))


def test_head_layout_by_hand():
    seq = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 0, 0]])
    packing = pack(seq, torch.tensor([3, 1, 2]))  # one group of 3 rows, width 3; T = 6 is the zero row
    layout = head_layout(packing, 2)
    # kv (parts 2, 2 heads): row (token t, part p, head h) of the [7 x 4, head_size] view is 4 t + 2 p + h;
    # the order is part, row, head, slot: keys of row 0, head 0 read tokens 0, 1, 2 -> 0, 4, 8
    assert layout.kv.index.view(2, 3, 2, 3)[0, 0, 0].tolist() == [0, 4, 8]
    # row 1: token 3, then padded slots, which read the zero row's first head row (4 x 6)
    assert layout.kv.index.view(2, 3, 2, 3)[1, 1, 1].tolist() == [4 * 3 + 3, 4 * 6, 4 * 6]
    # row 2: tokens 4, 5
    assert layout.qkv.index.view(3, 3, 2, 3)[2, 2, 0].tolist() == [6 * 4 + 4, 6 * 5 + 4, 6 * 6]
    # token 4 (row 2, slot 0): its heads' outputs are [row 2, head h, slot 0] = (2 x 2 + h) x 3 + 0
    assert layout.tokens.view(6, 2)[4].tolist() == [12, 15]
    # the backward's inverse: kv row 4 t + 2 p + h of token 3 (row 1's only item) went to slot row [p, 1, h, 0]
    assert layout.kv.inverse[4 * 3 + 2 * 1 + 0].item() == ((1 * 3 + 1) * 2 + 0) * 3 + 0
    assert (layout.kv.inverse[4 * 6:] == 0).all()  # the zero row: a constant, whose gradient is dropped
    assert layout.counts(3) == [3 * 2 * 9] and layout.counts(2) == [2 * 2 * 9]


def test_packing_with_an_empty_bucket_and_masked_items_by_hand():
    seq = torch.tensor([[5, 0, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4], [9, 6, 0, 0]])
    packing = pack(seq, torch.tensor([3, 1, 4, 2]), (1, 2, 3))  # bucket (1, 2] holds row 3; (2, 3] row 0
    assert packing.row_order.tolist() == [1, 3, 0, 2]
    assert [(group.size, group.width) for group in packing.groups] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert packing.token_group.tolist() == [2, 2, 2, 0, 3, 3, 3, 3, 1, 1]
    assert packing.slot_of_token.tolist() == [3, 4, 5, 0, 6, 7, 8, 9, 1, 2]
    assert packing.token_of_slot.tolist() == [3, 8, 9, 0, 1, 2, 4, 5, 6, 7]
    # row 0's masked item (position 1) is no key of any query, nor of its read-out
    assert packing.groups[2].mask[0, 0].tolist() == [[0.0, -1e4, -1e4], [0.0, -1e4, -1e4], [0.0, -1e4, 0.0]]
    assert packing.groups[2].last_mask.view(-1).tolist() == [0.0, -1e4, 0.0]
    layout = head_layout(packing, 2)
    for parts, rows in ((3, layout.qkv), (2, layout.kv)):  # the inverse undoes the gather for every real row
        real = torch.arange(10 * parts * 2)  # the source rows of the 10 tokens (the zero row's follow)
        assert torch.equal(rows.index[rows.inverse[real]], real)
        assert (rows.inverse[len(real):] == 0).all()


@pytest.mark.parametrize("n_heads", [1, 2])
def test_row_gathers_give_index_selects_gradients_bit_for_bit(n_heads):
    seq, lengths = random_batch(11, batch=25)
    packing = pack(seq, lengths, (3, 6))
    layout = head_layout(packing, n_heads)
    head_size, T = 3, len(packing.tokens)
    for parts, rows in ((3, layout.qkv), (2, layout.kv)):
        product = torch.randn(T, parts * n_heads * head_size, requires_grad=True)
        source = F.pad(product, (0, 0, 0, 1)).view(-1, head_size)
        weights = torch.randn(rows.index.numel(), head_size)
        ours = torch.autograd.grad((rows.gather(source) * weights).sum(), product)[0]
        plain = torch.autograd.grad((source.index_select(0, rows.index) * weights).sum(), product)[0]
        assert torch.equal(ours, plain)


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False)])
def test_padded_linear_is_pad_of_linear_bit_for_bit(needs):
    g = torch.Generator().manual_seed(3)
    x0, w0, b0 = torch.randn(37, 8, generator=g), torch.randn(12, 8, generator=g), torch.randn(12, generator=g)
    grad = torch.randn(38, 12, generator=g)
    results = []
    for f in (padded_linear, lambda x, w, b: F.pad(F.linear(x, w, b), (0, 0, 0, 1))):
        inputs = [t.clone().requires_grad_(need) for t, need in zip((x0, w0, b0), needs)]
        out = f(*inputs)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in inputs])
    assert torch.equal(results[0][0][-1], torch.zeros(12))
    for ours, plain in zip(*results):
        assert (ours is None and plain is None) or torch.equal(ours, plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU bf16: the padded product (tests/test_precision.py)
        assert padded_linear(x0, w0, b0).dtype == torch.bfloat16
