"""The fused losses (one autograd node each, closed-form gradients) against the plain formulas, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mclrec.data.instances import training_instances
from mclrec.models.fused_losses import cross_entropy, pair_losses
from mclrec.models.losses import cl2_and_reg, info_nce, margin_regulariser, rec_ce_loss
from mclrec.training.objectives import build_parts, encoder_loss, make_batch

TOL = dict(rtol=1e-12, atol=1e-13)


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


def _leaf(*shape: int, generator: torch.Generator, integer: bool = False) -> torch.Tensor:
    if integer:  # small integers: equal scores, so ties in R's max, min and relu, are common
        return torch.randint(-1, 2, shape, generator=generator).double().requires_grad_()
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("total", [None, 20])
def test_cross_entropy_equals_the_plain_formula_and_its_gradients(total):
    g = torch.Generator().manual_seed(0)
    h, w = _leaf(9, 6, generator=g), _leaf(13, 6, generator=g)
    targets = torch.tensor([0, 3, 3, 12, 5, 5, 5, 1, 7])  # repeated targets add up in the weights' gradient
    plain = F.cross_entropy(h @ w.T, targets, reduction="mean" if total is None else "sum")
    plain = plain if total is None else plain / total
    fused = cross_entropy(h, w, targets, total)
    torch.testing.assert_close(fused, plain, **TOL)
    for a, b in zip(_grads(2.5 * fused, h, w), _grads(2.5 * plain, h, w)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("loss_of", [lambda h, w: cross_entropy(h, w, torch.tensor([1, 2, 3, 4, 5])),
                                     lambda h, w: sum(pair_losses(h, w[:5]))], ids=["cross_entropy", "pair_losses"])
def test_a_second_backward_through_a_fused_loss_is_refused(loss_of):
    """The backward turns the saved exponentials into the gradient in place: a second one must not reuse them."""
    g = torch.Generator().manual_seed(1)
    h, w = _leaf(5, 4, generator=g), _leaf(8, 4, generator=g)
    loss = loss_of(h, w)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_rec_ce_loss_fused_matches_plain_and_large_catalogs_stay_chunked():
    g = torch.Generator().manual_seed(2)
    h, w = _leaf(6, 5, generator=g), _leaf(40, 5, generator=g)
    targets = torch.randint(0, 40, (6,), generator=g)
    plain, fused = rec_ce_loss(h, w, targets), rec_ce_loss(h, w, targets, fused=True)
    torch.testing.assert_close(fused, plain, **TOL)
    chunked = rec_ce_loss(h, w, targets, budget=6 * 39, fused=True)  # over the budget: the chunked path
    assert chunked.grad_fn.name() == "_ChunkedCrossEntropyBackward"
    torch.testing.assert_close(chunked, plain, **TOL)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pair_nce_equals_info_nce(temperature):
    g = torch.Generator().manual_seed(3)
    a, b = _leaf(7, 4, generator=g), _leaf(7, 4, generator=g)
    plain = info_nce(a, b, temperature)
    fused, reg = pair_losses(a, b, temperature, with_margin=False)
    assert reg.item() == 0.0
    torch.testing.assert_close(fused, plain, **TOL)
    torch.testing.assert_close(info_nce(a, b, temperature, fused=True), plain, **TOL)
    for x, y in zip(_grads(1.7 * fused, a, b), _grads(1.7 * plain, a, b)):
        torch.testing.assert_close(x, y, **TOL)


@pytest.mark.parametrize("seed", range(60))
def test_pair_losses_equal_the_plain_formulas_ties_included(seed):
    """Values and gradients of any weighting of L_con and R, also when scores tie (integer inputs, every third seed
    real-valued), and with only one of the two losses used."""
    g = torch.Generator().manual_seed(seed)
    integer = seed % 3 != 0
    a, b = _leaf(5, 3, generator=g, integer=integer), _leaf(5, 3, generator=g, integer=integer)
    for weights in ((0.3, 1.9), (1.0, 0.0), (0.0, 1.0)):
        nce, reg = pair_losses(a, b)
        plain_nce, plain_reg = info_nce(a, b), margin_regulariser(a, b)
        torch.testing.assert_close(nce, plain_nce, **TOL)
        torch.testing.assert_close(reg, plain_reg, **TOL)
        fused_total = weights[0] * nce + weights[1] * reg
        plain_total = weights[0] * plain_nce + weights[1] * plain_reg
        for x, y in zip(_grads(fused_total, a, b), _grads(plain_total, a, b)):
            torch.testing.assert_close(x, y, **TOL)
    only_reg = _grads(pair_losses(a, b)[1], a, b)  # the other output unused: its gradient is None
    for x, y in zip(only_reg, _grads(margin_regulariser(a, b), a, b)):
        torch.testing.assert_close(x, y, **TOL)


@pytest.mark.parametrize("with_reg", [True, False])
def test_fused_cl2_and_reg_equal_the_plain_ones_with_the_views_fixed(with_reg):
    """As in MCLRec's augmenter step: h1, h2 without gradient, z1, z2 from augmenters with it."""
    g = torch.Generator().manual_seed(4)
    h1, h2 = _leaf(6, 4, generator=g).detach(), _leaf(6, 4, generator=g).detach()
    z1, z2 = _leaf(6, 4, generator=g), _leaf(6, 4, generator=g)
    plain_cl2, plain_reg = cl2_and_reg(h1, h2, z1, z2, with_reg=with_reg)
    cl2, reg = cl2_and_reg(h1, h2, z1, z2, with_reg=with_reg, fused=True)
    torch.testing.assert_close(cl2, plain_cl2, **TOL)
    if not with_reg:
        assert reg is None and plain_reg is None
        plain_total, total = plain_cl2, cl2
    else:
        torch.testing.assert_close(reg, plain_reg, **TOL)
        plain_total, total = plain_cl2 + 0.1 * plain_reg, cl2 + 0.1 * reg
    for x, y in zip(_grads(total, z1, z2), _grads(plain_total, z1, z2)):
        torch.testing.assert_close(x, y, **TOL)


