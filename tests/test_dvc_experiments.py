"""DVC as a user drives it in a git repo: repro one run, an experiment with a changed parameter, metrics, plots."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from .test_end_to_end import ROOT, _project_copy, _run

STAGE = "evaluate@synthetic-sasrec"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "mclrec-test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "mclrec-test", "GIT_COMMITTER_EMAIL": "test@example.org"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]


def _git_project(tmp_path: Path) -> Path:
    """The CI-sized project, only the synthetic dataset and a one-seed study, committed in a fresh git + DVC repo."""
    work = _project_copy(tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"] = {"synthetic": params["datasets"]["synthetic"]}
    params["checkpoints"] = {}  # the published one is for beauty, removed here (dvc.yaml iterates the empty section)
    params["study"]["length_groups"] = []  # the sports/yelp groups are removed with their parents
    params["train"]["num_threads"] = 1
    params["study"].update(seeds=[0], datasets=["synthetic"], grid={"lambdas": [0.1], "betas": [0.05]})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", work / ".gitignore")
    _run(["git", "init", "-q"], work)
    _run(["dvc", "init", "-q"], work)
    _commit(work, "project")
    return work


def _commit(work: Path, message: str) -> None:
    """Commit everything git does not ignore."""
    _run(["git", "add", "-A"], work)
    _run(["git", "commit", "-qm", message], work, **GIT_IDENTITY)


def _experiments(show: list[dict]) -> list[dict]:
    """The experiment revisions (name, params, metrics) in `dvc exp show --json` output."""
    return [rev for entry in show for exp in entry.get("experiments") or [] for rev in exp.get("revs", [])]


def test_repro_then_experiment_with_a_changed_parameter(tmp_path):
    work = _git_project(tmp_path)
    _run(["dvc", "repro", STAGE], work)
    _commit(work, "baseline")
    _run(["dvc", "exp", "run", "-S", "train.lr=0.005", STAGE], work, **GIT_IDENTITY)
    (exp,) = _experiments(json.loads(_run(["dvc", "exp", "show", "--json"], work).stdout))
    params = exp["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["lr"] == 0.005
    metrics = exp["data"]["metrics"]
    assert "results/synthetic/sasrec.json" not in metrics  # the full document (config, environment) is no metric
    assert all(name.endswith((".metrics.json", "stats.json")) for name in metrics)
    result = metrics["results/synthetic/sasrec.metrics.json"]["data"]
    assert set(result) == {"test", "valid"} and set(result["test"]) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR")
                                                                       for k in (5, 10, 20, 50)}
    full = json.loads((work / "results/synthetic/sasrec.json").read_text())
    assert full["config"]["lr"] == 0.005 and full["metrics"]["test"] == result["test"]
    assert "results/synthetic/sasrec.metrics.json" in _run(["dvc", "metrics", "show"], work).stdout
    _run(["dvc", "plots", "show"], work)
    assert "curves.json" in (work / "dvc_plots" / "index.html").read_text()


def test_snakemake_seed_run_adopted_by_dvc_survives_push_and_pull(tmp_path):
    work = _git_project(tmp_path)
    stage, target = "evaluate_seed@synthetic-sasrec-0", "results/synthetic/sasrec/seed0.json"
    _run(["snakemake", "--cores", "2", target], work)
    _run(["dvc", "commit", "-f", "--with-deps", stage], work)  # adopts the outputs (copies them from the cache)
    best = work / "models/synthetic/sasrec/seed0/best.pt"
    stamp = best.stat().st_mtime_ns
    repro = _run(["dvc", "repro", stage], work)
    assert "Running stage" not in repro.stdout and best.stat().st_mtime_ns == stamp
    assert json.loads((work / target).read_text())["noise"]
    _run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "store")], work)
    _run(["dvc", "push"], work)
    for folder in ("data", "models", "results", ".dvc/cache"):
        shutil.rmtree(work / folder)
    _run(["dvc", "pull", "--with-deps", stage], work)
    assert "up to date" in _run(["dvc", "status", "--with-deps", stage], work).stdout.lower()
    assert (work / "models/synthetic/sasrec/seed0/log.jsonl").is_file() and (work / target).is_file()
