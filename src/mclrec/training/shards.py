"""A process's rows of a batch split over several processes, and the gather that gives it every row back.

Every process builds the same whole batch (training/distributed.py); process r keeps a contiguous block of its
rows, the blocks as equal as the batch allows (sizes differ by at most one; a batch smaller than the number of
processes leaves some with none). The contrastive losses compare each row with every row of the batch, so the
encodings are gathered from all processes with their gradients: the gather's backward hands each process the sum,
over all processes, of the gradients computed for its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mclrec.models.losses import Rows


@dataclass(frozen=True)
class Shard:
    """Process `rank`'s rows of one batch; `counts` holds the row count of every process, in rank order."""

    counts: tuple[int, ...]
    rank: int

    @classmethod
    def of(cls, total: int, world_size: int, rank: int) -> Shard:
        """The split of a batch of `total` rows over `world_size` processes: the first total % world_size processes
        take one row more."""
        base, extra = divmod(total, world_size)
        return cls(tuple(base + (r < extra) for r in range(world_size)), rank)

    @property
    def rows(self) -> Rows:
        start = sum(self.counts[:self.rank])
        return Rows(start, start + self.counts[self.rank], sum(self.counts))


def gather_rows(shard: Shard, *xs: Tensor) -> list[Tensor]:
    """The whole batch's rows [total, ...] of each of `xs` (this process's rows [count, ...]), differentiable.

    They travel as one tensor (side by side), so a loss makes one gather and its backward one all-reduce: with a
    single collective in each backward, the processes cannot pair up their backward collectives in different
    orders. all_gather needs equal sizes, so each process pads its block to the largest and the padding is dropped
    again; the sizes are known to every process (no exchange). The padding gets no gradient.
    """
    joined = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
    width = max(shard.counts)
    padded = F.pad(joined, (0, 0) * (joined.dim() - 1) + (0, width - joined.shape[0]))
    blocks = _AllGather.apply(padded, shard.rank).split(width)
    whole = torch.cat([block[:count] for block, count in zip(blocks, shard.counts)])
    return [whole] if len(xs) == 1 else list(whole.split([x.shape[1] for x in xs], dim=1))


class _AllGather(torch.autograd.Function):
    """Every process's block (all of one shape), concatenated in rank order.

    backward: every process holds the gradient of its own loss share with respect to all blocks; their sum over the
    processes (one all-reduce) is the gradient of the whole loss, and each process takes its own block of it.
    """

    @staticmethod
    def forward(ctx, block: Tensor, rank: int) -> Tensor:
        ctx.rank, ctx.width = rank, block.shape[0]
        blocks = [torch.empty_like(block) for _ in range(dist.get_world_size())]
        dist.all_gather(blocks, block.contiguous())
        return torch.cat(blocks)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed)
        return summed.narrow(0, ctx.rank * ctx.width, ctx.width), None
