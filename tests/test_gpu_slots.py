"""Several trainings per GPU: the least-loaded GPU is chosen, slots are held by processes, freed when they end."""

import os
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from mclrec.cli import app
from mclrec.errors import MclrecError
from mclrec.gpu_slots import choose_gpu, claim, claim_for_this_process, held_slots

from .conftest import ROOT

GPUS = ["0", "1", "2"]


def test_choose_spreads_before_it_stacks():
    assert choose_gpu({}, GPUS, 2) == "0"
    assert choose_gpu({"0": 1}, GPUS, 2) == "1"
    assert choose_gpu({"0": 1, "1": 1, "2": 1}, GPUS, 2) == "0"
    assert choose_gpu({"0": 2, "1": 1, "2": 2}, GPUS, 2) == "1"
    assert choose_gpu({"0": 2, "1": 2, "2": 2}, GPUS, 2) is None
    assert choose_gpu({}, ["5", "3"], 1) == "5"  # ids as CUDA_VISIBLE_DEVICES lists them


def test_claims_in_one_process_fill_every_gpu_then_refuse(tmp_path):
    handles, order = [], []
    for _ in range(6):
        gpu, handle = claim(GPUS, 2, tmp_path)
        handles.append(handle)
        order.append(gpu)
    assert order == ["0", "1", "2", "0", "1", "2"]  # no GPU idle while another has two
    assert held_slots(tmp_path, GPUS, 2) == {"0": 2, "1": 2, "2": 2}
    with pytest.raises(MclrecError, match="all 3 GPUs x 2 slots"):
        claim(GPUS, 2, tmp_path)
    handles[1].close()  # the job on GPU 1 ends
    assert claim(GPUS, 2, tmp_path)[0] == "1"


HOLD = """
import sys, time
from pathlib import Path
from mclrec.gpu_slots import claim_for_this_process
import os
handle = claim_for_this_process(int(sys.argv[2]), Path(sys.argv[1]))
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(60)
"""


def test_processes_hold_slots_until_they_end(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    procs, seen = [], []
    try:
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "2"], env=env, stdout=subprocess.PIPE,
                                    text=True)
            procs.append(proc)
            seen.append(proc.stdout.readline().strip())
        assert seen == ["0", "1", "0"]
        procs[1].kill()  # killed, not cleaned up: the kernel drops its lock
        procs[1].wait()
        deadline = time.monotonic() + 10
        while held_slots(tmp_path, ["0", "1"], 2)["1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held_slots(tmp_path, ["0", "1"], 2) == {"0": 2, "1": 0}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_no_gpu_means_no_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert claim_for_this_process(2, tmp_path) is None


@pytest.mark.parametrize("how", ["--nproc", "--set", "params", "torchrun"])
def test_slots_refused_for_a_training_over_several_processes(tmp_path, monkeypatch, how):
    """However nproc > 1 is asked for (flag, --set, params.yaml, torchrun's WORLD_SIZE), MCLREC_GPU_SLOTS is refused
    with a message naming it, before a slot is claimed or data is read."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if how == "params":
        params["train"]["nproc"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    args = ["train", "-d", "synthetic", "-m", "mclrec", "--params", str(path), "--out", str(tmp_path / "run")]
    args += {"--nproc": ["--nproc", "2"], "--set": ["--set", "nproc=2"]}.get(how, [])
    env = {"MCLREC_GPU_SLOTS": "2"}
    if how == "torchrun":
        env["WORLD_SIZE"] = "2"
    monkeypatch.setattr("mclrec.gpu_slots.claim_for_this_process", lambda *a, **k: pytest.fail("slot claimed"))
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 1, res.output
    assert "MCLREC_GPU_SLOTS" in res.output and "runs over 2 processes" in res.output
    assert not (tmp_path / "run").exists()
