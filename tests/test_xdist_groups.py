"""The suite's xdist_group markers keep their tests on one pytest-xdist worker (tests/xdist_groups.py)."""

import os
import subprocess
import sys
import textwrap

from .conftest import ROOT

PROBE = '''
import os
import time

import pytest


def _record(name):
    with open(os.path.join(os.environ["PROBE_OUT"], name), "w") as fh:
        fh.write(os.environ["PYTEST_XDIST_WORKER"])
    time.sleep(0.3)


@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("k", range(4))
def test_grouped(k):
    _record(f"grouped{k}")


@pytest.mark.xdist_group(name="shared")
def test_grouped_by_keyword():
    _record("grouped_kw")


@pytest.mark.parametrize("k", range(4))
def test_free(k):
    _record(f"free{k}")
'''


def test_grouped_tests_run_on_one_worker(tmp_path):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE))
    hook = "from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401\n"
    (tmp_path / "conftest.py").write_text(hook)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PROBE_OUT": str(out), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                           "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = {path.name: path.read_text() for path in out.iterdir()}
    assert len(workers) == 9
    assert len({w for name, w in workers.items() if name.startswith("grouped")}) == 1
    assert set(workers.values()) == {"gw0", "gw1"}  # the free tests still use both workers
