"""`mclrec report reference`: a finished seed run's small files are committed with a RUNS.md describing it."""

import json
from pathlib import Path

from typer.testing import CliRunner

from mclrec.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _seed_run(root, dataset="beauty", variant="mclrec", seed=0, test=None, config=None, dirty=False):
    run = root / "models" / dataset / variant / f"seed{seed}"
    run.mkdir(parents=True)
    env = {"cpu": "AMD EPYC", "threads": 1, "torch": "2.13.0+cpu", "git": {"commit": "0123456789abcdef", "dirty": dirty}}
    (run / "summary.json").write_text(json.dumps({"epochs_run": 23, "best_epoch": 12, "train_seconds": 5400.0,
                                                  "stopped": "early stop", "environment": env}))
    (run / "log.jsonl").write_text('{"epoch": 1}\n')
    (run / "best.pt").write_bytes(b"not copied")
    results = root / "results" / dataset / variant
    results.mkdir(parents=True, exist_ok=True)
    test = test or {"HR@20": 0.1234, "NDCG@20": 0.0532}
    (results / f"seed{seed}.json").write_text(json.dumps({"dataset": dataset, "variant": variant, "seed": seed,
                                                          "metrics": {"test": test}, "config": config or {}}))


def _trained_as_today(dataset, variant, **changes):
    """The settings today's params.yaml gives a CPU run of dataset/variant, with `changes`."""
    from mclrec import config
    from mclrec.run_config import RunConfig

    params = config.load_params(ROOT / "params.yaml")
    return RunConfig.of(config.resolve_run(params, dataset, variant)).on_device("cpu").replace(**changes).to_dict()


def test_reference_copies_the_small_files_and_writes_runs_md(tmp_path):
    _seed_run(tmp_path, config=_trained_as_today("beauty", "mclrec", lr=0.002, seed=0, num_threads=1), dirty=True)
    out = tmp_path / "results" / "reference"
    res = runner.invoke(app, ["report", "reference", "beauty", "mclrec", "--results", str(tmp_path / "results"),
                              "--models", str(tmp_path / "models"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "beauty" / "mclrec.json").read_text())["metrics"]["test"]["HR@20"] == 0.1234
    assert (out / "beauty" / "mclrec" / "log.jsonl").read_text() == '{"epoch": 1}\n'
    assert not list(out.rglob("*.pt"))  # never checkpoints
    runs = (out / "beauty" / "RUNS.md").read_text()
    assert ("| mclrec | 0 | 23 (12) | early stop | 1.50 | AMD EPYC | 1 | 2.13.0+cpu | 0123456789-dirty "
            "| `--set lr=0.002` | - | 0.1234 | - | 0.0532 |") in runs
    assert "Over seeds" not in runs  # one seed: no spread to show


def _add(tmp_path, variant, seed):
    return runner.invoke(app, ["report", "reference", "beauty", variant, "--seed", str(seed),
                               "--results", str(tmp_path / "results"), "--models", str(tmp_path / "models"),
                               "--out", str(tmp_path / "ref")])


def test_seeds_beyond_0_go_under_the_variant_and_runs_md_gives_mean_and_sd(tmp_path):
    tests = {0: (0.08, 0.12, 0.04, 0.05), 1: (0.09, 0.13, 0.05, 0.06), 2: (0.10, 0.11, 0.03, 0.04)}
    for seed, values in tests.items():
        _seed_run(tmp_path, variant="sasrec", seed=seed, test=dict(zip(("HR@10", "HR@20", "NDCG@10", "NDCG@20"), values)))
        res = _add(tmp_path, "sasrec", seed)
        assert res.exit_code == 0, res.output
    _seed_run(tmp_path, variant="mclrec")  # one seed only
    assert _add(tmp_path, "mclrec", 0).exit_code == 0
    ref = tmp_path / "ref" / "beauty"
    assert json.loads((ref / "sasrec.json").read_text())["seed"] == 0  # seed 0 keeps the layout
    assert json.loads((ref / "sasrec" / "seed2.json").read_text())["seed"] == 2
    assert (ref / "sasrec" / "log.jsonl").is_file() and (ref / "sasrec" / "seed1" / "summary.json").is_file()
    runs = (ref / "RUNS.md").read_text().splitlines()
    assert [line.split(" | ")[:2] for line in runs if line.startswith("| sasrec | ") or line.startswith("| mclrec | ")][:4] \
        == [["| mclrec", "0"], ["| sasrec", "0"], ["| sasrec", "1"], ["| sasrec", "2"]]
    # HR@10 0.08, 0.09, 0.10: mean 0.09, sd 0.01; NDCG@20 0.05, 0.06, 0.04: mean 0.05, sd 0.01
    assert "| sasrec | 0, 1, 2 | 0.0900 ± 0.0100 | 0.1200 ± 0.0100 | 0.0400 ± 0.0100 | 0.0500 ± 0.0100 |" in runs
    # Table 3's reference block: seed 0 as before, then mean ± sd over the seeds (Δ of the mean: HR@20 0.12 against
    # the paper's SASRec 0.0894 is +34.2%; HR@10 0.09 against 0.0624, +44.2%); mclrec, with one seed, has no such row
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    res = runner.invoke(app, ["report", "table", "3", "--params", str(params), "--results", str(tmp_path / "none"),
                              "--reference", str(tmp_path / "ref"), "--out", str(tmp_path / "tables")])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "tables" / "table3.md").read_text().split("reference runs", 1)[1]
    assert "| sasrec, seeds 0, 1, 2 | same protocol | 0.0377 | – | – | 0.0624 | 0.0900 ± 0.0100 | +44.2% | 0.0894 | " \
           "0.1200 ± 0.0100 | +34.2% |" in table
    assert "| sasrec | same protocol | 0.0377 | – | – | 0.0624 | 0.0800 | +28.2% | 0.0894 | 0.1200 | +34.2% |" in table
    assert "| mclrec | proposed |" in table and "mclrec, seeds" not in table
    assert not any(line.startswith("| mclrec | 0 | 0.") for line in runs)  # no spread for a single seed


