"""benchmarks/compare_settings.py: the per-metric comparison by hand, and a two-seed run on the tiny dataset."""

from __future__ import annotations

import json
import math

import pytest

from mclrec.data.preprocess import preprocess
from mclrec.data.synth import generate_synthetic

from .conftest import ROOT, load_benchmark


def test_compare_hand_computed():
    compare = load_benchmark("compare_settings").compare
    a = [{"m": 0.10}, {"m": 0.12}, {"m": 0.14}]
    b = [{"m": 0.11}, {"m": 0.13}, {"m": 0.15}]
    (row,) = compare(a, b, ("m",), alpha=0.05)
    assert row["mean_a"] == pytest.approx(0.12) and row["mean_b"] == pytest.approx(0.13)
    assert row["sd_a"] == pytest.approx(0.02) and row["diff"] == pytest.approx(0.01)
    assert row["diff_in_sd_a"] == pytest.approx(0.5)
    # Welch with equal sds 0.02, n = 3 each: t = 0.01 / sqrt(2 * 0.02^2 / 3) = 0.612, df = 4 -> p = 0.574
    assert row["p_welch"] == pytest.approx(0.5735, abs=1e-3) and not row["differs"]


def test_compare_flags_a_clear_difference_and_constant_runs():
    compare = load_benchmark("compare_settings").compare
    a = [{"m": 0.10 + 0.001 * i, "c": 0.5} for i in range(4)]
    b = [{"m": 0.20 + 0.001 * i, "c": 0.5} for i in range(4)]
    far, same = compare(a, b, ("m", "c"), alpha=0.05)
    assert far["differs"] and far["p_welch"] < 1e-6
    assert same["p_welch"] == 1.0 and not same["differs"] and math.isnan(same["diff_in_sd_a"])


def test_compare_settings_runs_both_settings_over_seeds(tmp_path, capsys):
    raw, processed = tmp_path / "raw.txt", tmp_path / "processed"
    generate_synthetic(raw, seed=3, n_users=200, n_items=120, n_clusters=6, mean_length=8, min_length=5,
                       stay_probability=0.8)
    preprocess(raw, "seqtxt", 5, 5, 50, processed)
    module = load_benchmark("compare_settings")
    report = module.main(["--variant", "sasrec", "--seeds", "0", "1", "--data-dir", str(processed),
                          "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "runs"),
                          "--set", "max_epochs=1", "--set", "batch_size=64",
                          "--set", "device=cpu", "--json", str(tmp_path / "cmp.json")])
    out = capsys.readouterr().out
    assert "| NDCG@10 |" in out and out.strip().splitlines()[-1].startswith("differ at alpha=0.05:")
    for name in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / "runs" / name).iterdir()) == ["seed-0", "seed-1"]
        assert [r["epochs_run"] for r in report["runs"][name]] == [1, 1]
    # different seeds give different runs; the saved report is the returned one
    assert report["runs"]["b"][0]["NDCG@10"] != report["runs"]["b"][1]["NDCG@10"]
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["metric"] for r in saved["comparison"]] == list(module.METRICS)
    assert saved["settings"] == {"a": {"length_buckets": [], "batch_views": False, "packed_tokens": False,
                                       "dropout_draws": "uniform", "fused_losses": False, "adam": "foreach"},
                                 "b": {}}
    assert ("- A: length_buckets=[] batch_views=false packed_tokens=false dropout_draws=\"uniform\" fused_losses=false"
            " adam=\"foreach\"; B: params.yaml;") in out


def test_compare_settings_refuses_data_processed_with_another_max_len(tiny_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"processed with max_len=20, params say 50"):
        load_benchmark("compare_settings").main(["--variant", "sasrec", "--seeds", "0", "--data-dir", str(tiny_dir),
                                                 "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
