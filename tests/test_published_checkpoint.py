"""Published checkpoints declared in params.yaml: download/mirror, sha256, dataset check, Table 3 through Snakemake."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.cli import app
from mclrec.io import sha256_file
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.recbole import to_recbole_state_dict
from mclrec.checkpoint import load_checkpoint
from mclrec.training.trainer import train

from tests.test_end_to_end import SHARED_DATA, _project_copy, _run, write_params

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TABLE3_MCLREC_BEAUTY = {"HR@5": 0.0581, "HR@10": 0.0871, "HR@20": 0.1243,
                        "NDCG@5": 0.0352, "NDCG@10": 0.0446, "NDCG@20": 0.0539}


@pytest.fixture(scope="module")
def published(tiny, tiny_dir, params, tmp_path_factory):
    """A project folder whose params.yaml declares a RecBole-format checkpoint of a tiny run, served by file:// URL."""
    cfg = config.resolve_run(params, "synthetic", "sasrec")
    cfg.update(device="cpu", batch_size=128, max_len=20, max_epochs=1)
    root = tmp_path_factory.mktemp("published")
    train(cfg, tiny, root / "run", progress=False)
    state = load_checkpoint(root / "run" / "best.pt")["modules"]["encoder"]
    encoder = SASRecEncoder(len(state["item_embedding.weight"]) - 2, 20)
    encoder.load_state_dict(state)
    served = root / "served" / "model.pth"
    served.parent.mkdir()
    torch.save({"state_dict": to_recbole_state_dict(encoder)}, served)
    project = root / "project"
    project.mkdir()
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["datasets"]["synthetic"]["preprocess"]["max_len"] = 20
    doc["datasets"]["other"] = dict(doc["datasets"]["synthetic"])
    doc["checkpoints"] = {"tiny-ckpt": {"dataset": "synthetic", "format": "recbole", "n_heads": 2, "url": served.as_uri(),
                                        "sha256": sha256_file(served), "filename": "tiny.pth"}}
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {"project": project, "served": served, "data": tiny_dir, "run": root / "run"}


def _cli(project: Path, *args: str):
    return runner.invoke(app, [args[0], "--params", str(project / "params.yaml"), *args[1:]])


def test_download_verifies_then_evaluate_scores_like_the_original(published, monkeypatch, tmp_path):
    monkeypatch.chdir(published["project"])
    res = _cli(published["project"], "download", "tiny-ckpt")
    assert res.exit_code == 0, res.output
    stored = Path("models/published/tiny-ckpt/tiny.pth")
    assert stored.read_bytes() == published["served"].read_bytes()
    res = _cli(published["project"], "evaluate", "--dataset", "synthetic", "--published", "tiny-ckpt",
               "--data-dir", str(published["data"]), "--device", "cpu")
    assert res.exit_code == 0, res.output
    record = json.loads(Path("results/synthetic/tiny-ckpt.json").read_text())
    assert record["variant"] == "tiny-ckpt" and record["checkpoint_format"] == "recbole"
    assert record["published"]["sha256"] == sha256_file(stored)
    ours = tmp_path / "ours.json"
    res = _cli(published["project"], "evaluate", "--dataset", "synthetic", "--checkpoint",
               str(published["run"] / "best.pt"), "--data-dir", str(published["data"]), "--output", str(ours),
               "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert json.loads(ours.read_text())["metrics"] == record["metrics"]


def test_changed_checkpoint_is_refused_and_left_untouched(published, monkeypatch):
    monkeypatch.chdir(published["project"])
    stored = Path("models/published/tiny-ckpt/tiny.pth")
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"not the published file")
    expected = sha256_file(published["served"])
    for args in (("download", "tiny-ckpt"),
                 ("evaluate", "--dataset", "synthetic", "--published", "tiny-ckpt", "--data-dir", str(published["data"]))):
        res = _cli(published["project"], *args)
        assert res.exit_code == 1
        message = " ".join(res.output.split())
        assert str(stored) in message and expected in message and sha256_file(stored) in message
        assert stored.read_bytes() == b"not the published file"
    stored.unlink()


def test_checkpoint_of_another_dataset_is_refused_before_scoring(published, monkeypatch):
    monkeypatch.chdir(published["project"])
    res = _cli(published["project"], "evaluate", "--dataset", "other", "--published", "tiny-ckpt",
               "--data-dir", "/nonexistent")
    assert res.exit_code == 1
    message = " ".join(res.output.split())
    assert "trained on dataset 'synthetic', not 'other'" in message
    assert not Path("results/other").exists()


def test_checkpoint_declared_for_an_unknown_dataset_is_a_params_error(tmp_path):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["checkpoints"]["published-mclrec"]["dataset"] = "toys"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(config.ConfigError, match="checkpoints.published-mclrec.dataset: 'toys' is not in datasets"):
        config.load_params(tmp_path / "params.yaml")


@pytest.mark.slow
@pytest.mark.benchmark_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (benchmark datasets) is absent")
def test_snakemake_target_reproduces_table3_mclrec_beauty(tmp_path):
    work = _project_copy(tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    # Table 3 is the test users' metrics; the six noise levels would rank every test user six more times on the
    # fully padded path a RecBole file is evaluated on (about a minute here), and noise has tests of its own
    params["evaluate"]["noise"] = []
    write_params(work, params)
    _run(["snakemake", "--cores", "2", "results/beauty/published-mclrec.json"], work, MCLREC_MIRROR=str(SHARED_DATA))
    record = json.loads((work / "results/beauty/published-mclrec.json").read_text())
    assert {k: round(record["metrics"]["test"][k], 4) for k in TABLE3_MCLREC_BEAUTY} == TABLE3_MCLREC_BEAUTY
    assert round(record["metrics"]["valid"]["MRR@10"], 4) == 0.0391