def test_a_reference_run_with_a_foreign_seed_field_is_refused(tmp_path):
    _seed_run(tmp_path)
    results_file = tmp_path / "results" / "beauty" / "mclrec" / "seed0.json"
    record = json.loads(results_file.read_text())
    results_file.write_text(json.dumps({**record, "seed": "zero"}))
    res = _add(tmp_path, "mclrec", 0)
    assert res.exit_code == 1 and "is not a non-negative integer" in " ".join(res.output.split())
    assert not (tmp_path / "ref").exists()  # nothing written


def test_reference_of_a_missing_run_is_refused(tmp_path):
    res = runner.invoke(app, ["report", "reference", "beauty", "sasrec", "--results", str(tmp_path / "results"),
                              "--models", str(tmp_path / "models"), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 1 and "seed0.json nor" in " ".join(res.output.split())


def test_seed_0_is_also_taken_from_the_single_run_results(tmp_path):
    """`snakemake results/<d>/<v>.json` evaluates seed 0 (trained into <v>/seed0/) as results/<d>/<v>.json."""
    _seed_run(tmp_path, variant="cl4srec-orig")
    folder = tmp_path / "results" / "beauty"
    (folder / "cl4srec-orig" / "seed0.json").rename(folder / "cl4srec-orig.json")
    res = _add(tmp_path, "cl4srec-orig", 0)
    assert res.exit_code == 0, res.output
    added = json.loads((tmp_path / "ref" / "beauty" / "cl4srec-orig.json").read_text())
    assert added["metrics"]["test"]["HR@20"] == 0.1234
    (folder / "cl4srec-orig.json").unlink()
    res = _add(tmp_path, "cl4srec-orig", 0)
    assert res.exit_code == 1 and "cl4srec-orig.json exists" in " ".join(res.output.split())


def test_runs_md_says_what_an_older_run_needs_and_whose_environment_it_shows(tmp_path):
    from mclrec import config
    from mclrec.report.reference import runs_rows

    params = config.load_params(ROOT / "params.yaml")
    folder = tmp_path / "beauty"
    (folder / "sasrec").mkdir(parents=True)
    today = _trained_as_today("beauty", "sasrec", seed=0)
    older = {k: v for k, v in today.items() if k not in ("adam", "fused_losses")}  # settings it predates
    env = {"cpu": "AMD EPYC", "torch": "2.13.0+cpu", "git": {"commit": "fedcba9876543210", "dirty": False}}
    (folder / "sasrec.json").write_text(json.dumps({"variant": "sasrec", "seed": 0, "config": older,
                                                    "environment": {**env, "training": None}}))
    (folder / "sasrec" / "summary.json").write_text(json.dumps({"epochs_run": 3, "best_epoch": 2}))
    [row] = runs_rows(folder, params)
    assert row["settings"] == "--set adam=foreach --set fused_losses=false"  # what checkpoints of its time ran
    assert row["commit"] == "fedcba9876 (evaluation's)"
    (folder / "sasrec.json").write_text(json.dumps({"variant": "gone", "seed": 0, "config": today}))
    assert runs_rows(folder, params)[0]["settings"] == "?"


def test_settings_beyond_params_ignore_how_a_run_was_run_and_auto_on_either_device():
    from mclrec import config
    from mclrec.provenance import settings_beyond_params

    params = config.load_params(ROOT / "params.yaml")
    on_cuda = _trained_as_today("beauty", "mclrec")
    on_cuda.update(length_buckets=[], packed_tokens=False, attention="sdpa", nproc=4, num_threads=8, seed=3)
    assert settings_beyond_params(on_cuda, params, "beauty", "mclrec", "cpu") == {}  # resumed on the CPU
    assert settings_beyond_params({**on_cuda, "lr": 0.01}, params, "beauty", "mclrec", "cuda") == {"lr": 0.01}
    cell = _trained_as_today("beauty", "mclrec", lambda_cl1=0.5, beta=1.0)
    assert settings_beyond_params(cell, params, "beauty", "grid/l0.5-b1.0") == {}
    assert settings_beyond_params(cell, params, "beauty", "mclrec") == {"beta": 1.0, "lambda_cl1": 0.5}
