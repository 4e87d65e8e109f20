"""One source of truth: dvc.yaml is what `mclrec workflow dvc` writes from src/mclrec/pipeline.py, the Snakefile's
rules take the same declarations, every training is declared once, and each job depends on the code it runs."""

import csv
import io
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from typer.testing import CliRunner

from mclrec import config, pipeline
from mclrec.cli import app

from .conftest import ROOT

runner = CliRunner()
# snakemake and dvc run in the repository itself here (.snakemake/, .dvc/tmp): one pytest worker runs them all
pytestmark = pytest.mark.xdist_group("repository")


@pytest.fixture(scope="module")
def params():
    return config.load_params(ROOT / "params.yaml")


def test_committed_dvc_yaml_is_what_the_generator_writes():
    res = runner.invoke(app, ["workflow", "dvc", "--check", "--params", str(ROOT / "params.yaml"),
                              "--output", str(ROOT / "dvc.yaml")])
    assert res.exit_code == 0, res.output + "\nrun `mclrec workflow dvc` and commit dvc.yaml"


def test_check_fails_on_a_stale_file_and_writing_makes_it_current(tmp_path):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["variants"]["sasrec-wide"] = {"model": "sasrec", "hidden_size": 128}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "dvc.yaml"
    out.write_text((ROOT / "dvc.yaml").read_text())
    args = ["workflow", "dvc", "--params", str(tmp_path / "params.yaml"), "--output", str(out)]
    res = runner.invoke(app, [*args, "--check"])
    assert res.exit_code == 1 and "stale" in res.output and out.read_text() == (ROOT / "dvc.yaml").read_text()
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    stages = yaml.safe_load(out.read_text())["stages"]
    assert "synthetic-sasrec-wide-0" in stages["train"]["foreach"]


def test_stage_commands_and_outputs_come_from_the_declarations():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train"]["do"]
    assert train["cmd"] == pipeline.dvc_command("train", {k: "${item.%s}" % k for k in
                                                          ("dataset", "args", "seed", "run")})
    assert "--threads" not in train["cmd"] and "--threads {threads}" in pipeline.snakemake_command("train")
    for kind in ("evaluate", "evaluate_published"):  # Snakemake's threads reach torch; DVC keeps torch's default
        assert "--threads {threads}" in pipeline.snakemake_command(kind)
        assert "--threads" not in stages[kind]["do"]["cmd"]
    assert train["outs"] == [p.replace("{", "${item.") for p in
                             (o.pattern for o in pipeline.KINDS["train"].outputs.values() if o.kind == "out")]
    assert train["plots"] == [{"models/${item.dataset}/${item.run}/seed${item.seed}/curves.json":
                               {"x": "epoch", "y": "${train.valid_metric}"}}]
    assert stages["evaluate"]["do"]["metrics"] == ["results/${item.dataset}/${item.result}.metrics.json"]


def test_each_training_is_declared_once_and_single_runs_reuse_the_study_seed(params):
    runs = pipeline.runs(params)
    folders = [run.folder for run in runs]
    assert len(folders) == len(set(folders))
    study = params["study"]
    n_study = len(pipeline.study_runs(params)) * len(study["seeds"])
    outside = [d for d, spec in params["datasets"].items() if "group_of" not in spec and d not in study["datasets"]]
    assert len(runs) == n_study + len(outside) * len(params["variants"])  # train.seed is a study seed
    single = pipeline.evaluation_of("beauty", "mclrec", params["train"]["seed"])
    assert single.train.folder == "models/beauty/mclrec/seed0" and single.train in runs
    results = [e.result for e in pipeline.evaluations(params) if e.train.dataset == "beauty"]
    assert Counter(results).most_common(1)[0][1] == 1


def test_grid_cells_train_mclrec_with_their_weights():
    run = pipeline.run_of("yelp", "grid/l0.05-b0.5", 2)
    assert run.variant == "mclrec" and run.folder == "models/yelp/grid/l0.05-b0.5/seed2"
    assert run.args == "--variant mclrec --set lambda_cl1=0.05 --set beta=0.5"


def test_jobs_depend_on_the_code_they_run_and_on_no_other():
    train = pipeline.code_files(pipeline.KINDS["train"].code)
    evaluate = pipeline.code_files(pipeline.KINDS["evaluate"].code)
    assert "src/mclrec/models/losses.py" in train and "src/mclrec/training/objectives.py" in train
    assert "src/mclrec/config.py" in train and "src/mclrec/params.schema.yaml" in train
    assert "src/mclrec/models/losses.py" not in evaluate and not any("training/" in f for f in evaluate)
    assert "src/mclrec/evaluation/evaluate.py" in evaluate
    assert not any(f.endswith(("cli.py", "report/figures.py")) for f in train + evaluate)
    assert all((ROOT / f).is_file() for f in train + evaluate)


def test_each_stage_tracks_only_the_params_it_reads(params):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["do"]["params"] == ["train", "variants.${item.variant}", "${item.tracked}"]
    assert stages["evaluate"]["do"]["params"] == ["evaluate"]
    items = stages["train"]["foreach"]
    assert items["beauty-mclrec-0"]["tracked"] == "datasets.beauty.overrides.mclrec"
    assert items["beauty-sasrec-0"]["tracked"] == "datasets.beauty.preprocess.max_len"  # Beauty has no SASRec overrides
    assert not {"eval_ks", "eval_batch_size"} & set(params["train"])  # evaluation settings live in `evaluate`
    for kind in ("download", "preprocess"):
        assert all(p.startswith("datasets.${item.dataset}.") for p in stages[kind]["do"]["params"])


@pytest.mark.slow
def test_every_dvc_stage_is_the_snakemake_job_of_the_same_kind():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outputs = {str(out.def_path): stage.addressing.split("@")[0] for stage in repo.index.stages
                   for out in stage.outs}
    assert len(outputs) == len(set(outputs))
    proc = subprocess.run(["snakemake", "--summary", "--cores", "1", *sorted(outputs)], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    rows = csv.DictReader(io.StringIO(proc.stdout[proc.stdout.index("output_file"):]), delimiter="\t")
    planned = {row["output_file"]: row["rule"] for row in rows}
    assert {path: planned.get(path) for path in outputs} == outputs


@pytest.mark.slow
def test_snakemake_rejects_invalid_params(tmp_path):
    bad = (ROOT / "params.yaml").read_text().replace("batch_size: 256", "batch_size: lots")
    (tmp_path / "params.yaml").write_text(bad)
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "batch_size" in proc.stdout + proc.stderr


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


@pytest.mark.slow
def test_parsing_the_snakefile_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", FORBID_TORCH], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "This was a dry-run" in proc.stdout


@pytest.mark.slow
def test_lint_reports_only_the_explained_finding_and_snakefmt_is_clean():
    lint = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    findings = {line.strip() for line in (lint.stdout + lint.stderr).splitlines() if line.startswith("    * ")}
    # README, "Workflow": the environment is the locked venv, not a per-rule conda env or container
    assert findings == {"* Specify a conda environment or container for each rule.:"}
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow"], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
