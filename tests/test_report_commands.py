"""`mclrec report curves|aggregate` read the study's seeds from params.yaml (the commands both workflows run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mclrec.cli import app
from mclrec.report.commands import seed_run_paths

from .conftest import ROOT

runner = CliRunner()


def _params(tmp_path, seeds: list[int]) -> str:
    """The project's params.yaml with a one-dataset study over `seeds`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"].update(seeds=seeds, datasets=["synthetic"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _seed_result(path, seed: int, ndcg: float) -> None:
    """A minimal seed results JSON and its ranks beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": "synthetic", "variant": "mclrec", "seed": seed,
                                "metrics": {"test": {"NDCG@20": ndcg}}}))
    np.save(path.with_suffix(".ranks.npy"), np.array([seed, 3, 9]))


def test_curves_overlays_the_study_seeds(tmp_path):
    for seed in (0, 2):
        log = tmp_path / "models" / "synthetic" / "mclrec" / f"seed{seed}" / "log.jsonl"
        log.parent.mkdir(parents=True)
        records = [{"epoch": e, "loss": {"rec": 5 - e, "cl1": 1 / e}, "valid": {"MRR@10": 0.1 * e}} for e in (1, 2, 3)]
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["report", "curves", "synthetic", "mclrec", "--params", _params(tmp_path, [0, 1, 2]),
            "--models", str(tmp_path / "models"), "--out", str(tmp_path / "curves")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "warning" not in res.output
    assert (tmp_path / "curves" / "synthetic" / "mclrec.png").stat().st_size > 1000
    res = runner.invoke(app, args[:3] + ["sasrec"] + args[4:])  # no run of it: a placeholder, and a warning
    assert res.exit_code == 0 and "warning: no training log of synthetic/sasrec" in " ".join(res.output.split())


def test_curves_of_the_reference_runs_read_their_committed_logs(tmp_path, monkeypatch):
    from mclrec.report import figures

    ref = tmp_path / "reference" / "synthetic"
    for folder, last in ((ref / "mclrec", 3), (ref / "mclrec" / "seed2", 5)):  # seed 0 and seed 2 layouts
        folder.mkdir(parents=True, exist_ok=True)
        records = [{"epoch": e, "loss": {"rec": 5 - e}, "valid": {"MRR@10": 0.1 * e}} for e in range(1, last + 1)]
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # the epoch training chose (the official rule compares at 4 decimals), not the log's unrounded maximum
    (ref / "mclrec" / "summary.json").write_text(json.dumps({"best_epoch": 2}))
    seen = {}
    monkeypatch.setattr(figures, "plot_training_curves",
                        lambda runs, title, path, metric, best: seen.update(runs=runs, path=path, metric=metric,
                                                                            best=best))
    args = ["report", "curves", "synthetic", "mclrec", "--params", _params(tmp_path, [0, 1, 2]),
            "--reference", str(tmp_path / "reference"), "--out", str(tmp_path / "curves")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {label: len(records) for label, records in seen["runs"].items()} == {"seed 0": 3, "seed 1": 0, "seed 2": 5}
    assert seen["path"] == tmp_path / "curves" / "synthetic" / "mclrec.png" and seen["metric"] == "MRR@10"
    assert seen["best"] == {"seed 0": 2, "seed 1": None, "seed 2": None}


def test_aggregate_reads_exactly_the_study_seeds(tmp_path):
    run_dir = tmp_path / "results" / "synthetic" / "mclrec"
    for seed, ndcg in ((0, 0.1), (1, 0.2), (5, 0.9)):
        _seed_result(run_dir / f"seed{seed}.json", seed, ndcg)
    out = tmp_path / "results" / "aggregate" / "synthetic" / "mclrec.json"
    res = runner.invoke(app, ["report", "aggregate", str(run_dir), str(out), "--params", _params(tmp_path, [0, 1])])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1] and abs(doc["metrics"]["test"]["NDCG@20"] - 0.15) < 1e-12
    assert np.load(out.with_suffix(".ranks.npy")).tolist() == [[0, 3, 9], [1, 3, 9]]
    res = runner.invoke(app, ["report", "aggregate", str(run_dir), str(out), "--params", _params(tmp_path, [0, 3])])
    assert res.exit_code == 1 and "seed3.json" in res.output


def test_seed_run_paths_name_the_seed_folder_and_its_result():
    assert seed_run_paths("beauty", "mclrec", 2, Path("results"), Path("models")) == (
        Path("models/beauty/mclrec/seed2/best.pt"), Path("results/beauty/mclrec/seed2.json"))


def test_evaluate_with_seed_reads_that_runs_checkpoint_and_writes_its_seed_result(tmp_path, tiny_dir, monkeypatch):
    shutil.copytree(tiny_dir, tmp_path / "data" / "processed" / "synthetic")
    monkeypatch.chdir(tmp_path)  # the processed data exist, the seed's checkpoint does not
    res = runner.invoke(app, ["evaluate", "-d", "synthetic", "-m", "mclrec", "--seed", "7",
                              "--params", _params(tmp_path, [7])])
    assert res.exit_code == 1 and "models/synthetic/mclrec/seed7/best.pt" in res.output


def test_an_unknown_figure_lists_each_name_with_its_paper_figure(tmp_path):
    res = runner.invoke(app, ["report", "figure", "3", "--params", _params(tmp_path, [0]),
                              "--results", str(tmp_path / "results"), "--out", str(tmp_path / "figures")])
    message = " ".join(res.output.split())
    assert res.exit_code == 1 and "unknown figure '3'" in message
    assert "joint_vs_meta (Fig. 3)" in message and "grid-<dataset> (Fig. 6)" in message
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("damage", ["json", "ranks", "seeds"])
def test_aggregate_of_bad_seed_files_names_them_and_keeps_the_old_aggregate(tmp_path, damage):
    run_dir = tmp_path / "results" / "synthetic" / "mclrec"
    for seed, ndcg in ((0, 0.1), (1, 0.2)):
        _seed_result(run_dir / f"seed{seed}.json", seed, ndcg)
    out = tmp_path / "results" / "aggregate" / "synthetic" / "mclrec.json"
    out.parent.mkdir(parents=True)
    out.write_text("{\"old\": true}\n")
    if damage == "json":
        (run_dir / "seed1.json").write_text('{"test": ')
        named = run_dir / "seed1.json"
    elif damage == "ranks":
        for seed in (0, 1):
            np.save(run_dir / f"seed{seed}.ranks.npy", np.arange(1, 6))
        (run_dir / "seed1.ranks.npy").write_bytes((run_dir / "seed1.ranks.npy").read_bytes()[:20])
        named = run_dir / "seed1.ranks.npy"
    else:
        _seed_result(run_dir / "seed1.json", 0, 0.2)  # two files of seed 0
        named = run_dir / "seed1.json"
    res = runner.invoke(app, ["report", "aggregate", str(run_dir), str(out), "--params", _params(tmp_path, [0, 1])])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert str(named) in "".join(res.output.split())  # the console may wrap the message
    assert out.read_text() == "{\"old\": true}\n"


@pytest.mark.parametrize("args,message", [
    (["curves", "nosuchds", "mclrec"], "datasets.nosuchds: no such dataset"),
    (["curves", "synthetic", "nosuchvar"], "variants.nosuchvar: no such variant"),
    (["figure", "grid-nosuchds"], "datasets.nosuchds: no such dataset"),
    (["figure", "noise-nosuchds"], "datasets.nosuchds: no such dataset"),
])
def test_figures_of_unknown_names_are_errors_not_placeholders(tmp_path, args, message):
    res = runner.invoke(app, ["report", *args, "--params", _params(tmp_path, [0]), "--out", str(tmp_path / "f")])
    assert res.exit_code == 1 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "f").exists()
