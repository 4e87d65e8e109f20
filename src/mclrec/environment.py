"""What a result was produced with: package versions, machine, threads and the git commit of the checkout."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mclrec.cpu_heap import heap_state

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
        "git": git_state(),
    }
