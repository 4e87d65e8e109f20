"""The paper study: dry runs plan the expected jobs; a CI-sized study renders tables, figures and the report."""

import json
import re

import numpy as np
import pytest
import yaml

from .test_end_to_end import _project_copy, _run

pytestmark = pytest.mark.slow  # end to end: subprocesses, workflows or whole trainings


def _job_counts(work, target: str) -> dict[str, int]:
    proc = _run(["snakemake", "-n", "--cores", "4", target], work)
    table = proc.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _project_copy(tmp_path_factory.mktemp("study"))


def test_dry_runs_plan_the_paper_targets(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    n_variants, n_table3 = len(params["variants"]), len(params["study"]["table3"])
    table3 = _job_counts(project, "results/tables/table3.md")
    assert (table3["train_seed"], table3["evaluate_seed"], table3["aggregate_seeds"], table3["table"]) == (
        n_table3 * 3 * 3, n_table3 * 3 * 3, n_table3 * 3, 1)
    assert table3["download"] == 3 and table3["preprocess"] == 3
    table4 = _job_counts(project, "results/tables/table4.md")
    assert table4["train_seed"] == 5 * 3 * 3
    grid = _job_counts(project, "results/figures/grid-beauty.png")
    assert grid["train_grid"] == 5 * 5 * 3 and grid["aggregate_grid"] == 5 * 5 and grid["dataset_figure"] == 1
    groups = _job_counts(project, "results/figures/groups_trained.png")  # Fig. 8: 4 models x 6 groups x 3 seeds
    assert groups["train_seed"] == 4 * 6 * 3 and groups["preprocess"] == 6 and groups["figure"] == 1
    report = _job_counts(project, "results/report.md")
    assert report["train_seed"] == n_variants * 3 * 3 + 4 * 6 * 3
    assert report["aggregate_seeds"] == n_variants * 3 + 4 * 6 and report["curves"] == n_variants * 3
    assert report["train_grid"] == 5 * 5 * 3 * 3 and report["figure"] == 3 and report["dataset_figure"] == 3 * 3
    assert report["tsne"] == 2 * 3 and report["table"] == 2 and report["report"] == 1


def test_slurm_profile_parses_and_plans(project):
    proc = _run(["snakemake", "-n", "--profile", "workflow/profiles/slurm", "results/tables/table3.md"], project)
    assert "train_seed" in proc.stdout


def test_ci_sized_study_renders_the_report(tmp_path):
    work = _project_copy(tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["variants"] = {v: params["variants"][v] for v in ("sasrec", "mclrec")}
    params["train"]["num_threads"] = 1  # two trainings at once on a 2-core runner: no thread oversubscription
    params["study"] = {
        "seeds": [0, 1], "datasets": ["synthetic"], "table3": ["sasrec", "mclrec"], "table4": ["mclrec"],
        "joint_vs_meta": ["mclrec"], "batch_sizes": {"128": "mclrec"}, "robustness": ["sasrec", "mclrec"],
        "noise": [0.1, 0.3], "grid": {"lambdas": [0.1], "betas": [0.05]},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["snakemake", "--cores", "2", "results/report.md"], work)
    report = (work / "results/report.md").read_text()
    assert "Table 3" in report and "| mclrec |" in report.replace("**", "")
    assert "figures/noise-synthetic.png" in report and "figures/curves/synthetic/sasrec.png" in report
    assert "figures/tsne-z-synthetic.png" in report and "figures/tsne-h-synthetic.png" in report
    assert "## Environment" in report and "Seeds per run: 2 (0, 1)" in report
    aggregate = json.loads((work / "results/aggregate/synthetic/mclrec.json").read_text())
    assert aggregate["n_seeds"] == 2 and aggregate["seeds"] == [0, 1]
    assert set(aggregate["noise"]) == {"0.1", "0.3"} and set(aggregate["groups"]) <= {"=5", "6-8", ">8"}
    assert np.load(work / "results/aggregate/synthetic/mclrec.ranks.npy").shape[0] == 2
    figures = ["joint_vs_meta", "batch_sizes", "noise-synthetic", "groups-synthetic", "grid-synthetic",
               "curves/synthetic/sasrec", "curves/synthetic/mclrec"]
    for name in figures:
        assert (work / f"results/figures/{name}.png").stat().st_size > 1000
    csv = (work / "results/tables/table3.csv").read_text()
    assert "mclrec" in csv and "synthetic" in csv
    _run(["snakemake", "--cores", "1", "--report", "results/report.html", "results/report.md"], work)
    html = (work / "results/report.html").read_text(errors="replace")
    assert "noise-synthetic.png" in html and "Training curves" in html and "table3.csv" in html
