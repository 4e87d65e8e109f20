"""Shuffled batches, DuoRec's same-target partners and the bce loss's unseen negatives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from mclrec.data.instances import Instances


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """A random permutation of 0..n-1 cut into batches (the last one may be smaller)."""
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    yield from order.split(batch_size)


@dataclass
class SameTargetIndex:
    """Instances grouped by target item, for drawing another instance with the same target."""

    order: Tensor
    group_start: Tensor
    group_size: Tensor
    rank_in_group: Tensor

    @classmethod
    def build(cls, targets: Tensor) -> "SameTargetIndex":
        """Group instance ids by target with one stable sort."""
        order = torch.argsort(targets, stable=True)
        sorted_targets = targets[order]
        counts = torch.bincount(targets)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=targets.device) - starts[sorted_targets]
        return cls(order, starts, counts, rank)

    def partners(self, index: Tensor, targets: Tensor, generator: torch.Generator) -> Tensor:
        """For each instance in `index`, a random other instance with the same target (itself if alone)."""
        size = self.group_size[targets]
        others = (size - 1).clamp(min=1)
        draw = (torch.rand(index.shape, generator=generator, device=generator.device).to(size.device) * others).long()
        own = self.rank_in_group[index]
        pick = torch.where(size > 1, draw + (draw >= own).long(), own)
        return self.order[self.group_start[targets] + pick]


@dataclass
class SeenItems:
    """The items of each training row (input and target), for drawing negatives the user never had in training.

    Membership is one sorted key array (row * stride + item) and a searchsorted, so a batch is checked at once.
    The held-out valid/test items are not excluded: that would let the training see them.
    """

    keys: Tensor
    stride: int
    n_items: int

    MAX_ROUNDS = 1000

    @classmethod
    def build(cls, instances: Instances, n_items: int) -> "SeenItems":
        """Index the items of every row of sequence instances (inputs and next items)."""
        stride = n_items + 1
        rows = torch.arange(len(instances), device=instances.seq.device)[:, None]
        keys = torch.cat([(rows * stride + instances.seq).flatten(), (rows * stride + instances.targets).flatten()])
        return cls(torch.unique(keys), stride, n_items)  # padding (item 0) keys are harmless: 0 is never drawn

    def contains(self, rows: Tensor, items: Tensor) -> Tensor:
        """Whether items[b, t] is among the training items of row rows[b]."""
        keys = rows[:, None] * self.stride + items
        found = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[found] == keys

    def sample(self, rows: Tensor, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
        """[B, L] items uniform over 1..n_items minus each row's training items (rejection sampling, seeded)."""
        def draw(size: tuple[int, ...]) -> Tensor:
            return torch.randint(1, self.n_items + 1, size, generator=generator, device=generator.device).to(rows.device)

        items = draw(shape)
        for _ in range(self.MAX_ROUNDS):
            seen = self.contains(rows, items)
            if not bool(seen.any()):
                return items
            items[seen] = draw((int(seen.sum()),))
        raise RuntimeError(f"no unseen negative item after {self.MAX_ROUNDS} draws: a user has nearly every item")
