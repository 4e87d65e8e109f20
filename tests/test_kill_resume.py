"""Fault injection: a training killed with SIGKILL and restarted with --resume ends exactly like an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.slow  # end to end: subprocesses, workflows or whole trainings


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["synthetic"]["preprocess"]["max_len"] = 20
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train(params_file, tiny_dir, out, *extra):
    cmd = [sys.executable, "-m", "mclrec", "train", "-d", "synthetic", "-m", "mclrec", "--params", str(params_file),
           "--data-dir", str(tiny_dir), "--out", str(out), "--device", "cpu", "--max-epochs", "3", "--no-progress",
           "--set", "batch_size=128", "--set", "num_threads=1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _log(out):
    return [{k: r[k] for k in ("epoch", "loss", "valid")} for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def straight(tiny_dir, params_file, tmp_path_factory):
    """The uninterrupted 3-epoch run."""
    out = tmp_path_factory.mktemp("straight")
    assert _train(params_file, tiny_dir, out).wait() == 0
    return out


def _kill_when(proc, condition):
    """SIGKILL `proc` as soon as `condition()` holds (polled every 5 ms)."""
    while not condition():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_mid_epoch_then_resume_is_exact(tiny_dir, params_file, straight, tmp_path):
    killed = tmp_path / "killed"
    kills = 0
    for epochs_done in (1, 2):
        proc = _train(params_file, tiny_dir, killed, "--resume")
        while not ((killed / "log.jsonl").exists() and len(_log(killed)) >= epochs_done):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.5)  # inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert _train(params_file, tiny_dir, killed, "--resume").wait() == 0
    assert kills == 2
    assert _log(killed) == _log(straight)


def test_sigkill_right_after_a_checkpoint_write_then_resume_is_exact(tiny_dir, params_file, straight, tmp_path):
    killed = tmp_path / "killed"
    # last.prev.pt appears when epoch 2's complete last.pt is being renamed in: killed right then (with or without
    # last.pt in place), the resumed run continues from epoch 2 or falls back to epoch 1; both must end identically.
    _kill_when(_train(params_file, tiny_dir, killed, "--resume"), (killed / "last.prev.pt").exists)
    proc = _train(params_file, tiny_dir, killed, "--resume")
    assert proc.wait() == 0, proc.stderr.read()
    assert _log(killed) == _log(straight)
    assert not list(killed.glob(".*.tmp"))
