"""The CPU heap settings: a step's freed memory stays in the process, large tensors ask for huge pages, the user's
malloc and allocator settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from typer.testing import CliRunner

from mclrec import cpu_heap
from mclrec.cli import app
from mclrec.cpu_heap import HUGE_PAGES, USER_SETTINGS, heap_state, huge_pages_offered, huge_pages_state, use_huge_pages
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

    assert run_environment()["cpu_huge_pages"] == huge_pages_state()


@pytest.mark.parametrize("mode, offered", [("always [madvise] never", True), ("[always] madvise never", True),
                                           ("always madvise [never]", False), (None, False)])
def test_huge_pages_are_offered_in_the_kernels_always_and_madvise_modes(tmp_path, mode, offered):
    mode_file = tmp_path / "enabled"
    if mode is not None:
        mode_file.write_text(mode + "\n")
    assert huge_pages_offered(mode_file) is offered


def _without_the_setting(monkeypatch) -> None:
    """No THP_MEM_ALLOC_ENABLE for the test, and after it the process's own value (or none) again."""
    monkeypatch.setenv(HUGE_PAGES, "0")  # records the value to restore, which delenv alone does not when unset
    monkeypatch.delenv(HUGE_PAGES)


def test_huge_pages_are_asked_for_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.setattr(cpu_heap, "huge_pages_offered", lambda: True)
    _without_the_setting(monkeypatch)
    assert use_huge_pages() == "on" and os.environ[HUGE_PAGES] == "1"
    monkeypatch.setenv(HUGE_PAGES, "0")
    assert use_huge_pages() == "off" and os.environ[HUGE_PAGES] == "0"
    monkeypatch.delenv(HUGE_PAGES)
    monkeypatch.setattr(cpu_heap, "huge_pages_offered", lambda: False)
    assert use_huge_pages() == "not offered" and HUGE_PAGES not in os.environ


def test_every_mclrec_command_asks_for_huge_pages_first(monkeypatch):
    monkeypatch.setattr(cpu_heap, "huge_pages_offered", lambda: True)
    _without_the_setting(monkeypatch)
    result = CliRunner().invoke(app, ["show-config", "synthetic", "sasrec"])
    assert result.exit_code == 0, result.output
    assert os.environ[HUGE_PAGES] == "1"


# 20 tensors of a Beauty step's logits size, each written and freed (glibc maps blocks this large afresh)
ALLOCATIONS = """
import resource, sys
from mclrec.cpu_heap import use_huge_pages
state = use_huge_pages()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.empty(256, 12102).fill_(1.0)
    del x
print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not huge_pages_offered(), reason="the kernel offers no transparent huge pages")
def test_huge_pages_cut_the_page_faults_of_large_tensors():
    def faults(value: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", ALLOCATIONS], env={**os.environ, HUGE_PAGES: value},
                             capture_output=True, text=True, check=True, timeout=300).stdout.split()
        return out[0], int(out[1])

    (plain_state, plain), (huge_state, huge) = faults("0"), faults("1")
    assert (plain_state, huge_state) == ("off", "on")
    # 12.4 MB is about 3,000 pages of 4 KiB; glibc reuses some blocks in place, the rest fault in page by page
    assert plain > 10_000
    assert huge < plain / 2, (plain, huge)
