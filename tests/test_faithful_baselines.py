"""The baselines as their authors trained them: sasrec-bce (original SASRec objective), cl4srec-orig (mask token),
and the variants' settings (show-config), each trained and evaluated on a short synthetic run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.cli import app
from mclrec.data.processed import Split, sequence_instances
from mclrec.models.augment import mask, two_views
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.losses import bce_loss
from mclrec.data.instances import sequence_training_instances
from mclrec.training.batches import SeenItems

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_bce_loss_equals_a_loop_over_positions():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    weights = torch.randn(9, 4, generator=g, dtype=torch.float64)
    positives = torch.tensor([[2, 3, 4, 0, 0], [5, 6, 7, 8, 1], [3, 0, 0, 0, 0]])
    negatives = torch.randint(1, 9, (3, 5), generator=g)
    terms = []
    for b in range(3):
        for t in range(5):
            if positives[b, t] != 0:
                pos = float(states[b, t] @ weights[positives[b, t]])
                neg = float(states[b, t] @ weights[negatives[b, t]])
                sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
                terms.append(-np.log(sig(pos)) - np.log(1 - sig(neg)))
    assert bce_loss(states, weights, positives, negatives).item() == pytest.approx(np.mean(terms), rel=1e-12)


def test_bce_loss_gradient_reaches_only_positions_with_a_target():
    states = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 3, dtype=torch.float64)
    positives = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0]])
    bce_loss(states, weights, positives, torch.full((2, 4), 5)).backward()
    assert (states.grad[positives == 0] == 0).all() and (states.grad[positives != 0] != 0).any()


def test_sequence_instances_align_next_items_with_inputs():
    # user 1: input 1 2 3, target 4; user 2: input 5 6 7 8 9 (truncated to 3), target 10; user 3: empty input
    split = Split(users=np.array([1, 2, 3]), offsets=np.array([0, 3, 8, 8]),
                  items=np.array([1, 2, 3, 5, 6, 7, 8, 9]), targets=np.array([4, 10, 11]))
    inputs, lengths, nexts, users = sequence_instances(split, max_len=3)
    assert users.tolist() == [1, 2] and lengths.tolist() == [3, 3]
    assert inputs.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert nexts.tolist() == [[2, 3, 4], [8, 9, 10]]
    inputs, lengths, nexts, _ = sequence_instances(split, max_len=5)
    assert inputs[0].tolist() == [1, 2, 3, 0, 0] and nexts[0].tolist() == [2, 3, 4, 0, 0]


def test_negatives_avoid_every_training_item_and_cover_the_rest(tiny):
    instances = sequence_training_instances(tiny, torch.device("cpu"))
    seen = SeenItems.build(instances, tiny.n_items)
    rows = torch.arange(40)
    negatives = seen.sample(rows, (40, 200), torch.Generator().manual_seed(1))
    for row in range(40):  # test-only loop: the reference set of each user's items
        had = set(instances.seq[row].tolist()) | set(instances.targets[row].tolist())
        drawn = set(negatives[row].tolist())
        assert not drawn & had and drawn <= set(range(1, tiny.n_items + 1))
    again = seen.sample(rows, (40, 200), torch.Generator().manual_seed(1))
    assert torch.equal(negatives, again)
    # uniform over the unseen items: every unseen item of row 0 appears with 4000 draws
    many = seen.sample(torch.zeros(4000, dtype=torch.long), (4000, 1), torch.Generator().manual_seed(2))
    had = set(instances.seq[0].tolist()) | set(instances.targets[0].tolist())
    assert set(many.flatten().tolist()) == set(range(1, tiny.n_items + 1)) - had


def test_sequence_states_last_position_equals_the_read_out():
    torch.manual_seed(0)
    encoder = SASRecEncoder(20, 8, hidden_dropout=0.0, attn_dropout=0.0).eval()
    seq = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    lengths = torch.tensor([3, 5])
    states = encoder.sequence_states(seq)
    torch.testing.assert_close(states[torch.arange(2), lengths - 1], encoder(seq, lengths))


def test_mask_token_replaces_items_and_keeps_the_rest():
    seq = torch.arange(1, 11).repeat(4, 1)
    lengths = torch.tensor([10, 10, 7, 4])
    seq[2, 7:] = 0
    seq[3, 4:] = 0
    out, _ = mask(seq, lengths, 0.3, torch.Generator().manual_seed(0), mask_id=99)
    assert ((out == 99).sum(dim=1) == torch.floor(lengths * 0.3).long()).all()
    assert torch.equal(torch.where(out == 99, seq, out), seq)  # only items became tokens, padding untouched
    v1, _, v2, _ = two_views(seq, lengths, torch.Generator().manual_seed(0), 0.6, 0.3, 0.6, mask_id=99)
    assert not ((v1 == 0) & (seq != 0) & (torch.arange(10) < 4)).all()  # mask writes the token, never 0 ...
    assert ((v1 == 99) | (v2 == 99)).any()  # ... and the token shows up in some view


def test_mask_token_row_is_trained_but_never_ranked():
    encoder = SASRecEncoder(10, 5)
    h = torch.randn(2, encoder.item_embedding.embedding_dim)
    assert encoder.full_scores(h).shape == (2, 10)  # items 1..10; row 11 (the token) is not a candidate
    out = encoder.eval()(torch.tensor([[1, 11, 2], [11, 3, 0]]), torch.tensor([3, 2]))
    (out * torch.randn_like(out)).sum().backward()  # a plain sum of LayerNorm outputs has zero gradient
    assert encoder.item_embedding.weight.grad[11].abs().sum() > 0


@pytest.mark.parametrize("variant,expected", [
    ("sasrec-bce", {"model": "sasrec", "loss": "bce"}),
    ("cl4srec-orig", {"model": "cl4srec", "crop_ratio": 0.6, "mask_ratio": 0.3, "reorder_ratio": 0.6,
                      "mask_item": "token", "lambda_cl1": 0.1}),
    ("mclrec-no-cl2", {"model": "mclrec", "cl2": False, "lambda_cl1": 0.1}),
    ("mclrec-no-views", {"model": "mclrec", "cl2": False, "lambda_cl1": 0.0}),
])
def test_show_config_gives_the_faithful_settings(variant, expected):
    res = runner.invoke(app, ["show-config", "beauty", variant, "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert {k: shown[k] for k in expected} == expected
    assert shown["early_stopping"] == "official" and shown["patience"] == 10


def test_bce_loss_is_refused_for_models_other_than_sasrec(params):
    with pytest.raises(config.ConfigError, match="loss 'bce'.*model 'sasrec' only, not 'cl4srec'"):
        config.resolve_run(params, "beauty", "cl4srec", {"loss": "bce"})


@pytest.mark.parametrize("variant", ["sasrec-bce", "cl4srec-orig", "mclrec-no-cl2"])
def test_short_synthetic_run_trains_and_evaluates(variant, tiny_dir, tmp_path):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["datasets"]["synthetic"]["preprocess"]["max_len"] = 20  # the tiny dataset's
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    common = ["--dataset", "synthetic", "--variant", variant, "--params", str(tmp_path / "params.yaml"),
              "--data-dir", str(tiny_dir)]
    res = runner.invoke(app, ["train", *common, "--set", "batch_size=64", "--max-epochs", "2",
                              "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["loss"]["rec"]) for r in log)
    assert log[1]["loss"]["rec"] < log[0]["loss"]["rec"]  # it learns
    res = runner.invoke(app, ["evaluate", *common, "--checkpoint", str(tmp_path / "run" / "best.pt"),
                              "--output", str(tmp_path / "res.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "res.json").read_text())
    assert record["variant"] == variant and record["metrics"]["test"]["HR@50"] > 50 / 150  # beats random ranking
