"""One training over several processes (training/distributed.py): 2 processes with gloo on the CPU.

In-process: the loss shares of a split batch sum to the batch's loss and gradient, the row split, the start-up
refusals. With processes (marked slow, about a minute here): 2 processes step like one process on the whole batch
(dropout 0; sasrec, duorec, mclrec's meta schedule; a last batch of 1 row leaves one process without rows), a
killed process fails the run clearly and keeps the last good checkpoint, a resume (through torchrun) equals the
uninterrupted run, and processes with different data refuse to train.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.checkpoint import load_checkpoint, save_checkpoint
from mclrec.cli import app
from mclrec.data.preprocess import preprocess
from mclrec.data.processed import load_processed
from mclrec.data.synth import generate_synthetic
from mclrec.models.losses import (
    Rows,
    bce_loss,
    bpr_loss,
    cl2_and_reg,
    info_nce,
    rec_ce_loss,
    sample_negatives,
)
from mclrec.training.distributed import Group
from mclrec.training.launch import launch
from mclrec.training.shards import Shard
from mclrec.training.trainer import TrainingError, train

from .conftest import ROOT

EXACT = {"hidden_dropout": 0.0, "attn_dropout": 0.0, "num_threads": 1, "max_epochs": 1}
# 2233 training rows of the tiny dataset: 1116 leaves a last batch of 1 row (one process gets none), 1115 one of
# 3 rows (split 2 + 1; MCLRec's R needs at least 2 rows in a batch, with one process as with two)
EXACT_RUNS = {"sasrec": {"batch_size": 1116}, "duorec": {"batch_size": 1116}, "mclrec": {"batch_size": 1115}}
RESUMED = {"batch_size": 256, "num_threads": 1, "max_epochs": 3}  # with dropout: the random streams must resume


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """params.yaml with the synthetic dataset at the tiny fixture's max_len."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["synthetic"]["preprocess"]["max_len"] = 20
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _cfg(params_file: Path, variant: str, **settings) -> config.RunConfig:
    return config.run_config(config.load_params(params_file), "synthetic", variant, {"device": "cpu", **settings})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ in one process

def test_the_rows_of_a_batch_are_split_evenly_in_rank_order():
    assert [Shard.of(7, 3, r).rows for r in range(3)] == [Rows(0, 3, 7), Rows(3, 5, 7), Rows(5, 7, 7)]
    assert [Shard.of(1, 2, r).rows.count for r in range(2)] == [1, 0]


def test_the_shares_of_each_loss_sum_to_the_loss_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(4))
    weights = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 12, (7,), generator=gen)
    shares = [Shard.of(7, 3, r).rows for r in range(3)] + [Rows(7, 7, 7)]  # and a process without rows

    def local(x, rows):
        return x[rows.start:rows.stop]

    cases = {
        "info_nce": (lambda: info_nce(a, b, 0.5), lambda r: info_nce(a, b, 0.5, r)),
        "cl2 + R": (lambda: sum(cl2_and_reg(a, b, c, d)), lambda r: sum(cl2_and_reg(a, b, c, d, rows=r))),
        "ce": (lambda: rec_ce_loss(a, weights, targets),
               lambda r: rec_ce_loss(local(a, r), weights, local(targets, r), total=7)),
        "ce chunked": (lambda: rec_ce_loss(a, weights, targets, budget=30),
                       lambda r: rec_ce_loss(local(a, r), weights, local(targets, r), budget=30, total=7)),
        "bpr": (lambda: bpr_loss(a, weights, targets, targets % 11 + 1),
                lambda r: bpr_loss(local(a, r), weights, local(targets, r), local(targets % 11 + 1, r), total=7)),
    }
    for name, (whole, share) in cases.items():
        expected = torch.autograd.grad(whole(), [a, b, c, d, weights], allow_unused=True)
        total = sum(share(rows) for rows in shares)
        got = torch.autograd.grad(total, [a, b, c, d, weights], allow_unused=True)
        assert torch.allclose(total, whole(), atol=1e-12), name
        for e, g in zip(expected, got):
            assert (e is None) == (g is None) and (e is None or torch.allclose(e, g, atol=1e-12)), name
    states = torch.randn(7, 4, 5, generator=gen, dtype=torch.float64)
    positives = torch.randint(0, 12, (7, 4), generator=gen)
    whole = bce_loss(states, weights, positives, positives % 11 + 1)
    count = (positives != 0).sum()
    parts = sum(bce_loss(local(states, r), weights, local(positives, r), local(positives % 11 + 1, r), count)
                for r in shares)
    assert torch.allclose(parts, whole, atol=1e-12)
    draws = sample_negatives(targets, 11, torch.Generator().manual_seed(5))
    shared = torch.cat([sample_negatives(local(targets, r), 11, torch.Generator().manual_seed(5), r) for r in shares])
    assert torch.equal(draws, shared)  # every process draws the whole batch's negatives and keeps its rows'


