"""MKL's vector-math kernels are settled in the calling thread before training or evaluation computes anything
(mclrec/vector_math.py; the race itself is measured by benchmarks/first_step_repeat.py, not here: it shows in a
minority of fresh processes)."""

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mclrec import vector_math
from mclrec.evaluation import evaluate
from mclrec.training import trainer


class Calls(TorchDispatchMode):
    """The aten ops run inside, as (name, first tensor's dtype, its number of elements)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if args and isinstance(args[0], torch.Tensor):
            self.seen.append((func.overloadpacket.__name__, args[0].dtype, args[0].numel()))
        return out


def test_each_vml_function_runs_on_one_element_in_both_precisions():
    with Calls() as calls:
        vector_math.resolve_vector_math.__wrapped__()
    ran = {(name, dtype) for name, dtype, numel in calls.seen if numel == 1}
    missing = [(name, dtype) for name in vector_math.VML_FUNCTIONS for dtype in vector_math.PRECISIONS
               if (name, dtype) not in ran]
    assert not missing
    # the functions a training step sends to VML: the losses' exp and log, the foreach Adam's sqrt
    assert {"exp", "log", "sqrt"} <= set(vector_math.VML_FUNCTIONS)


def test_the_warm_up_runs_once_per_process():
    vector_math.resolve_vector_math()
    with Calls() as calls:
        vector_math.resolve_vector_math()
    assert calls.seen == []


def test_training_settles_the_kernels_before_it_builds_the_model(tiny, run_cfg, tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(trainer, "resolve_vector_math", lambda: order.append("resolve"))
    build = trainer.build_parts
    monkeypatch.setattr(trainer, "build_parts", lambda *a, **k: order.append("build") or build(*a, **k))
    trainer.train(run_cfg("sasrec", max_epochs=1), tiny, tmp_path, progress=False)
    assert order[:2] == ["resolve", "build"]


class Stop(Exception):
    pass


def test_evaluation_settles_the_kernels_before_it_loads_the_model(tiny, monkeypatch):
    order = []
    monkeypatch.setattr(evaluate, "resolve_vector_math", lambda: order.append("resolve"))

    def load(*args, **kwargs):
        order.append("load")
        raise Stop

    monkeypatch.setattr(evaluate, "load_encoder", load)
    with pytest.raises(Stop):
        evaluate.evaluate_checkpoint(tiny, Path("unused.pt"), device="cpu")
    assert order == ["resolve", "load"]


def test_first_step_repeat_reports_both_arms(tiny_dir, capsys):
    """The benchmark runs fresh processes per arm and tabulates their digests (one step on the tiny data)."""
    from .conftest import load_benchmark

    summary = load_benchmark("first_step_repeat").main(
        ["--processes", "1", "--threads", "1", "--data-dir", str(tiny_dir), "--variant", "sasrec"])
    assert set(summary) == {"resolved", "unresolved"}
    assert all(arm["processes"] == 1 and arm["outliers"] == 0 for arm in summary.values())
    # one thread has no race: both arms computed the same numbers
    assert summary["resolved"]["common"] == summary["unresolved"]["common"]
    out = capsys.readouterr().out
    assert "| resolved | 1 | 1 | 0 |" in out and "most common digests equal" in out
