"""`mclrec report reference`: a finished seed run's small files are committed with a RUNS.md describing it."""

import json

from typer.testing import CliRunner

from mclrec.cli import app

runner = CliRunner()


def _seed_run(root, dataset="beauty", variant="mclrec"):
    run = root / "models" / dataset / variant / "seed0"
    run.mkdir(parents=True)
    env = {"cpu": "AMD EPYC", "threads": 1, "torch": "2.13.0+cpu", "git": {"commit": "0123456789abcdef", "dirty": False}}
    (run / "summary.json").write_text(json.dumps({"epochs_run": 23, "best_epoch": 12, "train_seconds": 5400.0,
                                                  "stopped": "early stop", "environment": env}))
    (run / "log.jsonl").write_text('{"epoch": 1}\n')
    (run / "best.pt").write_bytes(b"not copied")
    results = root / "results" / dataset / variant
    results.mkdir(parents=True)
    (results / "seed0.json").write_text(json.dumps({"dataset": dataset, "variant": variant, "seed": 0,
                                                    "metrics": {"test": {"HR@20": 0.1234, "NDCG@20": 0.0532}}}))


def test_reference_copies_the_small_files_and_writes_runs_md(tmp_path):
    _seed_run(tmp_path)
    out = tmp_path / "results" / "reference"
    res = runner.invoke(app, ["report", "reference", "beauty", "mclrec", "--results", str(tmp_path / "results"),
                              "--models", str(tmp_path / "models"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "beauty" / "mclrec.json").read_text())["metrics"]["test"]["HR@20"] == 0.1234
    assert (out / "beauty" / "mclrec" / "log.jsonl").read_text() == '{"epoch": 1}\n'
    assert not list(out.rglob("*.pt"))  # never checkpoints
    runs = (out / "beauty" / "RUNS.md").read_text()
    assert "| mclrec | 0 | 23 (12) | early stop | 1.50 | AMD EPYC | 1 | 2.13.0+cpu | 0123456789 | 0.1234 | 0.0532 |" in runs


def test_reference_of_a_missing_run_is_refused(tmp_path):
    res = runner.invoke(app, ["report", "reference", "beauty", "sasrec", "--results", str(tmp_path / "results"),
                              "--models", str(tmp_path / "models"), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 1 and "seed0.json: missing" in " ".join(res.output.split())