@pytest.mark.parametrize("variant", ["sasrec", "cl4srec", "duorec", "mclrec"])
def test_the_setting_chooses_the_losses_of_a_training_step(tiny, run_cfg, variant):
    """The same batch and weights, without dropout: fused_losses true and false give one L0 and one gradient (float32
    rounding apart), and only true builds the fused nodes."""
    grads, losses, nodes = {}, {}, {}
    for fused in (False, True):
        cfg = run_cfg(variant, fused_losses=fused, hidden_dropout=0.0, attn_dropout=0.0)
        torch.manual_seed(0)
        parts = build_parts(cfg, tiny.n_items)
        generator = torch.Generator().manual_seed(0)
        seq, lengths, targets = training_instances(tiny, torch.device("cpu")).rows(torch.arange(64))
        partner = (seq.flip(0), lengths.flip(0)) if variant == "duorec" else None  # any rows serve as partners here
        batch = make_batch(cfg, seq, lengths, targets, generator, partner=partner)
        loss, _ = encoder_loss(cfg, parts, batch, generator)
        loss.backward()
        losses[fused] = loss.detach()
        grads[fused] = [p.grad.clone() for p in parts.encoder.parameters() if p.grad is not None]
        nodes[fused] = _node_names(loss.grad_fn)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "_CrossEntropyBackward" in nodes[True] and "_CrossEntropyBackward" not in nodes[False]
    assert ("_PairLossesBackward" in nodes[True]) == (variant != "sasrec")
    assert "_PairLossesBackward" not in nodes[False]


def _node_names(node, seen=None) -> set[str]:
    """The names of every autograd node reachable from `node`."""
    seen = set() if seen is None else seen
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {n.name() for n in seen}
