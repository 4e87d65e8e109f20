"""Stochastic data augmentations g ~ G (paper Sec. 3.1.1, Eq. 4), vectorised over a right-padded batch.

Each operator takes (seq [B, L], lengths [B], ratio, generator) and returns (new_seq, new_lengths) on seq's
device; items sit at positions 0..len-1 and 0 is padding. Random numbers are drawn from `generator` on its own
device and then moved to seq's device, so a CPU generator also drives GPU batches reproducibly.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPERATORS = ("crop", "mask", "reorder")


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """U[0, 1) float64 samples from `generator`, returned on `device`; 53 random bits make sort-key ties negligible."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def count(lengths: Tensor, ratio: float) -> Tensor:
    """floor(ratio * len) per row, computed in float64 exactly as Python's math.floor(len * ratio)."""
    return torch.floor(lengths.to(torch.float64) * ratio).long()


def random_start(lengths: Tensor, window: Tensor, generator: torch.Generator) -> Tensor:
    """A start uniform in {0, ..., len - window} per row."""
    u = uniform(lengths.shape, generator, lengths.device)
    return torch.floor(u * (lengths - window + 1)).long()


def crop(seq: Tensor, lengths: Tensor, ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Keep a random contiguous window of max(floor(ratio*len), 1) items, moved to the left."""
    window = count(lengths, ratio).clamp(min=1)
    start = random_start(lengths, window, generator)
    positions = torch.arange(seq.shape[1], device=seq.device)
    source = (start[:, None] + positions).clamp(max=seq.shape[1] - 1)
    kept = positions < window[:, None]
    return torch.where(kept, seq.gather(1, source), 0), window


def mask(seq: Tensor, lengths: Tensor, ratio: float, generator: torch.Generator,
         mask_id: int = 0) -> tuple[Tensor, Tensor]:
    """Set floor(ratio*len) distinct random positions among the first len to `mask_id` (0: the padding id)."""
    positions = torch.arange(seq.shape[1], device=seq.device)
    keys = uniform(seq.shape, generator, seq.device).masked_fill(positions >= lengths[:, None], 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # rank of each position's key; padding ranks last
    return seq.masked_fill(rank < count(lengths, ratio)[:, None], mask_id), lengths


def reorder(seq: Tensor, lengths: Tensor, ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Shuffle a random contiguous sub-sequence of floor(ratio*len) items, uniformly over its permutations."""
    window = count(lengths, ratio)
    start = random_start(lengths, window, generator)
    positions = torch.arange(seq.shape[1], device=seq.device)
    inside = (positions >= start[:, None]) & (positions < (start + window)[:, None])
    # sort keys: a position outside keeps its index; inside ones get start + U[0,1) and so permute among themselves
    keys = torch.where(inside, start[:, None] + uniform(seq.shape, generator, seq.device), positions.to(torch.float64))
    return seq.gather(1, keys.argsort(dim=1)), lengths


def operator_pairs(batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """[B, 2] indices into OPERATORS: an ordered pair of distinct operators per row, uniform over the 6 pairs."""
    u = uniform((batch_size, 2), generator, device)
    first = torch.floor(u[:, 0] * 3).long()
    second = (first + 1 + torch.floor(u[:, 1] * 2).long()) % 3
    return torch.stack([first, second], dim=1)


def two_views(seq: Tensor, lengths: Tensor, generator: torch.Generator, crop_ratio: float = 0.5,
              mask_ratio: float = 0.5, reorder_ratio: float = 0.8,
              mask_id: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two views S~1 = g1(S), S~2 = g2(S) (Eq. 4) with distinct g1 != g2 per row; rows of length 1 are unchanged.

    Each operator is applied once to the whole batch and each row picks its two results, so a row's two views use
    independent randomness. `mask_id` is what the mask puts in place of an item. Returns (view1, lengths1, view2,
    lengths2).
    """
    pairs = operator_pairs(seq.shape[0], generator, seq.device)
    candidates = [crop(seq, lengths, crop_ratio, generator), mask(seq, lengths, mask_ratio, generator, mask_id),
                  reorder(seq, lengths, reorder_ratio, generator)]
    all_seqs = torch.stack([s for s, _ in candidates])  # [3, B, L]
    all_lengths = torch.stack([n for _, n in candidates])  # [3, B]
    rows = torch.arange(seq.shape[0], device=seq.device)
    augmentable = lengths > 1

    def pick(choice: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.where(augmentable[:, None], all_seqs[choice, rows], seq),
                torch.where(augmentable, all_lengths[choice, rows], lengths))

    view1, lengths1 = pick(pairs[:, 0])
    view2, lengths2 = pick(pairs[:, 1])
    return view1, lengths1, view2, lengths2
