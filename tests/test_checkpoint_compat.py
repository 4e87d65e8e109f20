"""Checkpoints written before the refactor (tests/fixtures/checkpoint-v0.1) still load, evaluate and resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mclrec.checkpoint import RETIRED_SETTINGS, load_checkpoint
from mclrec.data.preprocess import preprocess
from mclrec.data.processed import load_processed
from mclrec.evaluation.evaluate import evaluate_checkpoint
from mclrec.training.trainer import TrainingError, train

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-v0.1"


def _without_timings(path: Path) -> list[dict]:
    """The log's records without the wall-clock fields (the only ones that differ between two runs)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "eval_seconds")} for r in records]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat") / "processed"
    preprocess(FIXTURE / "raw.txt", "seqtxt", 5, 5, 12, out)
    return load_processed(out)


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text())


def test_old_best_checkpoint_evaluates_to_the_same_metrics(data, expected):
    result, _, meta = evaluate_checkpoint(data, FIXTURE / "best.pt", device="cpu", ks=(5, 10))
    assert result["metrics"] == expected["metrics"]
    assert meta["config"]["early_stopping"] == "exact"  # filled in for files that predate the setting


def test_old_last_checkpoint_resumes_exactly(data, expected, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "log.jsonl", "summary.json"):
        shutil.copy(FIXTURE / name, run / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # today's settings resolve with the new defaults; the old run was trained with exact early stopping
        # (eval_ks is no longer a run setting: it moved to params.yaml `evaluate.ks`)
        old_cfg = {k: v for k, v in expected["cfg"].items() if k not in RETIRED_SETTINGS}
        cfg = {**old_cfg, "early_stopping": "official", "mask_item": "padding", "packed_tokens": False,
               "attention": "math", "compile": False, "precision": "fp32", "nproc": 1, "dropout_draws": "uniform",
               "fused_losses": False, "adam": "foreach", "max_epochs": 3}
        with pytest.raises(TrainingError, match="settings differ from the checkpoint: early_stopping"):
            train(cfg, data, run, resume="must", progress=False)
        # today's defaults for the settings added in session 11: the error says what the run was trained with
        today = {**cfg, "early_stopping": "exact", "adam": "fused", "fused_losses": True}
        with pytest.raises(TrainingError, match=r"settings differ from the checkpoint: adam, fused_losses \(it was "
                                                r"trained with --set adam=\"foreach\" --set fused_losses=false\)"):
            train(today, data, run, resume="must", progress=False)
        train({**cfg, "early_stopping": "exact"}, data, run, resume="must", progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed, original = _without_timings(run / "log.jsonl"), _without_timings(FIXTURE / "log3.jsonl")
    assert len(resumed) == len(original) == 3
    for got, want in zip(resumed, original):
        assert got.pop("world_size", 1) == 1  # new records say how many processes trained (the old ones predate it)
        # validation during training now scores only valid_metric's cut-off; those numbers are unchanged
        assert got["valid"] and got["valid"] == {k: want["valid"][k] for k in got["valid"]}
        # the epoch-3 losses to float32 rounding: the fixture was trained on a CPU with AVX-512, whose kernels round
        # some sums differently from AVX2's (exact resume on one machine: test_training.py)
        assert got.pop("loss") == pytest.approx(want["loss"], rel=1e-6)
        rest = {k: v for k, v in want.items() if k not in ("valid", "loss")}
        assert {k: v for k, v in got.items() if k != "valid"} == rest
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
