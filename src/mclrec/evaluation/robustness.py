"""The paper's robustness studies: test-time noise (Fig. 7) and user groups by sequence length (Fig. 8)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mclrec.data.instances import Instances

LENGTH_GROUPS = (("=5", 5, 5), ("6-8", 6, 8), (">8", 9, None))
SHORTER = ("<5", 0, 4)  # only in datasets preprocessed with user_k < 5, so that every user is in a group


def insert_noise(instances: Instances, ratio: float, n_items: int, max_len: int, generator: torch.Generator) -> Instances:
    """Insert round(ratio * len) random items at random places of each input, keep the last max_len."""
    seq, lengths = instances.seq, instances.lengths
    rows, width = seq.shape
    device = seq.device
    n_noise = torch.round(lengths.double() * ratio).long()
    extra = int(n_noise.max()) if rows else 0
    positions = torch.arange(width, device=device).expand(rows, width)
    keys = torch.where(positions < lengths[:, None], positions.double(), torch.inf)
    noise_slots = torch.arange(extra, device=device).expand(rows, extra)
    noise_keys = torch.rand((rows, extra), generator=generator, device=device, dtype=torch.double) * lengths[:, None] - 0.5
    noise_keys = torch.where(noise_slots < n_noise[:, None], noise_keys, torch.inf)
    noise_items = torch.randint(1, n_items + 1, (rows, extra), generator=generator, device=device)
    order = torch.cat([keys, noise_keys], 1).argsort(dim=1, stable=True)
    merged = torch.cat([seq, noise_items], 1).gather(1, order)
    new_lengths = lengths + n_noise
    start = (new_lengths - max_len).clamp(min=0)
    take = start[:, None] + torch.arange(max_len, device=device)
    out = merged.gather(1, take.clamp(max=merged.shape[1] - 1))
    kept = torch.minimum(new_lengths, torch.tensor(max_len, device=device))
    out = torch.where(torch.arange(max_len, device=device) < kept[:, None], out, 0)
    return Instances(out, kept, instances.targets)


def length_groups(total_lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean row masks of users whose whole sequence has length =5, 6-8 and >8 (the paper's groups), and <5 first
    where some users are that short."""
    groups = {}
    shorter = (SHORTER,) if (total_lengths < 5).any() else ()
    for name, low, high in shorter + LENGTH_GROUPS:
        mask = total_lengths >= low
        if high is not None:
            mask &= total_lengths <= high
        groups[name] = mask
    return groups


def subset(instances: Instances, mask: Tensor) -> Instances:
    """Rows of `instances` where `mask` is true."""
    return Instances(instances.seq[mask], instances.lengths[mask], instances.targets[mask])
