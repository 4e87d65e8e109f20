"""What the training step is fed: a run's training instances and, per batch of row indices, a complete Batch.

Prefix instances for every model, or whole sequences for the original SASRec objective (loss bce); DuoRec's
same-target partners; the bce loss's unseen negatives; CL4SRec/MCLRec's two views (drawn in make_batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from mclrec.data.processed import ProcessedData
from mclrec.data.instances import Instances, sequence_training_instances, training_instances
from mclrec.run_config import RunConfig
from mclrec.training.batches import SameTargetIndex, SeenItems, batch_indices
from mclrec.training.objectives import Batch, make_batch, mask_id


def sync_free(device: torch.device | str) -> bool:
    """Whether a training step on `device` runs without host syncs: on CUDA, where every read of a device value
    (int(t), bool(t), t.tolist()) stalls the host until the GPU has caught up, and the launch queue runs dry.

    The CPU has nothing to wait for and keeps its exact path (batch-width trimming, a check of every loss before
    its update), so its numbers and logs stay those of earlier versions.
    """
    return torch.device(device).type == "cuda"


@dataclass
class TrainingFeed:
    """A run's training rows on the device and the indexes its batches need.

    trim: cut each batch's padding to its longest row (the CPU); sync-free feeds keep the full width max_len.
    """

    cfg: RunConfig
    instances: Instances
    same_target: Optional[SameTargetIndex]
    seen: Optional[SeenItems]
    masked_id: int
    trim: bool = True

    @classmethod
    def build(cls, cfg: RunConfig, data: ProcessedData, device: torch.device,
              sync_free_step: Optional[bool] = None) -> "TrainingFeed":
        """Instances and indexes for `cfg` (prefixes, or whole sequences when loss is bce) on `device`.

        sync_free_step: whether batches are built without host syncs (default: sync_free(device)).
        """
        if sync_free_step is None:
            sync_free_step = sync_free(device)
        sequences = cfg.loss == "bce"  # the original SASRec trains on whole sequences, not prefixes
        instances = sequence_training_instances(data, device) if sequences else training_instances(data, device)
        same_target = SameTargetIndex.build(instances.targets) if cfg.model == "duorec" else None
        seen = SeenItems.build(instances, data.n_items) if sequences else None
        return cls(cfg, instances, same_target, seen, mask_id(cfg, data.n_items), trim=not sync_free_step)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.instances) / self.cfg.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """The batches of one shuffled pass over the instances."""
        for index in batch_indices(len(self.instances), self.cfg.batch_size, generator, generator.device):
            yield self.batch(index, generator)

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        """The Batch of rows `index`: inputs, targets and whatever the model's loss needs, drawn from `generator`."""
        seq, lengths, targets = self.instances.rows(index, self.trim)
        partner = negatives = None
        if self.same_target is not None:
            partner = self.instances.rows(self.same_target.partners(index, targets, generator), self.trim)[:2]
        if self.seen is not None:
            negatives = self.seen.sample(index, tuple(targets.shape), generator)
        return make_batch(self.cfg, seq, lengths, targets, generator, partner, negatives, self.masked_id)
