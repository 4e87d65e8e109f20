"""The Snakefile and dvc.yaml declare the same stages, commands and outputs; both plan the data half."""

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from mclrec import config

pytestmark = pytest.mark.slow  # end to end: subprocesses, workflows or whole trainings

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("download", "preprocess")
LENGTH_GROUPS = set(config.load_params(ROOT / "params.yaml")["study"]["length_groups"])
STUDY_STAGES = ("train_seed", "evaluate_seed", "train_grid", "evaluate_grid", "aggregate_seeds", "aggregate_grid",
                "table", "figure", "dataset_figure", "tsne", "curves", "report")
PROXY_DEPS = ("curves", "tsne")  # dvc.yaml: depends on the seed results, not on models/<d>/<v> (see the comment there)


def snakemake_jobs(*targets: str) -> list[dict]:
    """Parse `snakemake -n -p --forceall` into jobs: rule, wildcards, inputs, outputs and shell command."""
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
            "inputs": set(fields.get("input", "").split(", ")) - {""},
            "outputs": set(fields.get("output", "").split(", ")) - {""},
            "cmd": re.sub(r" 2> \S+$", "", command.group(1)) if command else None,
        })
    return jobs


@lru_cache(maxsize=1)
def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages, foreach/matrix-expanded, as name@key -> cmd, outputs (outs, metrics, plots) and file deps."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {
            stage.addressing: {
                "cmd": stage.cmd,
                "outputs": {str(out.def_path) for out in stage.outs},
                "deps": {str(dep.def_path) for dep in stage.deps if not isinstance(dep, ParamsDependency)},
            }
            for stage in repo.index.stages
        }


GROUP_STAGES = {"train_seed": "train_group_seed", "evaluate_seed": "evaluate_group_seed",
                "aggregate_seeds": "aggregate_group_seeds"}  # dvc.yaml's stages for the study.length_groups runs


def stage_name(job: dict) -> str:
    """The DVC stage of a Snakemake job: the rule name, then its wildcard values joined as dvc.yaml's matrix does."""
    rule = job["rule"]
    if job["wildcards"].get("dataset") in LENGTH_GROUPS:
        rule = GROUP_STAGES[rule]
    return "@".join([rule, "-".join(job["wildcards"].values())]) if job["wildcards"] else rule


def covered(path: str, deps: set[str]) -> bool:
    """Whether `path` is one of `deps` or lies inside one of them (a folder dependency)."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.fixture(scope="module")
def study_jobs() -> list[dict]:
    """Every job `snakemake results/report.md` plans for the paper study."""
    return snakemake_jobs("results/report.md")


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


def test_snakemake_and_dvc_declare_the_same_study_stages(study_jobs):
    stages = dvc_stages()
    jobs = [j for j in study_jobs if j["rule"] in STUDY_STAGES]
    for job in jobs:
        stage = stages[stage_name(job)]
        assert job["cmd"] == stage["cmd"], stage_name(job)
        assert job["outputs"] == stage["outputs"], stage_name(job)
        if job["rule"] not in PROXY_DEPS:
            assert all(covered(path, stage["deps"]) for path in job["inputs"]), stage_name(job)
    study_stages = set(STUDY_STAGES) | set(GROUP_STAGES.values())
    assert {stage_name(j) for j in jobs} == {name for name in stages if name.split("@")[0] in study_stages}


def test_study_stage_counts_follow_params(study_jobs):
    params = config.load_params(ROOT / "params.yaml")
    study = params["study"]
    runs = len(study["datasets"]) * len(params["variants"]) + len(study["length_groups"]) * len(study["robustness"])
    cells = len(study["datasets"]) * len(study["grid"]["lambdas"]) * len(study["grid"]["betas"])
    counts = {rule: sum(j["rule"] == rule for j in study_jobs) for rule in STUDY_STAGES}
    assert counts == {"train_seed": runs * len(study["seeds"]), "evaluate_seed": runs * len(study["seeds"]),
                      "train_grid": cells * len(study["seeds"]), "evaluate_grid": cells * len(study["seeds"]),
                      "aggregate_seeds": runs, "aggregate_grid": cells, "table": 2, "figure": 3,
                      "dataset_figure": 3 * len(study["datasets"]), "tsne": 2 * len(study["datasets"]),
                      "curves": len(study["datasets"]) * len(params["variants"]), "report": 1}


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


FORBID_TORCH = """
import builtins, sys
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise SystemExit("torch was imported while parsing the Snakefile")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
from snakemake.cli import main
sys.argv = ["snakemake", "-n", "--cores", "1", "results/synthetic/mclrec.json"]
main()
"""


def test_parsing_the_snakefile_does_not_import_torch():
    import sys

    proc = subprocess.run([sys.executable, "-c", FORBID_TORCH], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "This was a dry-run" in proc.stdout
