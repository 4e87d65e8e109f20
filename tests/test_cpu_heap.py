"""The CPU heap settings: a step's freed memory stays in the process, the user's malloc settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mclrec.cpu_heap import USER_SETTINGS, heap_state
from mclrec.environment import run_environment

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# A step's pattern in glibc's terms: blocks of a few MB (a Beauty step's logits are 12 MB, its activations 2-6 MB
# each), written, then all freed at the step's end; the step after asks for the same again.
STEPS = """
import ctypes, resource, sys
from mclrec.cpu_heap import keep_freed_memory
state = keep_freed_memory() if sys.argv[1] == "tuned" else "glibc defaults"
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def step():
    blocks = [libc.malloc(8 * 2**20) for _ in range(10)]
    for block in blocks:
        ctypes.memset(block, 1, 8 * 2**20)
    for block in blocks:
        libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=300).stdout.rsplit(" ", 1)
    return out[0], float(out[1])


@glibc
def test_kept_memory_removes_the_page_faults_of_each_step():
    default_state, default_faults = _run("defaults")
    tuned_state, tuned_faults = _run("tuned")
    assert (default_state, tuned_state) == ("glibc defaults", "kept")
    # glibc's defaults map each block afresh (its dynamic mmap threshold lets blocks of the size it last freed
    # through again) and fault every page in: 3 steps x 80 MB / 4 KiB = 61,440
    assert default_faults > 50_000
    assert tuned_faults < 100


@glibc
def test_the_users_malloc_settings_are_left_alone():
    state, _ = _run("tuned", MALLOC_TRIM_THRESHOLD_="1000000")
    assert state == "user"


def test_the_run_environment_records_the_heap():
    assert run_environment()["cpu_heap"] == heap_state()
    assert heap_state() in {"glibc defaults", "kept", "user", "not glibc", "refused"}
