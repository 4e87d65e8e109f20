"""times_transposed (oneDNN's float32 inner product on x86 CPUs) against torch's a @ b.T, and L_rec through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mclrec.models.cpu_products import onednn_available, times_transposed, uses_onednn
from mclrec.models.fused_losses import cross_entropy

# float32 products of 64- and 300-term dot products: a few ulps of the largest output
F32 = dict(rtol=1e-5, atol=1e-5)


def _matrices(m: int, n: int, k: int, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g, dtype=dtype), torch.randn(n, k, generator=g, dtype=dtype)


@pytest.mark.parametrize("m, n, k", [(256, 1000, 64), (7, 3, 5), (0, 9, 4), (6, 0, 4)])
def test_times_transposed_is_a_times_b_transposed(m, n, k):
    a, b = _matrices(m, n, k)
    out = times_transposed(a, b)
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, a @ b.T, **F32)


def test_a_transposed_view_as_b_gives_the_product_with_b_itself():
    """L_rec's input gradient G W is times_transposed(G, W.T): a strided view as the second operand."""
    grad, w = _matrices(40, 16, 300)  # G [40, 300], and W^T as a [16, 300] view of W [300, 16]
    w = w.T.contiguous()
    torch.testing.assert_close(times_transposed(grad, w.T), grad @ w, **F32)


def test_the_kernel_is_onednn_only_for_float32_cpu_tensors_without_autograd():
    a, b = _matrices(8, 5, 4)
    assert uses_onednn(a, b) == onednn_available()
    assert not uses_onednn(a.double(), b.double())
    assert not uses_onednn(a.requires_grad_(), b)
    with torch.no_grad():
        assert uses_onednn(a, b) == onednn_available()


def test_other_dtypes_take_torchs_product_bit_for_bit():
    a, b = _matrices(30, 20, 8, dtype=torch.float64)
    assert torch.equal(times_transposed(a, b), a @ b.T)


def test_repeated_products_are_bit_identical():
    """Same inputs, same outputs: a run's numbers depend on its seed only."""
    a, b = _matrices(256, 2000, 64, seed=3)
    first = times_transposed(a, b)
    assert all(torch.equal(first, times_transposed(a, b)) for _ in range(3))


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN inner product on x86")
def test_float32_cross_entropy_through_onednn_matches_the_plain_formula():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(64, 32, generator=g).requires_grad_()
    w = (0.1 * torch.randn(3000, 32, generator=g)).requires_grad_()
    targets = torch.randint(0, 3000, (64,), generator=g)
    fused = cross_entropy(h, w, targets)
    plain = F.cross_entropy(h @ w.T, targets)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(torch.autograd.grad(fused, (h, w)), torch.autograd.grad(plain, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_flop_counts_include_the_products_whichever_kernel_runs_them():
    """bench_train's FLOP counts (FlopCounterMode) must see oneDNN's products as they see torch's."""
    from torch.utils.flop_counter import FlopCounterMode

    a, b = _matrices(32, 50, 16)
    grad = torch.randn(32, 50)
    with FlopCounterMode(display=False) as counter:
        times_transposed(a, b)
        times_transposed(grad, b.T)
    assert counter.get_total_flops() == 2 * (2 * 32 * 50 * 16)


def test_full_ranking_scores_are_the_read_outs_times_items_1_to_n():
    """SASRecEncoder.full_scores (evaluation, recommend) goes through times_transposed without autograd; with it,
    h @ W[1:n+1]^T, column j for item j + 1 (padding row 0 left out)."""
    from mclrec.models.encoder import SASRecEncoder

    encoder = SASRecEncoder(n_items=40, hidden_size=16, max_len=8)
    h = torch.randn(6, 16)
    items = encoder.item_embedding.weight[1:41]
    with torch.no_grad():
        assert uses_onednn(h, items) == onednn_available()
        torch.testing.assert_close(encoder.full_scores(h), h @ items.T, **F32)
    scores = encoder.full_scores(h)  # with autograd through the weights: torch's product, as before
    assert scores.requires_grad and torch.equal(scores.detach(), (h @ items.T).detach())


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN inner product on x86")
@pytest.mark.parametrize("broken", ["raises", "wrong numbers"])
def test_a_build_whose_operator_misbehaves_keeps_torchs_product(broken, monkeypatch):
    """The operator is private: if a PyTorch release changes it, products fall back instead of failing or lying."""
    def operator(a, b, *args):
        if broken == "raises":
            raise RuntimeError("unknown signature")
        return a @ b.T + 1

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", operator)
    onednn_available.cache_clear()
    try:
        assert not onednn_available()
        a, b = _matrices(5, 4, 3)
        assert torch.equal(times_transposed(a, b), a @ b.T)
    finally:
        monkeypatch.undo()
        onednn_available.cache_clear()
    assert onednn_available()


def test_strided_operands_give_the_same_product():
    """Read-outs may arrive as views (a transposed or every-other-column operand); the product must not care."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(64, 300, generator=g).T  # [300, 64], column-major
    b = torch.randn(500, 128, generator=g)[:, ::2]  # [500, 64], every other column
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(times_transposed(a, b), a @ b.T, **F32)