def test_more_processes_than_rows_in_a_batch_is_refused_at_once(params_file, tiny_dir, tiny, tmp_path):
    with pytest.raises(TrainingError, match="nproc 9 exceeds batch_size 8"):
        train(_cfg(params_file, "sasrec", batch_size=8, nproc=9), tiny, tmp_path / "run")
    res = CliRunner().invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--params", str(params_file),
                                   "--data-dir", str(tiny_dir), "--out", str(tmp_path / "cli"), "--nproc", "300"])
    assert res.exit_code == 1 and "nproc 300 exceeds batch_size 256" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cli").exists()
    res = CliRunner().invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--params", str(params_file),
                                   "--data-dir", str(tiny_dir), "--nproc", "3"], env={"WORLD_SIZE": "2"})
    assert res.exit_code == 1 and "--nproc 3, but torchrun started 2 processes" in res.output


def test_a_run_resumes_only_over_as_many_processes_as_it_trained_on(params_file, tiny, tmp_path):
    cfg = _cfg(params_file, "sasrec", batch_size=1116, **EXACT)
    train(cfg, tiny, tmp_path, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 1
    assert _log(tmp_path)[0]["world_size"] == 1
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["world_size"] == 1
    save_checkpoint(tmp_path / "last.pt", {**last, "world_size": 2})  # as a run over 2 processes writes it
    with pytest.raises(TrainingError, match=r"trained over 2 process\(es\) and this one runs over 1; resume it with "
                                            "nproc 2"):
        train(cfg.replace(max_epochs=2), tiny, tmp_path, resume="must", progress=False)


# ---------------------------------------------------------------------------------------------- over 2 processes

def _trainings(jobs: list[tuple[dict, str, str]]) -> None:
    """A launched process: join the group and run each (settings, data folder, run folder) training in it."""
    group = Group.from_env("cpu")
    try:
        for cfg, data_dir, run_dir in jobs:
            train(cfg, load_processed(Path(data_dir)), Path(run_dir), progress=False, group=group)
    finally:
        group.close()


def _data_per_rank(cfg: dict, data_dirs: list[str], run_dir: str) -> None:
    """A launched process whose data is its rank's folder."""
    _trainings([(cfg, data_dirs[int(os.environ["RANK"])], run_dir)])


@pytest.fixture(scope="module")
def over_two(params_file, tiny_dir, tmp_path_factory) -> Path:
    """One launch of 2 processes: the EXACT_RUNS trainings and an uninterrupted RESUMED mclrec run."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = [(_cfg(params_file, variant, nproc=2, **EXACT, **extra).to_dict(), str(tiny_dir), str(root / variant))
            for variant, extra in EXACT_RUNS.items()]
    jobs.append((_cfg(params_file, "mclrec", nproc=2, **RESUMED).to_dict(), str(tiny_dir), str(root / "straight")))
    launch(2, _trainings, jobs)
    return root


# The tests that read over_two run on one xdist worker, so the 2-process launch behind it runs once, not per worker.
@pytest.mark.slow
@pytest.mark.xdist_group("over_two")
@pytest.mark.parametrize("variant", sorted(EXACT_RUNS))
def test_two_processes_train_like_one_process_on_the_whole_batch(variant, params_file, tiny, over_two, tmp_path):
    train(_cfg(params_file, variant, **EXACT, **EXACT_RUNS[variant]), tiny, tmp_path, progress=False)
    one, two = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(over_two / variant / "last.pt")
    assert two["world_size"] == 2 and len(two["rng_ranks"]) == 2
    for name, weights in one["modules"].items():
        for key, value in weights.items():
            assert torch.allclose(two["modules"][name][key], value, rtol=0, atol=1e-5), (name, key)
    (log1,), (log2,) = _log(tmp_path), _log(over_two / variant)
    assert log2["world_size"] == 2
    assert log2["loss"] == pytest.approx(log1["loss"], rel=1e-6)
    # the ranks are gathered, so the metrics are the one-process formula; a score differing in the last bit could
    # move one user's rank at most
    assert log2["valid"] == pytest.approx(log1["valid"], abs=1 / tiny.n_users)


def _workers(pid: int) -> list[int]:
    """The pids of the training processes the launcher `pid` spawned (multiprocessing's spawn_main), in start order."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_text()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and "spawn_main" in command and "resource_tracker" not in command:
            found.append(int(entry.name))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.xdist_group("over_two")
def test_a_killed_process_fails_the_run_and_torchrun_resumes_it_exactly(params_file, tiny_dir, over_two, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-d", "synthetic", "-m", "mclrec", "--params", str(params_file), "--data-dir", str(tiny_dir),
            "--out", str(run), "--device", "cpu", "--no-progress", "--max-epochs", "3", "--set", "batch_size=256",
            "--set", "num_threads=1"]
    proc = subprocess.Popen([sys.executable, "-m", "mclrec", *args, "--nproc", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while not ((run / "log.jsonl").exists() and _log(run)):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    os.kill(_workers(proc.pid)[-1], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    error = proc.stderr.read()
    assert re.search(r"the training over 2 processes stopped: rank [01] failed: killed by signal SIGKILL", error), error
    kept = load_checkpoint(run / "last.pt")
    assert 1 <= kept["epoch"] < 3 and kept["world_size"] == 2
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    resumed = subprocess.run([*torchrun, "-m", "mclrec", *args, "--resume"], capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keep = ("epoch", "loss", "valid", "world_size")
    assert [{k: r[k] for k in keep} for r in _log(run)] == [{k: r[k] for k in keep} for r in _log(over_two / "straight")]
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(over_two / "straight" / "last.pt")
    for name, weights in want["modules"].items():
        for key, value in weights.items():
            assert torch.equal(got["modules"][name][key], value), (name, key)


@pytest.mark.slow
def test_processes_with_different_data_refuse_to_train(params_file, tiny_dir, tmp_path):
    raw = tmp_path / "raw.txt"
    generate_synthetic(raw, seed=4, n_users=400, n_items=150, n_clusters=6, mean_length=9, min_length=5,
                       stay_probability=0.8)
    preprocess(raw, "seqtxt", 5, 5, 20, tmp_path / "other")
    cfg = _cfg(params_file, "sasrec", nproc=2, **EXACT).to_dict()
    with pytest.raises(TrainingError, match=r"rank [01] failed: the 2 processes disagree about the run \(processed "
                                            r"data \(sha256\): rank 0 [0-9a-f]{64}, rank 1 [0-9a-f]{64}"):
        launch(2, _data_per_rank, cfg, [str(tiny_dir), str(tmp_path / "other")], str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------ workflow

def test_the_multi_gpu_slurm_profile_asks_for_one_gpu_and_its_threads_per_process():
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm-multigpu/config.yaml").read_text())
    single = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    rules = {name for path in (ROOT / "workflow/rules").glob("*.smk")
             for name in re.findall(r"^rule (\w+):", path.read_text(), re.MULTILINE)}
    assert set(profile["set-resources"]) | set(profile["set-threads"]) <= rules
    assert set(profile) == set(single)  # the SLURM profile with the training's resources changed
    train = profile["set-resources"]["train"]
    assert train["nodes"] == 1 and profile["set-threads"]["train"] == train["cpus_per_task"]
    assert train["cpus_per_task"] % train["gpu"] == 0  # mclrec train --threads T --nproc N: T // N per process


@pytest.mark.slow
def test_snakemake_gives_a_training_over_n_processes_n_times_the_threads(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(nproc=2, num_threads=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "8", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "models/synthetic/sasrec/seed0/best.pt"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    command = next(line for line in output.splitlines() if "mclrec train" in line)
    assert "--threads 6" in command  # mclrec train gives each of the 2 processes 6 // 2 = 3
