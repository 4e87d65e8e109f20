"""benchmarks/bench_scale.py runs the whole pipeline at tiny scale, reports every stage and cleans up after itself."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import ROOT, load_benchmark


def test_bench_scale_smoke(tmp_path, capsys):
    bench = load_benchmark("bench_scale")
    workdir = tmp_path / "work"
    argv = ["--users", "2000", "--items", "500", "--batches", "2", "--warmup", "0", "--eval-users", "64",
            "--variants", "mclrec", "sasrec:1", "--threads", "1", "--params", str(ROOT / "params.yaml"),
            "--workdir", str(workdir), "--json", str(tmp_path / "scale.json")]
    threads = torch.get_num_threads()
    try:
        result = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert not workdir.exists()  # made by the benchmark, so removed without --keep

    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["settings"]["generator"]["n_clusters"] == 12  # params.yaml's 40 items per cluster
    generated, pre = saved["generate"], saved["preprocess"]
    assert generated["n_users"] == 2000 and generated["raw_bytes"] > 0 and generated["peak_rss_mib"] > 0
    assert pre["engine"] == "memory" and set(pre["timings"]) == {"read", "hash", "kcore", "split", "write"}
    assert 0 < pre["n_items"] <= 500 and 0 < pre["n_users"] <= 2000
    assert [(t["variant"], t["batches"]) for t in saved["train"]] == [("mclrec", 2), ("sasrec", 1)]
    for row in saved["train"]:
        assert row["per_100_s"] == pytest.approx(100 * row["wall_s"] / row["batches"])
        assert row["epoch_s"] == pytest.approx(row["batch_s_mean"] * row["batches_per_epoch"])
        assert row["instances"] > 0 and row["peak_rss_mib"] >= row["rss_after_setup_mib"] > 0
    ev = saved["evaluate"]
    assert ev["users"] == 64 and ev["items"] == pre["n_items"] and ev["all_users"] == pre["n_users"]
    assert ev["all_users_s"] == pytest.approx(ev["seconds"] * ev["all_users"] / 64) and ev["peak_rss_mib"] > 0
    assert saved["header"]["cpu_flags"] is not None and saved["header"]["torch_threads"] == 1
    assert len(saved["header"]["load_average"]) == len(saved["header"]["load_average_end"]) == 3

    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("- after preprocess (engine memory): ") for line in lines)
    for stage in ("generate", "preprocess (memory)", "train mclrec", "train sasrec", "evaluate"):
        assert sum(line.startswith(f"| {stage}") for line in lines) == 1, stage


def test_kept_data_is_reused_for_the_same_settings(tmp_path, monkeypatch):
    bench = load_benchmark("bench_scale")
    stages = []
    monkeypatch.setattr(bench, "spawn", lambda job: stages.append(job["stage"]) or {"stage": job["stage"]})
    settings = {"generator": {"n_users": 300, "n_items": 100}, "preprocess": {"user_k": 5}}
    first = bench.prepare_data(tmp_path, {}, settings)
    again = bench.prepare_data(tmp_path, {}, settings)
    other = bench.prepare_data(tmp_path, {}, {**settings, "generator": {"n_users": 301, "n_items": 100}})
    assert stages == ["generate", "preprocess", "generate", "preprocess"]
    assert first == ({"stage": "generate"}, {"stage": "preprocess"}) and other == first
    assert again == ({"stage": "generate", "reused": True}, {"stage": "preprocess", "reused": True})
    (tmp_path / bench.RAW_NAME).write_text("1 2 3\n")
    bench._remove_data(tmp_path, created=False)  # without --keep: the data goes, a folder that was given stays
    assert tmp_path.exists() and not any(tmp_path.iterdir())
