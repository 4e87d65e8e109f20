"""Learnable augmenters: shapes, normalisation, trainability, the factory."""

from __future__ import annotations

import pytest
import torch

from mclrec.models.augmenters import MLPAugmenter, build_augmenter


@pytest.mark.parametrize("kind", ["mlp", "attention", "cnn"])
def test_augmenters_map_to_unit_vectors(kind):
    torch.manual_seed(0)
    augmenter = build_augmenter(kind, 64)
    h = torch.randn(8, 64, requires_grad=True)
    z = augmenter(h)
    assert z.shape == (8, 64)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(8))
    z.sum().backward()
    assert all(p.grad is not None for p in augmenter.parameters())
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_mlp_dims_derive_from_hidden_size():
    shapes = [tuple(p.shape) for name, p in MLPAugmenter(64).named_parameters() if name.endswith("weight")]
    assert shapes == [(32, 64), (16, 32), (64, 16)]
    assert [tuple(p.shape) for n, p in MLPAugmenter(128).named_parameters() if n.endswith("weight")][1] == (32, 64)


@pytest.mark.parametrize("kind", ["mlp", "attention", "cnn"])
def test_rows_are_processed_independently(kind):
    torch.manual_seed(0)
    augmenter = build_augmenter(kind, 32)
    h = torch.randn(5, 32)
    torch.testing.assert_close(augmenter(h)[2:3], augmenter(h[2:3]))


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match=r"\['attention', 'cnn', 'mlp'\]"):
        build_augmenter("gru", 64)
