"""Shared fixtures: a tiny processed synthetic dataset, the project's params, and the benchmark scripts."""

import importlib.util
import os
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mclrec import config
from mclrec.data.preprocess import preprocess
from mclrec.data.processed import load_processed
from mclrec.data.synth import generate_synthetic

from .xdist_groups import pytest_collection_modifyitems  # noqa: F401 (a hook: pytest finds it here)


def _share_threads() -> None:
    """Under pytest-xdist, give each worker its share of the cores (OpenMP threads, inherited by subprocesses).

    Two workers with torch's default of one thread per core would run 2x the threads on the cores, and OpenMP
    threads that wait for each other on a busy core slow down far more than 2x. A thread setting of the user's
    (OMP_NUM_THREADS) wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_threads()

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def params() -> dict:
    """The project's validated params.yaml."""
    return config.load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A processed synthetic dataset small enough for training tests (~400 users)."""
    root = tmp_path_factory.mktemp("tiny")
    raw = root / "raw.txt"
    generate_synthetic(raw, seed=3, n_users=400, n_items=150, n_clusters=6, mean_length=9, min_length=5,
                       stay_probability=0.8)
    preprocess(raw, "seqtxt", 5, 5, 20, root / "processed")
    return root / "processed"


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The tiny dataset loaded."""
    return load_processed(tiny_dir)


@pytest.fixture
def run_cfg(params):
    """Resolved settings for a variant on the tiny dataset, CPU, small batches; extra overrides as kwargs."""

    def make(variant: str, **overrides) -> config.RunConfig:
        cfg = config.run_config(params, "synthetic", variant, {"device": "cpu"})  # length_buckets auto: the CPU's
        return cfg.replace(**{"device": "cpu", "batch_size": 64, "eval_batch_size": 256, "max_len": 20, "max_epochs": 2,
                              **overrides})

    return make


def load_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rot(path: Path) -> None:
    """Flip 16 bytes in the middle of the file's largest record (a weight tensor): the zip stays readable."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    at = record.header_offset + record.file_size // 2
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    path.write_bytes(bytes(data))
