"""glibc malloc settings for CPU training: keep the memory a step frees for the next step.

A training step allocates and frees the same large tensors every step (L_rec's [batch, items] logits and their
gradient, the packed activations). glibc hands a freed block back to the kernel when it was above its mmap
threshold or when the free space at the top of the heap exceeds its trim threshold, so the next step page-faults
the same memory back in, zero-filled by the kernel: about 16,500 page faults (65 MB) and 40 ms of kernel CPU time
per MCLRec step on Beauty (docs/performance.md, "The CPU heap"). Raising both thresholds keeps that memory in the
process: 1,100 faults and 5 ms. The numbers a run computes do not change; only where its memory comes from.

The faults that remain come from blocks the heap cannot reuse in place (a 12 MB logits tensor whose old place was
taken by smaller blocks): the kernel faults a fresh block in 4 KiB at a time, up to 3,000 faults and 20 ms for
one logits tensor on a virtual machine. `mclrec` commands therefore also ask PyTorch's CPU allocator to put blocks
of 2 MiB and more on transparent huge pages (`THP_MEM_ALLOC_ENABLE`, read at the allocator's first use, so it is
set before any tensor exists), where the kernel offers them: one fault per 2 MiB page it can give instead of 512
(86% fewer faults per MCLRec step on Beauty; docs/performance.md).
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 2**20  # free space kept at the heap's top: more than a Beauty MCLRec step frees at once
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # PyTorch's CPU allocator (c10): madvise(MADV_HUGEPAGE) on blocks >= 2 MiB
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_state: dict[str, str] = {}


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds once per process; returns what the process's heap does.

    "kept": the thresholds were raised now or earlier; "user": MALLOC_* or GLIBC_TUNABLES is set, so the user's
    settings stay; "not glibc": another C library; "refused": mallopt said no. An allocator preloaded over glibc's
    (jemalloc, tcmalloc) is not reached by mallopt: there the answer is "kept" and nothing changes.
    """
    if "heap" not in _state:
        _state["heap"] = _apply()
    return _state["heap"]


def _apply() -> str:
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return "user"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)  # int arguments: a value over 2^31 would wrap around
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return "kept" if ok else "refused"


def heap_state() -> str:
    """What keep_freed_memory did in this process, or "glibc defaults" before it ran (for run records)."""
    return _state.get("heap", "glibc defaults")


def huge_pages_offered(mode_file: Path = THP_MODE) -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks for them (mode `always` or `madvise`)."""
    try:
        mode = mode_file.read_text()
    except OSError:  # not Linux, or a kernel without transparent huge pages
        return False
    return "[always]" in mode or "[madvise]" in mode


def use_huge_pages() -> str:
    """Ask PyTorch's CPU allocator for transparent huge pages (blocks of 2 MiB and more) in this process and the
    processes it starts; call before the first tensor is made. The user's THP_MEM_ALLOC_ENABLE wins. Returns
    huge_pages_state()."""
    if huge_pages_offered():
        os.environ.setdefault(HUGE_PAGES, "1")
    return huge_pages_state()


def huge_pages_state() -> str:
    """"on": this process's tensors of 2 MiB and more ask for huge pages; "off": they do not (not asked for, or
    THP_MEM_ALLOC_ENABLE=0); "not offered": the kernel has no transparent huge pages for them (for run records)."""
    if not huge_pages_offered():
        return "not offered"
    return "on" if os.environ.get(HUGE_PAGES) == "1" else "off"  # c10 reads "1" as on, "0" as off, warns otherwise
