"""A processed dataset's rows as device tensors: training prefixes or sequences, and one row per user to evaluate."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mclrec.data.processed import ProcessedData, padded_inputs, prefix_instances, sequence_instances


@dataclass
class Instances:
    """Right-padded inputs [N, L], their lengths and targets ([N], or [N, L] next items per position), on one device."""

    seq: Tensor
    lengths: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def rows(self, index: Tensor, trim: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Rows `index`, padding trimmed to the longest of them (exact: right padding, causal attention).

        trim=False keeps the full width L: reading the longest length is a host sync, which a CUDA training step
        avoids (feed.sync_free); the encoder computes the same function of a row either way.
        """
        lengths = self.lengths[index]
        targets = self.targets[index]
        if not trim:
            return self.seq[index], lengths, targets
        width = int(lengths.max())
        return self.seq[index, :width], lengths, targets[:, :width] if targets.dim() == 2 else targets


def training_instances(data: ProcessedData, device: torch.device) -> Instances:
    """All prefix instances of the training part (RecBole style), on `device`."""
    seq, lengths, targets, _ = prefix_instances(data.train, data.max_len)
    return _to_device(seq, lengths, targets, device)


def sequence_training_instances(data: ProcessedData, device: torch.device) -> Instances:
    """One row per user: the training sequence's inputs and the next item at every position (original SASRec)."""
    seq, lengths, nexts, _ = sequence_instances(data.train, data.max_len)
    return _to_device(seq, lengths, nexts, device)


def eval_instances(data: ProcessedData, split: str, device: torch.device) -> Instances:
    """One row per user of the valid or test split, on `device`."""
    seq, lengths, targets, _ = padded_inputs(getattr(data, split), data.max_len)
    return _to_device(seq, lengths, targets, device)


def _to_device(seq, lengths, targets, device: torch.device) -> Instances:
    """Numpy arrays as int64 tensors on `device`."""
    return Instances(*(torch.as_tensor(a, dtype=torch.long).to(device) for a in (seq, lengths, targets)))
