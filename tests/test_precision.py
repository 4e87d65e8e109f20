"""`precision: bf16`: the encoder's products under bfloat16 autocast while training; read-outs and losses float32."""

from __future__ import annotations

import json

import torch

from mclrec.checkpoint import load_checkpoint
from mclrec.training.objectives import build_parts, encode_views
from mclrec.training.trainer import train


def _views(n_items: int):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 21, (64,), generator=g)
    seq = torch.randint(1, n_items + 1, (64, 20), generator=g)
    seq[torch.arange(20)[None, :] >= lengths[:, None]] = 0
    return seq, lengths


def test_bf16_read_out_is_float32_and_close_to_fp32(tiny, run_cfg):
    cfg = run_cfg("mclrec")
    encoder = build_parts(cfg, tiny.n_items).encoder.eval()
    view = _views(tiny.n_items)
    with torch.no_grad():
        (full,) = encode_views(cfg, encoder, view)
        (half,) = encode_views(cfg.replace(precision="bf16"), encoder, view)
    assert full.dtype == half.dtype == torch.float32
    assert not torch.equal(full, half)  # the products did run in bfloat16
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)


def test_bf16_training_runs_and_records_its_precision(tiny, run_cfg, tmp_path):
    summary = train(run_cfg("mclrec", max_epochs=1, precision="bf16"), tiny, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert summary["best_epoch"] == 1 and all(torch.isfinite(torch.tensor(v)) for v in log[0]["loss"].values())
    assert load_checkpoint(tmp_path / "best.pt")["config"]["precision"] == "bf16"
    weights = load_checkpoint(tmp_path / "best.pt")["modules"]["encoder"]["item_embedding.weight"]
    assert weights.dtype == torch.float32  # parameters and optimiser state stay float32
