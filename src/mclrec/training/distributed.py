"""One training over several processes (torch.distributed): gloo on the CPU, NCCL on CUDA (rank r on cuda:LOCAL_RANK).

Why a step over N processes is the one-process step of the same global batch:

- Every process builds the same whole batch: the run's generator is seeded alike everywhere and every draw the
  data needs (shuffle, augmentations, DuoRec partners, negatives) is made for the whole batch, as one process
  makes it. Process r then keeps its block of rows (shards.Shard). Only dropout differs: it draws from torch's
  global RNG, seeded per process after the (identical) initialisation.
- Each loss is a mean over the batch's rows, so process r computes L_r, the sum of its rows' terms divided by the
  whole batch's count (models/losses.py), and sum_r L_r = L, the one-process loss. The contrastive losses need
  every row as a column: the encodings are gathered with their gradients (shards.gather_rows).
- theta enters L through each process's own rows (its encodings) only, so dL/dtheta = sum_r sum_s dL_s/dh_r
  dh_r/dtheta. Process r's backward of L_r gives dL_r/dtheta through its local graph, and the gather's backward
  hands it sum_s dL_s/dh_r for its rows h_r; all-reducing (summing) the parameter gradients of the step's
  optimiser then gives every process sum_r (...) = dL/dtheta exactly, up to the order of float additions.
  Each of MCLRec's steps does this for the parameters it updates (theta in steps 1 and 3, phi in step 2), before
  its optimiser steps; the same Adam on the same gradient keeps the parameters identical on every process.

The loss terms ride in the same all-reduce (one collective per update), so every process checks and logs the
whole batch's loss. Validation ranks each process's block of users and gathers the ranks, so every process
computes the one-process metrics and takes the same early-stopping decision.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mclrec.data.instances import Instances
from mclrec.data.processed import ProcessedData
from mclrec.device import resolve_device
from mclrec.evaluation.metrics import metrics_from_ranks
from mclrec.evaluation.ranking import rank_all
from mclrec.models.encoder import SASRecEncoder
from mclrec.training.errors import TrainingError
from mclrec.training.objectives import Batch
from mclrec.training.shards import Shard, gather_rows

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails (a hung process)


@dataclass(frozen=True)
class Group:
    """This process's place in a training over several processes (torch's default process group)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def from_env(cls, device_setting: str) -> Group | None:
        """The process group torchrun's environment describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
        MASTER_PORT), initialised; None for a single process. The device is cuda:LOCAL_RANK when `device_setting`
        resolves to CUDA (an explicit index is refused: each process takes its own GPU), else the CPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        device = resolve_device(device_setting)
        if device.type == "cuda":
            if device.index is not None:
                raise TrainingError(f"device {device_setting}: a training over {world_size} processes puts each on "
                                    "its own GPU (cuda:LOCAL_RANK); use device cuda or auto")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise TrainingError(f"device {device_setting}: several processes train on the CPU (gloo) or on CUDA "
                                "(NCCL) only")
        if not dist.is_initialized():
            dist.init_process_group(BACKENDS[device.type], timeout=TIMEOUT,
                                    device_id=device if device.type == "cuda" else None)
        return cls(rank, world_size, local_rank, device)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the summary."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def local(self, batch: Batch) -> Batch:
        """This process's rows of the whole batch (every tensor of it cut alike), with their Shard.

        A process without rows (a last batch smaller than the number of processes) contributes zero to the loss and
        the gradients, but takes part in every collective.
        """
        shard = Shard.of(len(batch.targets), self.world_size, self.rank)
        rows = shard.rows

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows.start:rows.stop]

        def cut_pair(pair: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
            return None if pair is None else (cut(pair[0]), cut(pair[1]))

        positions = (batch.targets != 0).sum() if batch.targets.dim() == 2 else None  # loss bce: its mean's count
        return replace(batch, seq=cut(batch.seq), lengths=cut(batch.lengths), targets=cut(batch.targets),
                       view1=cut_pair(batch.view1), view2=cut_pair(batch.view2), partner=cut_pair(batch.partner),
                       negatives=cut(batch.negatives), shard=shard, positions=positions, packed={})

    def all_objects(self, value: Any) -> list[Any]:
        """`value` of every process, in rank order (pickled; for small things: states, checksums)."""
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value)
        return found

    def agree(self, what: str, values: dict[str, Any]) -> None:
        """Raise a TrainingError naming each entry of `values` that is not the same on every process (of a dict
        entry, the keys that differ), with each process's value."""
        every = self.all_objects(values)
        details = []
        for key in values:
            seen = [other[key] for other in every]
            if all(value == seen[0] for value in seen):
                continue
            if isinstance(seen[0], dict):
                keys = sorted({k for value in seen for k in value if any(v.get(k) != seen[0].get(k) for v in seen)})
                seen = [{k: value.get(k) for k in keys} for value in seen]
            details.append(f"{key}: " + ", ".join(f"rank {rank} {value}" for rank, value in enumerate(seen)))
        if details:
            raise TrainingError(f"the {self.world_size} processes disagree about {what} ({'; '.join(details)})")

    def evaluate(self, encoder: SASRecEncoder, instances: Instances, batch_size: int, ks: Sequence[int],
                 length_buckets: Sequence[int] = ()) -> dict[str, float]:
        """ranking.evaluate over the processes: each ranks its block of users, every process gets all ranks and
        computes the one-process metrics from them."""
        shard = Shard.of(len(instances), self.world_size, self.rank)
        rows = shard.rows
        local = Instances(instances.seq[rows.start:rows.stop], instances.lengths[rows.start:rows.stop],
                          instances.targets[rows.start:rows.stop])
        ranks = (rank_all(encoder, local, batch_size, length_buckets) if rows.count
                 else torch.zeros(0, dtype=torch.long))
        (every,) = gather_rows(shard, ranks.to(self.device))
        return metrics_from_ranks(every.cpu(), tuple(ks))


