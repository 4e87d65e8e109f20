"""Seed aggregation on hand-computed means, sample stds and 95% t-intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mclrec.report.aggregate import aggregate_seeds, load_index, load_ranks, seed_paths, summarise, write_aggregate

T_975_DF2 = 4.302652729749462  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)


def run(seed: int, hr: float, ndcg: float, **extra) -> dict:
    """A minimal single-run results document."""
    return {"dataset": "beauty", "variant": "mclrec", "model": "mclrec", "seed": seed, "best_epoch": seed + 10,
            "train_seconds": 100.0 * seed, "config": {"seed": seed, "beta": 0.05},
            "metrics": {"valid": {"HR@20": hr + 0.01, "NDCG@20": ndcg}, "test": {"HR@20": hr, "NDCG@20": ndcg}}, **extra}


def test_three_seeds_mean_std_and_t_interval():
    # HR@20 0.10, 0.12, 0.14: mean 0.12, deviations -0.02, 0, 0.02 -> var 0.0008/2, std 0.02
    stats = aggregate_seeds([run(1, 0.10, 0.05), run(2, 0.12, 0.05), run(3, 0.14, 0.05)])
    hr = stats["test"]["HR@20"]
    half = T_975_DF2 * 0.02 / math.sqrt(3)  # 0.049683
    assert hr["mean"] == pytest.approx(0.12)
    assert hr["std"] == pytest.approx(0.02)
    assert hr["n"] == 3
    assert hr["ci95"] == pytest.approx([0.12 - half, 0.12 + half])
    assert hr["ci95"][0] == pytest.approx(0.070317, abs=1e-6)
    assert stats["valid"]["HR@20"]["mean"] == pytest.approx(0.13)
    assert stats["test"]["NDCG@20"] == {"mean": pytest.approx(0.05), "std": pytest.approx(0.0), "n": 3,
                                        "ci95": pytest.approx([0.05, 0.05])}


def test_single_seed_has_zero_std_and_no_interval():
    stats = aggregate_seeds([run(1, 0.10, 0.05)])
    assert stats["test"]["HR@20"] == {"mean": 0.10, "std": 0.0, "n": 1, "ci95": None}


def test_summarise_rejects_empty():
    with pytest.raises(ValueError):
        summarise([])


def test_metrics_missing_in_one_seed_are_left_out():
    partial = run(2, 0.12, 0.05)
    del partial["metrics"]["test"]["NDCG@20"]
    stats = aggregate_seeds([run(1, 0.10, 0.05), partial])
    assert set(stats["test"]) == {"HR@20"}


def write_seeds(tmp_path, docs, ranks=None):
    """Write per-seed JSONs (and optional .ranks.npy) under tmp_path/beauty/mclrec/seed<k>.json."""
    paths = []
    for i, doc in enumerate(docs):
        path = tmp_path / "beauty" / "mclrec" / f"seed{doc['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        if ranks is not None:
            np.save(path.with_suffix(".ranks.npy"), np.asarray(ranks[i], dtype=np.int64))
        paths.append(path)
    return paths


def test_write_aggregate_keeps_the_single_run_schema(tmp_path):
    groups = lambda v: {"=5": {"n_users": 7, "NDCG@20": v}}  # noqa: E731
    docs = [run(1, 0.10, 0.04, noise={"0.1": {"NDCG@20": 0.03}}, groups=groups(0.02)),
            run(2, 0.12, 0.06, noise={"0.1": {"NDCG@20": 0.05}}, groups=groups(0.04))]
    paths = write_seeds(tmp_path, docs, ranks=[[0, 5, 30], [1, 5, 40]])
    out = tmp_path / "beauty" / "mclrec.json"
    doc = write_aggregate(paths, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["metrics"]["test"] == {"HR@20": pytest.approx(0.11), "NDCG@20": pytest.approx(0.05)}
    assert doc["metrics_std"]["test"]["HR@20"] == pytest.approx(math.sqrt(2) * 0.01)
    assert doc["metrics_ci95"]["test"]["HR@20"][1] > 0.11
    assert doc["seeds"] == [1, 2] and doc["n_seeds"] == 2
    assert doc["runs"] == [str(p) for p in paths]
    assert doc["best_epochs"] == [11, 12] and doc["train_seconds"] == pytest.approx(150.0)
    assert doc["noise"]["0.1"]["NDCG@20"] == pytest.approx(0.04)
    assert doc["groups"]["=5"] == {"n_users": 7.0, "NDCG@20": pytest.approx(0.03)}
    assert "seed" not in doc["config"] and doc["config"]["beta"] == 0.05
    assert load_ranks(out).tolist() == [[0, 5, 30], [1, 5, 40]]
    assert load_ranks(paths[0]).tolist() == [0, 5, 30]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_aggregate_without_seed_ranks_writes_no_ranks(tmp_path):
    paths = write_seeds(tmp_path, [run(0, 0.1, 0.1), run(2, 0.2, 0.1)])
    assert seed_paths(tmp_path / "beauty" / "mclrec", [0, 2]) == paths
    write_aggregate(paths, tmp_path / "agg" / "mclrec.json")
    assert load_ranks(tmp_path / "agg" / "mclrec.json") is None and (tmp_path / "agg" / "mclrec.json").is_file()


def test_aggregating_different_variants_or_repeated_seeds_fails(tmp_path):
    other = run(2, 0.1, 0.1)
    other["variant"] = "duorec"
    with pytest.raises(ValueError, match="variant"):
        write_aggregate(write_seeds(tmp_path, [run(1, 0.1, 0.1), other]), tmp_path / "x.json")
    with pytest.raises(ValueError, match="seeds"):
        write_aggregate(write_seeds(tmp_path / "b", [run(1, 0.1, 0.1)]) * 2, tmp_path / "y.json")


def test_load_index_marks_missing_runs_none(tmp_path):
    (tmp_path / "beauty").mkdir()
    (tmp_path / "beauty" / "sasrec.json").write_text(json.dumps(run(1, 0.1, 0.1)))
    index = load_index(tmp_path, ["beauty"], ["sasrec", "duorec"])
    assert index[("beauty", "sasrec")]["seed"] == 1
    assert index[("beauty", "duorec")] is None
    assert load_ranks(tmp_path / "beauty" / "sasrec.json") is None
