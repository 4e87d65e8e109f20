"""Several trainings per GPU: each training process claims one slot of the least-loaded GPU before CUDA starts.

A slot is a lock file `<dir>/gpu<g>.slot<s>.lock` held with an exclusive advisory lock (fcntl.flock) for the
process's lifetime; the kernel releases it when the process ends, however it ends, so no slot leaks. The claimed
GPU becomes the process's only visible device (CUDA_VISIBLE_DEVICES), so the run trains on `cuda:0` there.
Snakemake caps how many trainings run at once with its `gpu_slots` resource (GPUs x slots per GPU), and each job
calls `claim` through `mclrec train --gpu-slots N`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Optional, Sequence

from mclrec.errors import MclrecError

DEFAULT_DIR = Path(".snakemake/gpu-slots")


def choose_gpu(held: dict[str, int], gpus: Sequence[str], per_gpu: int) -> Optional[str]:
    """The GPU to use next: the one with the fewest held slots (first in `gpus` on ties), None when all are full."""
    free = [g for g in gpus if held.get(g, 0) < per_gpu]
    return min(free, key=lambda g: (held.get(g, 0), list(gpus).index(g))) if free else None


def _try_lock(path: Path) -> Optional[IO]:
    """The open, exclusively locked file, or None when another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def held_slots(directory: Path, gpus: Sequence[str], per_gpu: int) -> dict[str, int]:
    """How many slots of each GPU are held now (a slot is held when its lock cannot be taken)."""
    held = {}
    for gpu in gpus:
        count = 0
        for slot in range(per_gpu):
            handle = _try_lock(directory / f"gpu{gpu}.slot{slot}.lock")
            if handle is None:
                count += 1
            else:
                handle.close()  # closing releases the probe's lock
        held[gpu] = count
    return held


def claim(gpus: Sequence[str], per_gpu: int, directory: Path = DEFAULT_DIR) -> tuple[str, IO]:
    """Claim a slot of the least-loaded GPU; returns the GPU id and the locked file (keep it open while training).

    Raises MclrecError when every slot is taken (the scheduler's gpu_slots resource should prevent that).
    """
    directory.mkdir(parents=True, exist_ok=True)
    held = held_slots(directory, gpus, per_gpu)
    while (gpu := choose_gpu(held, gpus, per_gpu)) is not None:
        for slot in range(per_gpu):
            handle = _try_lock(directory / f"gpu{gpu}.slot{slot}.lock")
            if handle is not None:
                return gpu, handle
        held[gpu] = per_gpu  # taken meanwhile by another process: look at the next GPU
    raise MclrecError(f"all {len(gpus)} GPUs x {per_gpu} slots in {directory} are taken; the scheduler's gpu_slots "
                      "resource should not exceed GPUs x slots per GPU")


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else 0..n-1 from the driver."""
    from mclrec.device import visible_gpu_count

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and not d.strip().startswith("-")]
    return [str(i) for i in range(visible_gpu_count())]


def claim_for_this_process(per_gpu: int, directory: Path = DEFAULT_DIR) -> Optional[IO]:
    """Claim a slot and narrow CUDA_VISIBLE_DEVICES to its GPU (before CUDA starts); None without GPUs."""
    gpus = visible_gpus()
    if not gpus:
        return None
    gpu, handle = claim(gpus, per_gpu, directory)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return handle
