"""Resume across a change of device type: CPU- and CUDA-shaped generator states (fabricated on the CPU)."""

import json

import pytest
import torch

from mclrec.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint, saved_generator_device
from mclrec.training.trainer import train

CPU = torch.device("cpu")
CUDA_STATE = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state is 16 bytes


def test_state_records_the_generator_device_and_no_cuda_state_on_the_cpu():
    state = rng_state(torch.Generator().manual_seed(1), CPU)
    assert state["generator_device"] == "cpu" and "cuda" not in state
    assert saved_generator_device(state) == "cpu"
    assert saved_generator_device({"generator": CUDA_STATE}) == "cuda"  # older files: told by the size
    assert saved_generator_device({"generator": torch.Generator().get_state()}) == "cpu"


def test_same_device_restores_exactly():
    g = torch.Generator().manual_seed(3)
    torch.rand(5, generator=g)
    state = rng_state(g, CPU)
    expected = torch.rand(5, generator=g)
    h = torch.Generator()
    assert restore_rng_state(state, h, CPU, reseed=99) is True
    assert torch.equal(torch.rand(5, generator=h), expected)


@pytest.mark.parametrize("state", [
    {"torch": torch.get_rng_state(), "generator": CUDA_STATE, "generator_device": "cuda", "cuda": CUDA_STATE},
    {"torch": torch.get_rng_state(), "generator": CUDA_STATE, "cuda": [CUDA_STATE, CUDA_STATE]},  # older format
])
def test_a_cuda_state_on_a_cpu_run_reseeds_deterministically(state):
    draws = []
    for _ in range(2):
        g = torch.Generator()
        assert restore_rng_state(state, g, CPU, reseed=1234) is False
        draws.append(torch.rand(4, generator=g))
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(1234)))


def test_training_resumes_from_a_checkpoint_written_on_another_device_type(tiny, run_cfg, tmp_path, capfd):
    cfg = run_cfg("sasrec", batch_size=256, max_epochs=1, num_threads=1)
    train(cfg, tiny, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    ckpt["rng"] = {**ckpt["rng"], "generator": CUDA_STATE, "generator_device": "cuda", "cuda": CUDA_STATE}
    save_checkpoint(tmp_path / "run" / "last.pt", {k: v for k, v in ckpt.items() if k != "format_version"})
    logs = []
    for attempt in range(2):  # twice from the same file: the reseed is deterministic
        run = tmp_path / f"resume{attempt}"
        run.mkdir()
        for name in ("last.pt", "best.pt", "log.jsonl", "summary.json"):
            (run / name).write_bytes((tmp_path / "run" / name).read_bytes())
        summary = train(cfg.replace(max_epochs=2), tiny, run, resume="must", progress=False)
        assert summary["epochs_run"] == 2
        logs.append([{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                     for line in (run / "log.jsonl").read_text().splitlines()])
    assert logs[0] == logs[1]
    assert "random streams cannot move between device types" in capfd.readouterr().err


def test_visible_gpu_count_reads_the_driver_and_cuda_visible_devices(tmp_path, monkeypatch):
    from mclrec.device import visible_gpu_count

    assert visible_gpu_count(str(tmp_path / "no-driver")) == 0
    for i in range(4):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_count(str(tmp_path)) == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert visible_gpu_count(str(tmp_path)) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count(str(tmp_path)) == 0
