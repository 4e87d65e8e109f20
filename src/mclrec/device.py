"""The run device (`auto` resolution), device queries the workflows make without building anything, and the CUDA
determinism switch."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from mclrec.errors import MclrecError

if TYPE_CHECKING:  # torch is imported lazily: the Snakefile reads this module when it parses
    import torch

CUBLAS_WORKSPACE_CONFIG = ":4096:8"


DEVICE_NAMES = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?|mps)$")  # params.schema.yaml's pattern for `device`


def check_device_name(name: str) -> str:
    """`name` if it is a device setting (auto, cpu, cuda, cuda:N, mps), else a one-line MclrecError."""
    if not DEVICE_NAMES.match(str(name)):
        raise MclrecError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    return name


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; cpu, cuda, cuda:N and mps are passed to torch."""
    import torch

    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MclrecError(f"device '{name}' requested but CUDA is not available (use device=auto or cpu)")
    return device


def cuda_available() -> bool:
    """Whether torch sees a CUDA device on this machine."""
    import torch

    return torch.cuda.is_available()


def visible_gpu_count(driver_dir: str = "/proc/driver/nvidia/gpus") -> int:
    """NVIDIA GPUs this process may use, without importing torch (the Snakefile calls it while parsing):
    the driver's GPU list, narrowed by CUDA_VISIBLE_DEVICES when set; 0 without the driver."""
    try:
        present = len(os.listdir(driver_dir))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    return min(present, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def enable_determinism() -> None:
    """Deterministic CUDA kernels or a RuntimeError: fixed cuBLAS workspace, torch's deterministic algorithms.

    Call before the first CUDA operation; the CPU is deterministic for a seed without it. Untested on a GPU here.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
