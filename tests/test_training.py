"""Training: update schedules, determinism, resume, failure handling, and that it learns."""

import json

import numpy as np
import pytest
import torch

from mclrec.evaluation.metrics import metrics_from_ranks
from mclrec.training import objectives, trainer
from mclrec.data.instances import eval_instances, training_instances
from mclrec.training.batches import SameTargetIndex
from mclrec.checkpoint import load_checkpoint
from mclrec.training.objectives import build_parts, make_batch
from mclrec.training.trainer import Optimisers, TrainingError, train, train_step


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


def _record_steps(parts, optimisers):
    """Wrap optimiser.step to log which modules each step changed."""
    steps = []
    named = [("encoder", optimisers.encoder)] + ([("augmenter", optimisers.augmenter)] if optimisers.augmenter else [])
    for name, opt in named:
        original = opt.step

        def step(*args, _name=name, _original=original, **kwargs):
            enc, aug = _snapshot(parts.encoder), _snapshot(parts.augmenter1)
            out = _original(*args, **kwargs)
            steps.append((_name, _changed(enc, parts.encoder), _changed(aug, parts.augmenter1)))
            return out

        opt.step = step
    return steps


def _one_batch(cfg, tiny, parts):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    inst = training_instances(tiny, torch.device("cpu"))
    seq, lengths, targets = inst.rows(torch.arange(64))
    return make_batch(cfg, seq, lengths, targets, generator), generator


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("meta", [("encoder", True, False), ("augmenter", False, True), ("encoder", True, False)]),
        ("paper", [("encoder", True, False), ("augmenter", False, True)]),
        ("joint", [("encoder", True, True)]),
    ],
)
def test_mclrec_schedules_update_only_their_modules(tiny, run_cfg, schedule, expected):
    cfg = run_cfg("mclrec", schedule=schedule, lambda_cl1=0.1, beta=0.1)
    parts = build_parts(cfg, tiny.n_items)
    optimisers = Optimisers(cfg, parts)
    steps = _record_steps(parts, optimisers)
    batch, generator = _one_batch(cfg, tiny, parts)
    terms = train_step(cfg, parts, optimisers, batch, generator)
    assert steps == expected
    assert {"rec", "cl1", "cl2", "reg"} <= set(terms)
    assert ("augmenter" in terms) == (schedule != "joint")