def reduce_step(parameters: Sequence[nn.Parameter], terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sum the parameters' gradients and the loss terms over the processes, in one all-reduce; return the
    summed terms (the whole batch's). A parameter keeps no gradient only when no process gave it one."""
    dtype = parameters[0].dtype
    pieces = [p.grad.reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype,
                                                                                  device=p.device)
              for p in parameters]
    values = torch.stack([v.detach() for v in terms.values()])
    missing = any(p.grad is None for p in parameters)
    # whether each process had a gradient, counted; built on the device (no host copy) when all had one here
    has_grad = (torch.tensor([p.grad is not None for p in parameters], dtype=dtype, device=values.device) if missing
                else torch.ones(len(parameters), dtype=dtype, device=values.device))
    buffer = torch.cat(pieces + [values.to(dtype), has_grad])
    dist.all_reduce(buffer)
    sizes = [p.numel() for p in parameters] + [len(values), len(parameters)]
    *grads, summed, counts = buffer.split(sizes)
    present = counts.tolist() if missing else [1.0] * len(parameters)  # counts >= 1 everywhere when none is missing
    for p, grad, count in zip(parameters, grads, present):
        p.grad = grad.view_as(p) if count > 0 else None
    return dict(zip(terms, summed.to(values.dtype)))


def dropout_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s torch RNG (dropout): independent streams per (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def data_fingerprint(data: ProcessedData) -> str:
    """sha256 of the processed splits and sizes: equal on every process, or they train on different data."""
    digest = hashlib.sha256(f"{data.n_users} {data.n_items} {data.max_len}".encode())
    for split in (data.train, data.valid, data.test):
        for array in (split.users, split.offsets, split.items, split.targets):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def parameters_fingerprint(modules: dict[str, nn.Module]) -> str:
    """sha256 of every module's weights, bit for bit (the processes must hold the same model)."""
    digest = hashlib.sha256()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
