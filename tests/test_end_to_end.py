"""End to end as a user runs it: Snakemake and DVC on a CI-sized copy of the project."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from mclrec.data.processed import load_processed
from mclrec.evaluation.metrics import metrics_from_ranks

pytestmark = pytest.mark.slow  # end to end: subprocesses, workflows or whole trainings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _project_copy(tmp_path: Path) -> Path:
    """The workflow files and a params.yaml shrunk to CI size (small synthetic data, one epoch)."""
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    shutil.copy(ROOT / ".dvcignore", work / ".dvcignore")
    shutil.copytree(ROOT / "workflow", work / "workflow")
    # the package source the stages depend on (code-aware re-runs); the tests run the installed package
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["synthetic"]["source"]["generator"].update(n_users=300, n_items=120, n_clusters=6)
    for model in ("sasrec", "cl4srec", "duorec", "mclrec"):
        params["datasets"]["synthetic"].setdefault("overrides", {}).setdefault(model, {}).update(
            max_epochs=1, batch_size=128, device="cpu")
    write_params(work, params)
    return work


def synthetic_only(work: Path) -> None:
    """Shrink the project's params.yaml to the synthetic dataset and a one-seed study, for tests of single-run stages.

    DVC builds every stage of dvc.yaml on each command: the paper study's ~1,200 stages cost ~20 s per command on
    a 2-core CI machine, against ~3 s for this project's ~100 (the full study's stages: test_workflow_spec.py).
    """
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"] = {"synthetic": params["datasets"]["synthetic"]}
    params["checkpoints"] = {}  # the published one is for beauty, removed here (dvc.yaml iterates the empty section)
    params["study"]["length_groups"] = []  # the sports/yelp groups are removed with their parents
    params["train"]["num_threads"] = 1
    params["study"].update(seeds=[0], datasets=["synthetic"], grid={"lambdas": [0.1], "betas": [0.05]})
    write_params(work, params)


def write_params(work: Path, params: dict) -> None:
    """Write params.yaml and, as a user does after editing it, dvc.yaml (`mclrec workflow dvc`)."""
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["mclrec", "workflow", "dvc"], work)


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_snakemake_main_job_on_synthetic(tmp_path):
    work = _project_copy(tmp_path)
    _run(["snakemake", "--cores", "2", "results/synthetic/mclrec.json"], work)
    result = json.loads((work / "results/synthetic/mclrec.json").read_text())
    assert (result["dataset"], result["variant"], result["model"], result["seed"]) == ("synthetic", "mclrec", "mclrec", 0)
    for split in ("valid", "test"):
        assert set(result["metrics"][split]) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20, 50)}
    assert result["best_epoch"] == 1 and result["train_seconds"] > 0
    assert result["config"]["max_epochs"] == 1 and result["checkpoint"] == "models/synthetic/mclrec/seed0/best.pt"
    data = load_processed(work / "data/processed/synthetic")
    assert result["data"]["n_users"] == data.n_users
    ranks = np.load(work / "results/synthetic/mclrec.ranks.npy")  # the test metrics are these ranks' metrics
    assert len(ranks) == data.n_users
    assert result["metrics"]["test"] == pytest.approx(metrics_from_ranks(ranks, (5, 10, 20, 50)))
    assert result["metrics"]["test"]["HR@10"] > 2 * 10 / data.n_items  # well above a random ranking
    again = subprocess.run(["snakemake", "-n", "--cores", "1", "results/synthetic/mclrec.json"], cwd=work,
                           capture_output=True, text=True)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dvc_repro_runs_the_data_stages(tmp_path):
    work = _project_copy(tmp_path)
    synthetic_only(work)
    _run(["dvc", "init", "--no-scm", "-q"], work)
    _run(["dvc", "repro", "preprocess@synthetic"], work)
    stats = json.loads((work / "data/processed/synthetic/stats.json").read_text())
    assert stats["n_users"] > 100
    status = _run(["dvc", "status", "preprocess@synthetic"], work)
    assert "up to date" in status.stdout.lower()


@pytest.mark.benchmark_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (benchmark datasets) is absent")
def test_snakemake_with_mirror_reproduces_table2_for_beauty(tmp_path):
    work = _project_copy(tmp_path)
    _run(["snakemake", "--cores", "2", "data/processed/beauty/stats.json"], work, MCLREC_MIRROR=str(SHARED_DATA))
    stats = json.loads((work / "data/processed/beauty/stats.json").read_text())
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (22363, 12101, 198502)


def test_download_without_mirror_or_network_says_where_to_put_the_file(tmp_path):
    work = _project_copy(tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"]["beauty"]["source"]["url"] = "http://127.0.0.1:9/Amazon_Beauty.txt"
    write_params(work, params)
    env = {k: v for k, v in os.environ.items() if k != "MCLREC_MIRROR"}
    proc = subprocess.run(["mclrec", "download", "beauty"], cwd=work, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "data/raw/beauty/Amazon_Beauty.txt" in proc.stderr and "MCLREC_MIRROR" in proc.stderr
    assert not (work / "data/raw/beauty/Amazon_Beauty.txt").exists()


def test_snakemake_then_dvc_never_retrains(tmp_path):
    work = _project_copy(tmp_path)
    synthetic_only(work)
    _run(["dvc", "init", "--no-scm", "-q"], work)
    target, stage = "results/synthetic/sasrec.json", "evaluate@synthetic-sasrec"
    _run(["snakemake", "--cores", "2", target], work)
    best = work / "models/synthetic/sasrec/seed0/best.pt"
    _run(["dvc", "commit", "-f", "--with-deps", stage], work)  # adopts the outputs (links them from the cache)
    stamp = best.stat().st_mtime_ns
    assert "up to date" in _run(["dvc", "status", "--with-deps", stage], work).stdout.lower()
    repro = _run(["dvc", "repro", stage], work)
    assert "didn't change, skipping" in repro.stdout and "Running stage" not in repro.stdout
    assert best.stat().st_mtime_ns == stamp
    raw = work / "data/raw/synthetic/synthetic.txt"
    os.utime(raw)  # what a dvc checkout of an input does to timestamps
    _run(["snakemake", "--cores", "1", "--touch", target], work)
    assert "Nothing to be done" in _run(["snakemake", "-n", "--cores", "1", target], work).stdout
    assert best.stat().st_mtime_ns >= stamp
