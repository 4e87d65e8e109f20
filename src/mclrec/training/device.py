"""Device queries that the workflows can make without building anything."""

from __future__ import annotations


def cuda_available() -> bool:
    """Whether torch sees a CUDA device on this machine."""
    import torch

    return torch.cuda.is_available()
