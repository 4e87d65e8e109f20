"""Early stopping: the official RecBole 0.2 rule and the exact rule on scripted validation sequences."""

import math

import pytest

from mclrec.training import trainer
from mclrec.training.early_stopping import judge


def run_rule(values, patience, mode):
    """Feed a scripted sequence through judge(); return (best epoch, stop epoch or None), epochs 1-based."""
    best, bad, best_epoch = -math.inf, 0, 0
    for epoch, value in enumerate(values, start=1):
        decision = judge(value, best, bad, patience, mode)
        if decision.improved:
            best, bad, best_epoch = decision.score, 0, epoch
        else:
            bad += 1
        if decision.stop:
            return best_epoch, epoch
    return best_epoch, None


def recbole_early_stopping(values, stopping_step):
    """RecBole 0.2's loop, written out: rounded scores, strict '>', stop when cur_step > stopping_step."""
    best, cur_step, best_epoch = -math.inf, 0, 0
    for epoch, value in enumerate(values, start=1):
        score = round(value, 4)
        if score > best:
            best, cur_step, best_epoch = score, 0, epoch
        else:
            cur_step += 1
            if cur_step > stopping_step:
                return best_epoch, epoch
    return best_epoch, None


def test_official_rounding_tie_is_not_an_improvement():
    # 0.12344 and 0.12341 both round to 0.1234: the second is a tie, not a gain; exact sees a gain
    values = [0.12341, 0.12344, 0.1, 0.1]
    assert run_rule(values, patience=2, mode="official") == (1, 4)  # 3 epochs without a gain > patience 2
    assert run_rule(values, patience=2, mode="exact") == (2, 4)


def test_official_rounding_up_is_an_improvement():
    # 0.12345 rounds to 0.1235 > 0.1234 (Python's round: 0.12345 is stored just above the half)
    assert round(0.12346, 4) == 0.1235
    assert run_rule([0.12341, 0.12346], patience=1, mode="official") == (2, None)


def test_official_stops_after_patience_plus_one_epochs():
    values = [0.2] + [0.1] * 20
    assert run_rule(values, patience=10, mode="official") == (1, 12)  # 11 epochs without improvement
    assert run_rule(values, patience=10, mode="exact") == (1, 11)  # 10 epochs


@pytest.mark.parametrize("seed", range(20))
def test_official_matches_recbole_loop_on_random_sequences(seed):
    import random

    rng = random.Random(seed)
    values = [round(rng.uniform(0.1, 0.1003), 6) for _ in range(60)]  # many ties after rounding
    assert run_rule(values, patience=3, mode="official") == recbole_early_stopping(values, 3)


def test_trainer_applies_official_rule(tiny, run_cfg, tmp_path, monkeypatch):
    scripted = iter([0.30001, 0.30004, 0.29, 0.31, 0.31001, 0.2, 0.2, 0.2])
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: {"MRR@10": next(scripted)})
    cfg = run_cfg("sasrec", max_epochs=20, patience=2, early_stopping="official", batch_size=1024, n_layers=1)
    summary = trainer.train(cfg, tiny, tmp_path, progress=False)
    # best 0.31 at epoch 4 (0.31001 ties it after rounding); epochs 5, 6, 7 bring nothing -> stop at 7
    assert summary["best_epoch"] == 4 and summary["epochs_run"] == 7
    assert summary["best_valid_metric"] == 0.31 and "official" in summary["stopped"]
