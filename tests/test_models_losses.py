"""Losses against straightforward loop implementations and hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mclrec.models.losses import (bpr_loss, chunked_cross_entropy, cl2_loss, exclusion_offsets, info_nce,
                                  margin_regulariser, pair_scores, rec_ce_loss, reg_loss, sample_negatives)


def loop_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> float:
    z = torch.cat([a, b]).double()
    n = len(z)
    total = 0.0
    for i in range(n):
        partner = (i + n // 2) % n
        pos = float(z[i] @ z[partner]) / temperature
        others = [float(z[i] @ z[j]) / temperature for j in range(n) if j not in (i, partner)]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in others))
    return total / n


def loop_regulariser(a: torch.Tensor, b: torch.Tensor) -> float:
    z = torch.cat([a, b]).double()
    n = len(z)
    pos_terms, neg_terms = [], []
    for i in range(n):
        partner = (i + n // 2) % n
        pos = float(z[i] @ z[partner])
        negs = [float(z[i] @ z[j]) for j in range(n) if j not in (i, partner)]
        o_min, o_max = min(pos, max(negs)), max(pos, max(negs))
        pos_terms.append(max(pos - o_min, 0.0))
        neg_terms += [max(o_max - s, 0.0) for s in negs]
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / len(neg_terms)


def views(seed: int, batch: int = 6, dim: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g) * 0.7 for _ in range(4)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_info_nce_matches_loop(seed, temperature):
    a, b, _, _ = views(seed)
    assert info_nce(a, b, temperature).item() == pytest.approx(loop_info_nce(a, b, temperature), abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_cl2_and_reg_match_loops(seed):
    h1, h2, z1, z2 = views(seed)
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    expected_cl2 = loop_info_nce(h1, z2) + loop_info_nce(h2, z1) + loop_info_nce(z1, z2)
    expected_reg = loop_regulariser(h1, z2) + loop_regulariser(h2, z1) + loop_regulariser(z1, z2)
    assert cl2_loss(h1, h2, z1, z2).item() == pytest.approx(expected_cl2, abs=1e-5)
    assert reg_loss(h1, h2, z1, z2).item() == pytest.approx(expected_reg, abs=1e-5)


def test_pair_scores_positives_and_excluded_columns():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    sim, pos, excluded = pair_scores(a, b)
    # z = [a0, a1, b0, b1]; partners 0<->2, 1<->3
    assert pos.tolist() == [3.0, 8.0, 3.0, 8.0]
    assert excluded.tolist() == [[True, False, True, False], [False, True, False, True],
                                 [True, False, True, False], [False, True, False, True]]
    assert sim[~excluded].tolist() == [0.0] * 8


def test_exclusion_offsets_match_masked_fill_in_value_and_gradient():
    torch.manual_seed(4)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    sim, pos, excluded = pair_scores(a, b)
    self_offset, excluded_offset = exclusion_offsets(excluded, sim.dtype)
    itself = torch.eye(10, dtype=torch.bool)
    assert torch.equal(self_offset == -torch.inf, itself) and torch.equal(excluded_offset == -torch.inf, excluded)
    assert set(self_offset[~itself].tolist()) == {0.0} and set(excluded_offset[~excluded].tolist()) == {0.0}

    x = torch.randn(10, 10, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    filled = x.masked_fill(excluded, -torch.inf)
    shifted = y + excluded_offset
    filled = torch.logsumexp(filled, 1).sum() + filled.max(1).values.sum()
    offset = torch.logsumexp(shifted, 1).sum() + shifted.max(1).values.sum()
    filled.backward()
    offset.backward()
    assert torch.equal(filled, offset) and torch.equal(x.grad, y.grad)


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # z = [e1, e2, e1, e1]; row0: pos z0.z2=1, negs z0.z1=0, z0.z3=1; row1: pos z1.z3=0, negs 0, 0
    # row2: pos z2.z0=1, negs z2.z1=0, z2.z3=1; row3: pos z3.z1=0, negs z3.z0=1, z3.z2=1
    rows = [-1 + math.log(math.e + 1 + math.e), -0 + math.log(3), -1 + math.log(math.e + 1 + math.e),
            -0 + math.log(1 + 2 * math.e)]
    assert info_nce(a, b).item() == pytest.approx(sum(rows) / 4, abs=1e-6)


def test_regulariser_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    # z = [e1, e2, 2e1, 0.5e2]. Rows: pos / negs
    # row0: pos 2, negs (z1, z3) = 0, 0   -> o_min 0, o_max 2: pos term 2, neg terms 2, 2
    # row1: pos 0.5, negs (z0, z2) = 0, 0 -> o_min 0, o_max 0.5: pos term 0.5, neg terms 0.5, 0.5
    # row2: pos 2, negs (z1, z3) = 0, 0   -> pos term 2, neg terms 2, 2
    # row3: pos 0.5, negs (z0, z2) = 0, 0 -> pos term 0.5, neg terms 0.5, 0.5
    expected = (2 + 0.5 + 2 + 0.5) / 4 + (2 + 2 + 0.5 + 0.5 + 2 + 2 + 0.5 + 0.5) / 8
    assert margin_regulariser(a, b).item() == pytest.approx(expected)


def test_regulariser_is_zero_when_positive_is_below_hardest_negative():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # every row: pos 0, negs {1, 0} -> o_min = 0 (pos), o_max = 1: pos term 0, neg terms 0 and 1
    assert margin_regulariser(a, b).item() == pytest.approx(0.5)


def test_regulariser_gradients_flow_through_margins():
    a, b, _, _ = views(9)
    a.requires_grad_(True)
    reg_loss(a, b, a, b).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_rec_ce_loss_is_full_softmax_cross_entropy():
    g = torch.Generator().manual_seed(0)
    h, weights = torch.randn(4, 3, generator=g), torch.randn(9, 3, generator=g)
    targets = torch.tensor([1, 5, 8, 2])
    expected = sum(-(h[i] @ weights[t]) + torch.logsumexp(weights @ h[i], 0) for i, t in enumerate(targets)) / 4
    assert rec_ce_loss(h, weights, targets).item() == pytest.approx(expected.item(), abs=1e-5)


def test_bpr_loss_hand_computed():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    weights = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # row0: s_pos = h0.w1 = 1, s_neg = h0.w3 = 0.5; row1: s_pos = h1.w2 = 2, s_neg = h1.w1 = 0
    expected = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    loss = bpr_loss(h, weights, torch.tensor([1, 2]), torch.tensor([3, 1]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sample_negatives_uniform_and_never_the_target():
    targets = torch.tensor([1, 3, 5]).repeat(5000)
    negatives = sample_negatives(targets, 5, torch.Generator().manual_seed(0))
    assert torch.all(negatives != targets) and negatives.min() >= 1 and negatives.max() <= 5
    for t in (1, 3, 5):
        counts = torch.bincount(negatives[targets == t], minlength=6)[1:].float() / 5000
        expected = torch.full((5,), 0.25)
        expected[t - 1] = 0.0
        assert torch.allclose(counts, expected, atol=0.03)
    again = sample_negatives(targets, 5, torch.Generator().manual_seed(0))
    assert torch.equal(negatives, again)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_equals_the_plain_formula_with_its_gradients(chunk):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(101, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 101, (13,), generator=g)
    targets[:3] = 5  # repeated targets: their gradient rows add up
    plain = F.cross_entropy(h @ weights.T, targets)
    plain_h, plain_w = torch.autograd.grad(plain, (h, weights))
    chunked = chunked_cross_entropy(h, weights, targets, chunk)
    chunked_h, chunked_w = torch.autograd.grad(chunked, (h, weights))
    torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked_h, plain_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked_w, plain_w, rtol=1e-12, atol=1e-12)


def test_rec_ce_loss_chunks_only_above_its_logits_budget():
    g = torch.Generator().manual_seed(4)
    h, weights = torch.randn(6, 4, generator=g), torch.randn(50, 4, generator=g)
    targets = torch.randint(0, 50, (6,), generator=g)
    plain = F.cross_entropy(h @ weights.T, targets)
    assert torch.equal(rec_ce_loss(h, weights, targets), plain)  # under the budget: the plain formula, bit for bit
    torch.testing.assert_close(rec_ce_loss(h, weights, targets, budget=6 * 10), plain, rtol=1e-6, atol=1e-6)
