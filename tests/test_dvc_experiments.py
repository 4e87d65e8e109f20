"""DVC as a user drives it in a git repo: repro one run, an experiment with a changed parameter, metrics, plots,
push from one clone and pull into another; both tools re-run what an edit of code or of an evaluation setting
touches, and nothing else."""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from .test_end_to_end import ROOT, _project_copy, _run, synthetic_only, write_params

STAGE = "evaluate@synthetic-sasrec"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "mclrec-test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "mclrec-test", "GIT_COMMITTER_EMAIL": "test@example.org"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]


def _git_project(tmp_path: Path) -> Path:
    """The CI-sized project, only the synthetic dataset and a one-seed study, committed in a fresh git + DVC repo."""
    work = _project_copy(tmp_path)
    synthetic_only(work)
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


def test_push_from_one_clone_then_pull_into_another_evaluates_without_retraining(tmp_path):
    work = _git_project(tmp_path)
    store = tmp_path / "store"  # the remote: a folder outside both clones
    _run(["dvc", "remote", "add", "-d", "store", "/nonexistent/replace-me"], work)
    _run(["dvc", "remote", "modify", "--local", "store", "url", str(store)], work)  # per-clone, not committed
    _run(["dvc", "repro", STAGE], work)
    _commit(work, "results")
    _run(["dvc", "push"], work)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    _run(["dvc", "remote", "modify", "--local", "store", "url", str(store)], clone)
    # --allow-missing: the stages nobody ran in clone A (the rest of the study) have nothing to pull
    _run(["dvc", "pull", "--allow-missing"], clone)
    assert _dvc_plan(clone, STAGE) == set()  # the run and everything it needs: up to date, nothing to rerun
    best = clone / "models/synthetic/sasrec/seed0/best.pt"
    assert best.is_file() and (clone / "data/processed/synthetic/train.parquet").is_file()
    _run(["mclrec", "evaluate", "-d", "synthetic", "-m", "sasrec", "--output", "again.json"], clone)
    again = json.loads((clone / "again.json").read_text())
    assert again["metrics"] == json.loads((work / "results/synthetic/sasrec.json").read_text())["metrics"]
    assert _dvc_plan(clone, STAGE) == set()


def _snakemake_plan(work: Path, target: str) -> set[str]:
    """The rules `snakemake --summary` (its TSV) plans to run for `target`."""
    out = _run(["snakemake", "--summary", "--cores", "1", target], work).stdout
    rows = csv.DictReader(io.StringIO(out[out.index("output_file"):]), delimiter="\t")
    return {row["rule"] for row in rows if row["plan"] != "no update"}


def _dvc_plan(work: Path, stage: str) -> set[str]:
    """The stage kinds (train, evaluate, ...) `dvc status --json` reports as changed, for `stage` and its deps."""
    return {name.split("@")[0] for name in json.loads(_run(["dvc", "status", "--json", "--with-deps", stage],
                                                           work).stdout)}


def test_code_edit_retrains_and_evaluation_setting_edit_only_reevaluates(tmp_path):
    work = _git_project(tmp_path)
    target = "results/synthetic/sasrec.json"
    _run(["snakemake", "--cores", "2", target], work)
    _run(["dvc", "commit", "-f", "--with-deps", STAGE], work)  # DVC adopts what Snakemake built
    assert _snakemake_plan(work, target) == set() and _dvc_plan(work, STAGE) == set()
    _commit(work, "built")

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["ks"] = [10, 20]
    write_params(work, params)
    assert _snakemake_plan(work, target) == {"evaluate"}
    assert _dvc_plan(work, STAGE) == {"evaluate"}
    _run(["git", "checkout", "--", "params.yaml", "dvc.yaml"], work)
    assert _snakemake_plan(work, target) == set() and _dvc_plan(work, STAGE) == set()

    losses = work / "src/mclrec/models/losses.py"
    losses.write_text(losses.read_text() + "\n# an edit of a loss\n")
    assert "train" in _snakemake_plan(work, target)
    assert "train" in _dvc_plan(work, STAGE)
