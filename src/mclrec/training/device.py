"""Device queries that the workflows can make without building anything, and the CUDA determinism switch."""

from __future__ import annotations

import os

CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def cuda_available() -> bool:
    """Whether torch sees a CUDA device on this machine."""
    import torch

    return torch.cuda.is_available()


def enable_determinism() -> None:
    """Deterministic CUDA kernels or a RuntimeError: fixed cuBLAS workspace, torch's deterministic algorithms.

    Call before the first CUDA operation; the CPU is deterministic for a seed without it. Untested on a GPU here.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
