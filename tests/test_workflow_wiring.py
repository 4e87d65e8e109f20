"""The Snakefile and dvc.yaml declare the same stages, commands and outputs; both plan the data half."""

import re
import subprocess
from pathlib import Path

import pytest

from mclrec import config

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("download", "preprocess")


def snakemake_jobs(*targets: str) -> list[dict]:
    """Parse `snakemake -n -p --forceall` into jobs: rule, wildcards, outputs and shell command."""
    proc = subprocess.run(
        ["snakemake", "-n", "-p", "--forceall", "--cores", "1", *targets],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    jobs = []
    for block in re.split(r"\n(?=rule |localrule )", proc.stdout):
        head = re.match(r"(?:local)?rule (\S+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({
            "rule": head.group(1),
            "wildcards": dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv),
            "outputs": set(fields.get("output", "").split(", ")) - {""},
            "cmd": re.sub(r" 2> \S+$", "", command.group(1)) if command else None,
        })
    return jobs


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages, foreach-expanded, as name@key -> cmd and outputs (outs + metrics)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {
            stage.addressing: {"cmd": stage.cmd, "outputs": {str(out.def_path) for out in stage.outs}}
            for stage in repo.index.stages
        }


def test_snakemake_and_dvc_declare_the_same_data_stages():
    params = config.load_params(ROOT / "params.yaml")
    jobs = snakemake_jobs("all")
    stages = dvc_stages()
    for dataset in params["datasets"]:
        for rule in DATA_STAGES:
            job = next(j for j in jobs if j["rule"] == rule and j["wildcards"].get("dataset") == dataset)
            stage = stages[f"{rule}@{dataset}"]
            assert job["cmd"] == stage["cmd"], (rule, dataset)
            assert job["outputs"] == stage["outputs"], (rule, dataset)
    dvc_data = {name for name in stages if name.split("@")[0] in DATA_STAGES}
    assert len(dvc_data) == len(DATA_STAGES) * len(params["datasets"])


def test_snakemake_and_dvc_declare_the_same_model_stages():
    params = config.load_params(ROOT / "params.yaml")
    stages = dvc_stages()
    targets = [f"results/{d}/{v}.json" for d in ("synthetic", "yelp") for v in ("mclrec", "sasrec-bpr")]
    jobs = [j for j in snakemake_jobs(*targets) if j["rule"] in ("train", "evaluate")]
    assert len(jobs) == 2 * len(targets)
    for job in jobs:
        stage = stages[f"{job['rule']}@{job['wildcards']['dataset']}-{job['wildcards']['variant']}"]
        assert job["cmd"] == stage["cmd"]
        assert job["outputs"] == stage["outputs"]
    n_models = len(params["datasets"]) * len(params["variants"])
    assert sum(name.split("@")[0] in ("train", "evaluate") for name in stages) == 2 * n_models


def test_dry_run_plans_download_then_preprocess_for_yelp():
    jobs = snakemake_jobs("data/processed/yelp/stats.json")
    assert sorted(j["rule"] for j in jobs) == ["download", "preprocess"]
    download = next(j for j in jobs if j["rule"] == "download")
    assert download["outputs"] == {"data/raw/yelp/Yelp.txt"}


def test_dry_run_plans_the_main_job():
    rules = sorted(j["rule"] for j in snakemake_jobs("results/synthetic/mclrec.json"))
    assert rules == ["download", "evaluate", "preprocess", "train"]


def test_snakemake_rejects_invalid_params(tmp_path):
    bad = (ROOT / "params.yaml").read_text().replace("batch_size: 256", "batch_size: lots")
    (tmp_path / "params.yaml").write_text(bad)
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "batch_size" in proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["download", "preprocess"])
def test_dvc_stage_params_track_the_dataset_entry(target):
    import yaml

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][target]["do"]
    assert all(p.startswith("datasets.${key}.") for p in stage["params"])
