"""What a result was produced with: package versions, machine, threads and the git commit of the checkout."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

from mclrec.cpu_heap import heap_state, huge_pages_state

PACKAGES = ("mclrec", "torch", "numpy", "pandas", "pyarrow")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor(), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags(names: Sequence[str], cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """Which of the CPU flags `names` this machine has, from /proc/cpuinfo's first "flags" line (x86 Linux);
    None where that cannot be read (other systems), so "none of them" and "cannot tell" stay apart."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    if line is None:
        return None
    present = set(line.split(":", 1)[1].split())
    return [name for name in names if name in present]


BF16_PRODUCT_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs with bfloat16 dot products in hardware


def slow_bf16_products(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when this x86 CPU's flags show no bfloat16 products in hardware (neither AVX512-BF16 nor AMX):
    there torch's bfloat16 matrix products take a fallback several times slower than float32. False where the
    flags cannot be read (not x86 Linux): nothing is claimed there."""
    flags = cpu_flags(BF16_PRODUCT_FLAGS, cpuinfo)
    return flags is not None and not flags


def git_state(folder: Path | None = None) -> dict[str, Any]:
    """{"commit": HEAD or None, "dirty": uncommitted changes or None} of the git checkout at `folder` (default: cwd)."""
    cwd = folder or Path.cwd()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def run_environment(threads: int | None = None) -> dict[str, Any]:
    """Versions of the packages that matter, Python, platform, CPU model and count, torch threads, git state."""
    return {
        **{package: _version(package) for package in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "cpu_heap": heap_state(),
        "cpu_huge_pages": huge_pages_state(),
        "git": git_state(),
    }