def test_foreach_adam_gives_the_per_parameter_loops_numbers(tiny, run_cfg):
    cfg = run_cfg("mclrec", hidden_dropout=0.0, attn_dropout=0.0)
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        parts = build_parts(cfg, tiny.n_items)
        optimisers = Optimisers(cfg.replace(adam="foreach"), parts)
        for opt in (optimisers.encoder, optimisers.augmenter):
            assert opt.defaults["foreach"] is True
            for group in opt.param_groups:
                group["foreach"] = foreach
        for _ in range(3):
            batch, generator = _one_batch(cfg, tiny, parts)
            train_step(cfg, parts, optimisers, batch, generator)
        runs.append([p.detach() for m in parts.modules().values() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_ablation_switches(tiny, run_cfg):
    no_cl2 = run_cfg("mclrec-no-cl2")
    assert build_parts(no_cl2, tiny.n_items).augmenter1 is None
    shared = build_parts(run_cfg("mclrec-shared"), tiny.n_items)
    assert shared.augmenter1 is shared.augmenter2
    assert len(shared.modules()) == 2
    for variant, absent in (("mclrec-no-cl1", "cl1"), ("mclrec-no-reg", "reg"), ("mclrec-no-cl2", "cl2")):
        cfg = run_cfg(variant)
        parts = build_parts(cfg, tiny.n_items)
        batch, generator = _one_batch(cfg, tiny, parts)
        _, terms = objectives.encoder_loss(cfg, parts, batch, generator)
        assert absent not in terms and "rec" in terms


def test_augmenter_kinds_build(tiny, run_cfg):
    for kind in ("mlp", "attention", "cnn"):
        parts = build_parts(run_cfg("mclrec", augmenter=kind), tiny.n_items)
        assert parts.augmenter1(torch.randn(3, 64)).shape == (3, 64)


def test_duorec_partners_share_the_target_and_avoid_self():
    targets = torch.tensor([5, 7, 5, 9, 5, 7])
    index = SameTargetIndex.build(targets)
    generator = torch.Generator().manual_seed(1)
    rows = torch.arange(6)
    for _ in range(20):
        partners = index.partners(rows, targets, generator)
        assert torch.equal(targets[partners], targets)
        assert partners[3] == 3  # alone with its target
        assert torch.all(partners[[0, 1, 2, 4, 5]] != rows[[0, 1, 2, 4, 5]])


def _popularity_hr10(tiny):
    counts = np.bincount(tiny.train.items, minlength=tiny.n_items + 1)[1:].astype(float)
    counts += np.bincount(tiny.train.targets, minlength=tiny.n_items + 1)[1:]
    scores = torch.tensor(counts).expand(len(tiny.test.targets), -1)
    from mclrec.evaluation.metrics import target_ranks

    return metrics_from_ranks(target_ranks(scores, torch.as_tensor(tiny.test.targets)), (10,))["HR@10"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sasrec", "mclrec"])
def test_training_beats_popularity(tiny, run_cfg, tmp_path, variant):
    cfg = run_cfg(variant, max_epochs=3, hidden_dropout=0.2, attn_dropout=0.2, lr=0.005)
    summary = train(cfg, tiny, tmp_path, progress=False)
    from mclrec.evaluation.evaluate import evaluate_checkpoint

    result, _, _ = evaluate_checkpoint(tiny, tmp_path / "best.pt", device="cpu", ks=(10,))
    assert summary["best_epoch"] >= 1
    assert result["metrics"]["test"]["HR@10"] > 1.5 * _popularity_hr10(tiny)


@pytest.mark.parametrize("variant", ["sasrec-bpr", "cl4srec", "duorec", "mclrec-paper", "mclrec-j"])
def test_every_variant_trains_one_epoch(tiny, run_cfg, tmp_path, variant):
    summary = train(run_cfg(variant, max_epochs=1), tiny, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert summary["epochs_run"] == 1 and len(log) == 1
    assert all(np.isfinite(v) for v in log[0]["loss"].values())


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_different(tiny, run_cfg, tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(run_cfg("mclrec", seed=seed, max_epochs=1), tiny, tmp_path / name, progress=False)
        runs[name] = [json.loads(l) for l in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    strip = lambda log: [{k: r[k] for k in ("loss", "valid")} for r in log]  # noqa: E731
    assert strip(runs["a"]) == strip(runs["b"])
    assert strip(runs["a"]) != strip(runs["c"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mclrec", "duorec"])
def test_resume_gives_exactly_the_uninterrupted_run(tiny, run_cfg, tmp_path, variant):
    train(run_cfg(variant, max_epochs=2), tiny, tmp_path / "straight", progress=False)
    train(run_cfg(variant, max_epochs=1), tiny, tmp_path / "resumed", progress=False)
    train(run_cfg(variant, max_epochs=2), tiny, tmp_path / "resumed", resume="must", progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, state in a["modules"].items():
        for key, value in state.items():
            assert torch.equal(value, b["modules"][name][key]), (name, key)
    strip = lambda p: [{k: r[k] for k in ("epoch", "loss", "valid")} for r in map(json.loads, p.read_text().splitlines())]  # noqa: E731
    assert strip(tmp_path / "straight" / "log.jsonl") == strip(tmp_path / "resumed" / "log.jsonl")


def test_resume_refuses_changed_settings_unless_asked_to_restart(tiny, run_cfg, tmp_path):
    train(run_cfg("sasrec", max_epochs=1), tiny, tmp_path, progress=False)
    with pytest.raises(TrainingError, match=r"settings differ from the checkpoint: lr \(it was trained with --set lr="):
        train(run_cfg("sasrec", max_epochs=2, lr=0.01), tiny, tmp_path, resume="must", progress=False)
    summary = train(run_cfg("sasrec", max_epochs=1, lr=0.01), tiny, tmp_path, resume="if-compatible", progress=False)
    assert summary["epochs_run"] == 1
    # another variant: the option that continues the run is -m, as --set refuses variant and model
    with pytest.raises(TrainingError, match=r"it was trained with .*-m sasrec") as refused:
        train(run_cfg("cl4srec", max_epochs=2, lr=0.01), tiny, tmp_path, resume="must", progress=False)
    assert "--set variant" not in str(refused.value) and "--set model" not in str(refused.value)


def test_what_a_resume_found_is_said_on_stderr(tiny, run_cfg, tmp_path, capsys):
    run = tmp_path / "mistyped"
    train(run_cfg("sasrec", max_epochs=1), tiny, run, resume="must", progress=False)
    assert f"{run}: nothing to resume (no last.pt or last.prev.pt); starting afresh" in capsys.readouterr().err
    summary = train(run_cfg("sasrec", max_epochs=2), tiny, run, resume="must", progress=False)
    assert f"{run}: resuming after epoch 1" in capsys.readouterr().err and summary["epochs_run"] == 2
    train(run_cfg("sasrec", max_epochs=1, lr=0.01), tiny, run, resume="if-compatible", progress=False)
    err = capsys.readouterr().err
    assert f"{run}: not resumed, starting afresh:" in err and "settings differ from the checkpoint: lr" in err
    train(run_cfg("sasrec", max_epochs=1, lr=0.01), tiny, tmp_path / "fresh", progress=False)
    assert "resum" not in capsys.readouterr().err  # a plain training says nothing of resuming
    train(run_cfg("cl4srec", max_epochs=1), tiny, run, progress=False)  # a plain training over another run
    assert f"{run}: starting afresh over the run there" in capsys.readouterr().err


def test_finished_run_restores_a_deleted_best_checkpoint(tiny, run_cfg, tmp_path):
    train(run_cfg("sasrec", max_epochs=1), tiny, tmp_path, progress=False)
    original = load_checkpoint(tmp_path / "best.pt")["modules"]["encoder"]
    (tmp_path / "best.pt").unlink()
    train(run_cfg("sasrec", max_epochs=1), tiny, tmp_path, resume="if-compatible", progress=False)
    restored = load_checkpoint(tmp_path / "best.pt")["modules"]["encoder"]
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_non_finite_loss_stops_with_component_and_epoch(tiny, run_cfg, tmp_path, monkeypatch):
    train(run_cfg("cl4srec", max_epochs=1), tiny, tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(objectives, "info_nce", lambda a, b, t=1.0, **_: torch.tensor(float("nan")))
    with pytest.raises(TrainingError, match=r"epoch 2: non-finite loss component 'cl1'.*last good checkpoint kept"):
        train(run_cfg("cl4srec", max_epochs=2), tiny, tmp_path, resume="must", progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_max_minutes_budget_stops_training(tiny, run_cfg, tmp_path):
    summary = train(run_cfg("sasrec", max_epochs=50, max_minutes=1e-4), tiny, tmp_path, progress=False)
    assert summary["epochs_run"] == 1 and "time budget" in summary["stopped"]


def test_early_stopping_uses_patience(tiny, run_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: {"MRR@10": 0.5})
    summary = train(run_cfg("sasrec", max_epochs=20, patience=2, early_stopping="exact"), tiny, tmp_path, progress=False)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1 and "early stop" in summary["stopped"]


def test_eval_instances_cover_every_user(tiny):
    valid = eval_instances(tiny, "valid", torch.device("cpu"))
    assert len(valid) == tiny.n_users and int(valid.lengths.min()) >= 1


class _KeepsNothing(dict):
    """A Batch.packed that forgets what it is given: every encoder call packs its inputs itself."""

    def __setitem__(self, key, value):
        pass


def test_mclrecs_step_3_reuses_step_1s_packed_inputs_with_the_same_numbers(tiny, run_cfg, monkeypatch):
    cfg = run_cfg("mclrec", packed_tokens=True)  # dropout on: the same draws in the same order either way
    made = []
    pack_inputs = objectives.packed_inputs
    monkeypatch.setattr(objectives, "packed_inputs", lambda *a: made.append(1) or pack_inputs(*a))
    runs = []
    for packed in ({}, _KeepsNothing()):
        made.clear()
        torch.manual_seed(0)
        parts = build_parts(cfg, tiny.n_items)
        optimisers = Optimisers(cfg, parts)
        batch, generator = _one_batch(cfg, tiny, parts)
        batch.packed = packed
        terms = train_step(cfg, parts, optimisers, batch, generator)
        runs.append((len(made), terms, [p.detach().clone() for m in parts.modules().values() for p in m.parameters()]))
    (kept, kept_terms, kept_weights), (forgot, forgot_terms, forgot_weights) = runs
    assert (kept, forgot) == (1, 2)  # L0's input and views, packed in step 1 and reused by step 3
    assert kept_terms.keys() == forgot_terms.keys()
    assert all(torch.equal(kept_terms[k], forgot_terms[k]) for k in kept_terms)
    assert all(torch.equal(a, b) for a, b in zip(kept_weights, forgot_weights, strict=True))
