"""benchmarks/bench_train.py runs end to end on a tiny processed dataset and prints a row per variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mclrec.data.preprocess import preprocess
from mclrec.data.synth import generate_synthetic

from .conftest import ROOT, load_benchmark

VARIANTS = ("sasrec", "cl4srec", "duorec", "mclrec", "mclrec-paper", "mclrec-j")


@pytest.fixture(scope="module")
def tiny_processed(tmp_path_factory) -> Path:
    """200 users x 150 items, preprocessed like the synthetic dataset (5-core, max_len 50)."""
    tmp = tmp_path_factory.mktemp("bench")
    raw = tmp / "tiny.txt"
    generate_synthetic(raw, seed=3, n_users=200, n_items=150, n_clusters=10, mean_length=9, min_length=5,
                       stay_probability=0.8)
    out = tmp / "processed"
    preprocess(raw, "seqtxt", 5, 5, 50, out, extra_stats={"dataset": "synthetic"})
    return out


@pytest.mark.parametrize("naive", [False, True])
def test_bench_train_smoke(tiny_processed, tmp_path, capsys, naive):
    bench = load_benchmark("bench_train")
    argv = ["--dataset", "synthetic", "--data-dir", str(tiny_processed), "--params", str(ROOT / "params.yaml"),
            "--batches", "1", "--warmup", "1", "--batch-size", "32", "--threads", "1", "--device", "cpu",
            "--matmul-size", "128",
            "--json", str(tmp_path / "bench.json")] + (["--naive"] if naive else [])
    threads = torch.get_num_threads()
    try:  # one thread: fast, and immune to OpenMP spin-waiting when other processes load the CPUs
        result = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()

    for variant in VARIANTS:
        assert sum(line.startswith(f"| {variant} |") for line in lines) == 1, variant
    assert lines[-2].startswith("mclrec/sasrec epoch ratio: ") and lines[-2].endswith("(target <= 3)")
    assert lines[-1].startswith("eval seconds: ") and lines[-1].endswith("(target < 5 s on CPU)")
    assert any(("naive" if naive else "optimised") in line for line in lines if line.startswith("- encoder path"))

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["variant"] for r in saved["variants"]] == list(VARIANTS)
    buckets = {tuple(r["length_buckets"]) for r in saved["variants"]}
    assert buckets == ({()} if naive else {(8, 16, 32)})
    assert {r["batch_views"] for r in saved["variants"]} == {not naive}
    for row in saved["variants"]:
        assert row["batch_s"] > 0 and row["epoch_s"] == pytest.approx(row["batch_s"] * row["batches_per_epoch"])
    assert saved["summary"]["mclrec_sasrec_epoch_ratio"] == pytest.approx(
        result["variants"][3]["epoch_s"] / result["variants"][0]["epoch_s"])
    assert saved["eval"]["users"] == saved["header"]["n_users"] and saved["eval"]["seconds"] > 0
    assert saved["matmul"]["gflops"] > 0 and 0 < saved["summary"]["sasrec_achieved_over_peak"]


def test_flop_groups_mirror_the_encoder():
    bench = load_benchmark("bench_train")
    lengths = torch.tensor([1, 8, 9, 16, 17, 50, 3])
    assert bench.encoder_groups(lengths, (8, 16, 32)) == [(3, 8), (2, 16), (1, 17), (1, 50)]
    assert bench.encoder_groups(lengths, ()) == [(7, 50)]
    assert bench.encoder_groups(torch.tensor([2, 5]), (8, 16, 32)) == [(2, 5)]


@pytest.mark.parametrize("batch_views", [True, False])
def test_sasrec_step_flops_by_hand(batch_views):
    bench = load_benchmark("bench_train")
    cfg = {"model": "sasrec", "length_buckets": [8, 16, 32], "batch_views": batch_views, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
           "lambda_sem": 0.1, "lambda_cl1": 0.1, "cl2": True, "reg": True, "schedule": "meta"}
    lengths = torch.tensor([3, 5, 40])
    batch = bench.Batch(torch.zeros(3, 40, dtype=torch.long), lengths, torch.ones(3, dtype=torch.long))
    per_token = 8 * 64 * 64 + 4 * 64 * 256
    encoder = 2 * (2 * 5 * (per_token + 5 * 4 * 64) + 40 * (per_token + 40 * 4 * 64))  # groups (2, 5), (1, 40)
    expected = 3 * (encoder + 2 * 3 * 64 * 101)
    assert bench.step_flops(cfg, batch, 100) == {"flops": expected, "tokens": 50.0, "real_tokens": 48.0}
