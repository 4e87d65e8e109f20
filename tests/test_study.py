"""The paper study: dry runs plan the expected jobs; a CI-sized study renders tables, figures and the report."""

import csv
import io
import json
from collections import Counter

import numpy as np
import pytest
import yaml

from mclrec.pipeline import KINDS

from .test_end_to_end import _project_copy, _run, write_params

pytestmark = pytest.mark.slow  # end to end: subprocesses, workflows or whole trainings


def _job_counts(work, target: str, *options: str) -> dict[str, int]:
    """Jobs per rule that `snakemake --summary` plans for `target` (its TSV: one row per output file)."""
    proc = _run(["snakemake", "--summary", "--cores", "4", *options, target], work)
    rows = list(csv.DictReader(io.StringIO(proc.stdout[proc.stdout.index("output_file"):]), delimiter="\t"))
    files = Counter(row["rule"] for row in rows)
    return {rule: n // len(KINDS[rule].outputs) for rule, n in files.items()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _project_copy(tmp_path_factory.mktemp("study"))


def test_dry_runs_plan_the_paper_targets(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    n_variants, n_table3 = len(params["variants"]), len(params["study"]["table3"])
    table3 = _job_counts(project, "results/tables/table3.md")
    assert (table3["train"], table3["evaluate"], table3["aggregate"], table3["table"]) == (
        n_table3 * 3 * 3, n_table3 * 3 * 3, n_table3 * 3, 1)
    assert table3["download"] == 3 and table3["preprocess"] == 3
    table4 = _job_counts(project, "results/tables/table4.md")
    assert table4["train"] == 5 * 3 * 3
    grid = _job_counts(project, "results/figures/grid-beauty.png")
    assert grid["train"] == 5 * 5 * 3 and grid["aggregate"] == 5 * 5 and grid["dataset_figure"] == 1
    groups = _job_counts(project, "results/figures/groups_trained.png")  # Fig. 8: 4 models x 6 groups x 3 seeds
    assert groups["train"] == 4 * 6 * 3 and groups["preprocess"] == 6 and groups["figure"] == 1
    report = _job_counts(project, "results/report.md")
    assert report["train"] == n_variants * 3 * 3 + 4 * 6 * 3 + 5 * 5 * 3 * 3
    assert report["aggregate"] == n_variants * 3 + 4 * 6 + 5 * 5 * 3 and report["curves"] == n_variants * 3
    assert report["figure"] == 3 and report["dataset_figure"] == 3 * 3
    assert report["tsne"] == 2 * 3 and report["table"] == 2 and report["report"] == 1


def test_single_run_is_the_study_seed_run(project):
    single = _job_counts(project, "results/beauty/mclrec.json")
    assert (single["train"], single["evaluate"]) == (1, 1)
    both = _job_counts(project, "results/beauty/mclrec.json", "results/beauty/mclrec/seed0.json")
    assert (both["train"], both["evaluate"]) == (1, 2)  # one training, evaluated as the single run and seed 0


def test_slurm_profile_parses_and_plans(project):
    jobs = _job_counts(project, "results/tables/table3.md", "--profile", "workflow/profiles/slurm")
    assert jobs["train"] > 0 and jobs["table"] == 1


def test_ci_sized_study_renders_the_report(tmp_path):
    work = _project_copy(tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["variants"] = {v: params["variants"][v] for v in ("sasrec", "mclrec")}
    params["train"]["num_threads"] = 1  # two trainings at once on a 2-core runner: no thread oversubscription
    params["study"] = {
        "seeds": [0, 1], "datasets": ["synthetic"], "table3": ["sasrec", "mclrec"], "table4": ["mclrec"],
        "joint_vs_meta": ["mclrec"], "batch_sizes": {"128": "mclrec"}, "robustness": ["sasrec", "mclrec"],
        "grid": {"lambdas": [0.1], "betas": [0.05]},
    }
    params["evaluate"]["noise"] = [0.1, 0.3]
    write_params(work, params)
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
