"""Vectorised crop / mask / reorder and the two-view sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mclrec.models.augment import crop, mask, operator_pairs, reorder, two_views

L = 20


def batch(seed: int = 0, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of distinct item ids (so positions can be traced), lengths 1..L."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (size,), generator=g)
    lengths[:L] = torch.arange(1, L + 1)
    seq = torch.stack([torch.randperm(500, generator=g)[:L] + 1 for _ in range(size)])
    seq[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    return seq, lengths


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_keeps_a_contiguous_window_moved_left():
    seq, lengths = batch()
    out, new_lengths = crop(seq, lengths, 0.5, gen())
    for row, n, m, o in zip(seq.tolist(), lengths.tolist(), new_lengths.tolist(), out.tolist()):
        assert m == max(math.floor(0.5 * n), 1)
        assert o[m:] == [0] * (L - m)
        start = row.index(o[0])
        assert row[start:start + m] == o[:m] and start + m <= n


def test_crop_window_start_covers_all_offsets():
    seq = torch.arange(1, 11)[None].repeat(2000, 1)
    lengths = torch.full((2000,), 10)
    out, _ = crop(seq, lengths, 0.5, gen())
    assert sorted(Counter(out[:, 0].tolist())) == [1, 2, 3, 4, 5, 6]


def test_mask_zeroes_exactly_floor_ratio_len_positions():
    seq, lengths = batch()
    out, new_lengths = mask(seq, lengths, 0.5, gen())
    assert torch.equal(new_lengths, lengths)
    for row, n, o in zip(seq.tolist(), lengths.tolist(), out.tolist()):
        zeros = [i for i in range(n) if o[i] == 0]
        assert len(zeros) == math.floor(0.5 * n)
        assert all(o[i] == row[i] for i in range(L) if i not in zeros)


def test_mask_positions_are_uniform():
    seq = torch.arange(1, 5)[None].repeat(4000, 1)
    out, _ = mask(seq, torch.full((4000,), 4), 0.5, gen())
    frequency = (out == 0).float().mean(0)
    assert torch.allclose(frequency, torch.full((4,), 0.5), atol=0.04)


def test_reorder_shuffles_one_contiguous_window():
    seq, lengths = batch()
    out, new_lengths = reorder(seq, lengths, 0.8, gen())
    assert torch.equal(new_lengths, lengths)
    changed_rows = 0
    for row, n, o in zip(seq.tolist(), lengths.tolist(), out.tolist()):
        assert sorted(o) == sorted(row)  # multiset preserved, padding stays padding
        assert o[n:] == [0] * (L - n)
        moved = [i for i in range(L) if o[i] != row[i]]
        if moved:
            changed_rows += 1
            assert moved[-1] - moved[0] + 1 <= math.floor(0.8 * n)
            window = range(moved[0], moved[-1] + 1)
            assert sorted(o[i] for i in window) == sorted(row[i] for i in window)
    assert changed_rows > len(seq) // 2


def test_reorder_permutations_are_uniform():
    seq = torch.tensor([[1, 2, 3]]).repeat(6000, 1)
    out, _ = reorder(seq, torch.full((6000,), 3), 1.0, gen())
    counts = Counter(map(tuple, out.tolist()))
    assert len(counts) == 6 and min(counts.values()) > 850


def test_operator_pairs_are_distinct_and_cover_all_six():
    pairs = operator_pairs(3000, gen(), torch.device("cpu"))
    assert torch.all(pairs[:, 0] != pairs[:, 1])
    counts = Counter(map(tuple, pairs.tolist()))
    assert len(counts) == 6 and min(counts.values()) > 400


def operator_used(row: list[int], n: int, out: list[int], m: int) -> str:
    """Which operator produced `out` from a row of distinct items of length n >= 2."""
    if m != n:
        return "crop"
    if 0 in out[:n]:
        return "mask"
    assert sorted(out) == sorted(row)
    return "reorder"


def test_two_views_use_distinct_operators_and_keep_length_one_rows():
    seq, lengths = batch(size=300)
    v1, l1, v2, l2 = two_views(seq, lengths, gen())
    for row, n, a, m1, b, m2 in zip(seq.tolist(), lengths.tolist(), v1.tolist(), l1.tolist(), v2.tolist(),
                                    l2.tolist()):
        if n == 1:
            assert a == row and b == row and m1 == m2 == 1
        else:
            assert operator_used(row, n, a, m1) != operator_used(row, n, b, m2)


@pytest.mark.parametrize("op", [crop, mask, reorder])
def test_operators_are_deterministic_for_a_seed(op):
    seq, lengths = batch()
    first = op(seq, lengths, 0.5, gen(7))
    again = op(seq, lengths, 0.5, gen(7))
    other = op(seq, lengths, 0.5, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_two_views_are_deterministic_for_a_seed():
    seq, lengths = batch()
    first, again = two_views(seq, lengths, gen(3)), two_views(seq, lengths, gen(3))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], two_views(seq, lengths, gen(4))[0])


def test_inputs_are_not_modified():
    seq, lengths = batch()
    before = seq.clone(), lengths.clone()
    two_views(seq, lengths, gen())
    assert torch.equal(seq, before[0]) and torch.equal(lengths, before[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    seq, lengths = batch()
    on_cpu = two_views(seq, lengths, gen(5))
    on_gpu = two_views(seq.cuda(), lengths.cuda(), gen(5))
    assert all(x.device.type == "cuda" for x in on_gpu)
    assert all(torch.equal(x, y.cpu()) for x, y in zip(on_cpu, on_gpu))
