"""The optimised training paths (length buckets or packed tokens, views in one encoder call) against the naive
reference path."""

from __future__ import annotations

import json

import pytest
import torch

from mclrec.config import NAIVE_PATH
from mclrec.evaluation.evaluate import evaluate_checkpoint
from mclrec.models.dropout import Dropout
from mclrec.training.objectives import build_parts, encode_views
from mclrec.training.trainer import train

NO_DROPOUT = {"hidden_dropout": 0.0, "attn_dropout": 0.0}


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_views_in_one_call_equal_separate_calls(tiny, run_cfg):
    cfg = run_cfg("mclrec", **NO_DROPOUT)
    encoder = build_parts(cfg, tiny.n_items).encoder.eval()
    g = torch.Generator().manual_seed(0)
    views = []
    for width in (20, 13, 7):  # widths differ, as DuoRec's partner rows may
        lengths = torch.randint(1, width + 1, (33,), generator=g)
        seq = torch.randint(1, tiny.n_items + 1, (33, width), generator=g)
        seq[torch.arange(width)[None, :] >= lengths[:, None]] = 0
        views.append((seq, lengths))
    together = encode_views(cfg, encoder, *views)
    packed = encode_views(cfg.replace(packed_tokens=True), encoder, *views)
    apart = encode_views(cfg.replace(**NAIVE_PATH), encoder, *views)
    for a, p, b in zip(together, packed, apart):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(p, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant,fast_path,epochs", [("mclrec", {}, 2), ("duorec", {}, 2),
                                                     ("mclrec", {"packed_tokens": True}, 1)])
def test_optimised_and_naive_paths_train_the_same_model(tiny, run_cfg, tmp_path, variant, fast_path, epochs):
    """Without dropout (whose random stream the paths draw differently) both paths give the same run."""
    for name, extra in (("fast", fast_path), ("naive", NAIVE_PATH)):
        train(run_cfg(variant, max_epochs=epochs, batch_size=128, **NO_DROPOUT, **extra), tiny, tmp_path / name,
              progress=False)
    fast, naive = _log(tmp_path / "fast"), _log(tmp_path / "naive")
    assert len(fast) == len(naive) == epochs
    one_user = 1.0 / tiny.n_users
    for a, b in zip(fast, naive):
        assert a["loss"].keys() == b["loss"].keys()
        for key in a["loss"]:
            assert a["loss"][key] == pytest.approx(b["loss"][key], rel=1e-4), key
        for key in a["valid"]:
            assert a["valid"][key] == pytest.approx(b["valid"][key], abs=one_user), key
    test_fast = evaluate_checkpoint(tiny, tmp_path / "fast" / "best.pt", device="cpu")[0]["metrics"]["test"]
    test_naive = evaluate_checkpoint(tiny, tmp_path / "naive" / "best.pt", device="cpu")[0]["metrics"]["test"]
    for key in test_fast:
        assert test_fast[key] == pytest.approx(test_naive[key], abs=one_user), key


@pytest.mark.parametrize("draws", ["bytes", "uniform"])
def test_dropout_draws_reach_every_dropout_and_change_only_the_draws(tiny, run_cfg, draws):
    cfg = run_cfg("mclrec", dropout_draws=draws)
    encoder = build_parts(cfg, tiny.n_items).encoder.train()
    dropouts = [m for m in encoder.modules() if isinstance(m, Dropout)]
    assert dropouts and {m.draws for m in dropouts} == {draws}
    seq = torch.randint(1, tiny.n_items + 1, (64, 20), generator=torch.Generator().manual_seed(0))
    lengths = torch.full((64,), 20)
    torch.manual_seed(1)
    first = encoder(seq, lengths)
    torch.manual_seed(1)
    assert torch.equal(encoder(seq, lengths), first)  # seeded: the same draws again
    other = build_parts(cfg.replace(dropout_draws="uniform" if draws == "bytes" else "bytes"), tiny.n_items).encoder
    other.load_state_dict(encoder.state_dict())
    torch.manual_seed(1)
    assert not torch.allclose(other.train()(seq, lengths), first)  # the other way of drawing: other masks
    with torch.no_grad():
        assert torch.equal(other.eval()(seq, lengths), encoder.eval()(seq, lengths))  # the same model


def test_unknown_dropout_draws_are_refused(tiny, run_cfg):
    with pytest.raises(ValueError, match="dropout_draws must be one of bytes, uniform"):
        build_parts(run_cfg("sasrec", dropout_draws="bernoulli"), tiny.n_items)
