"""Dropout with a faster keep-mask on the CPU (the same law as nn.Dropout)."""

from __future__ import annotations

from torch import Tensor, nn
import torch


class Dropout(nn.Dropout):
    """nn.Dropout; on the CPU the keep-mask comes from torch.rand, about 2x faster there than bernoulli_.

    The mask is made in place as floats (1/(1-p) where kept, else 0), so x is multiplied once and no bool tensor is
    converted. Each element is kept with probability 1 - p and scaled by 1/(1-p), as in nn.Dropout; only the way the
    random numbers are drawn differs, so a run's dropout masks differ from nn.Dropout's for the same seed.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.p == 1.0:
            return super().forward(x)
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
