"""Learnable model augmenters w_phi (paper Sec. 3.1.2, Eq. 5): z~ = w_phi(h~), [B, H] -> [B, H], L2-normalised.

The paper and the published runs use the MLP; the attention and CNN variants are small alternatives the published
code offers by name, designed here to act on the same [B, H] vector. Linear layers keep PyTorch's default
initialisation, as the published augmenters (built outside the model's RecBole init) do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPAugmenter(nn.Module):
    """3-layer MLP H -> H/2 -> H/4 -> H (64 -> 32 -> 16 -> 64), GELU between layers, L2-normalised output."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, hidden_size // 2)
        self.dense_2 = nn.Linear(hidden_size // 2, hidden_size // 4)
        self.dense_3 = nn.Linear(hidden_size // 4, hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        x = F.gelu(self.dense_1(h))
        x = F.gelu(self.dense_2(x))
        return F.normalize(self.dense_3(x), dim=-1)


class AttentionAugmenter(nn.Module):
    """Self-attention over the vector's chunks: h [B, H] is read as n_tokens tokens of size H/n_tokens.

    One single-head attention layer mixes the chunks (with a residual), then a Linear H -> H maps the flattened
    result back; the output is L2-normalised.
    """

    def __init__(self, hidden_size: int, n_tokens: int = 4):
        super().__init__()
        if hidden_size % n_tokens != 0:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_tokens {n_tokens}")
        self.n_tokens = n_tokens
        self.token_size = hidden_size // n_tokens
        self.query = nn.Linear(self.token_size, self.token_size)
        self.key = nn.Linear(self.token_size, self.token_size)
        self.value = nn.Linear(self.token_size, self.token_size)
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        tokens = h.view(h.shape[0], self.n_tokens, self.token_size)
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) / math.sqrt(self.token_size)
        mixed = tokens + torch.softmax(scores, dim=-1) @ self.value(tokens)
        return F.normalize(self.dense(mixed.flatten(1)), dim=-1)


class CNNAugmenter(nn.Module):
    """1-D convolutions along the hidden dimension: h [B, H] as a 1-channel signal of length H.

    Conv1d(1 -> channels, k) and GELU, Conv1d(channels -> 1, k) and GELU (same padding, length kept), then a
    Linear H -> H; the output is L2-normalised.
    """

    def __init__(self, hidden_size: int, channels: int = 4, kernel_size: int = 3):
        super().__init__()
        self.conv_1 = nn.Conv1d(1, channels, kernel_size, padding=kernel_size // 2)
        self.conv_2 = nn.Conv1d(channels, 1, kernel_size, padding=kernel_size // 2)
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        x = F.gelu(self.conv_1(h[:, None, :]))
        x = F.gelu(self.conv_2(x))
        return F.normalize(self.dense(x[:, 0, :]), dim=-1)


AUGMENTERS: dict[str, type[nn.Module]] = {"mlp": MLPAugmenter, "attention": AttentionAugmenter, "cnn": CNNAugmenter}


def build_augmenter(kind: str, hidden_size: int) -> nn.Module:
    """A fresh augmenter of the given kind ('mlp', 'attention' or 'cnn')."""
    if kind not in AUGMENTERS:
        raise ValueError(f"unknown augmenter kind {kind!r}; choose one of {sorted(AUGMENTERS)}")
    return AUGMENTERS[kind](hidden_size)
