"""Figures 2 and 5: t-SNE maps of the learned views from trained checkpoints."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.cli import app
from mclrec.report.tsne import sample_users, view_embeddings
from mclrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.xdist_group("tsne")  # one xdist worker trains the module's `project` once


@pytest.fixture(scope="module")
def project(tiny, tiny_dir, params, tmp_path_factory):
    """A project folder with one-epoch seed-0 runs of mclrec and mclrec-no-reg on the tiny dataset."""
    work = tmp_path_factory.mktemp("tsne")
    shutil.copytree(tiny_dir, work / "data/processed/synthetic")
    for variant in ("mclrec", "mclrec-no-reg"):
        cfg = config.resolve_run(params, "synthetic", variant)
        cfg.update(device="cpu", batch_size=128, max_len=20, max_epochs=1, seed=0)
        train(cfg, tiny, work / "models/synthetic" / variant / "seed0", progress=False)
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["study"]["seeds"] = [0]
    (work / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return work


def test_user_sample_is_fixed_by_the_seed():
    assert np.array_equal(sample_users(500, 40, 3), sample_users(500, 40, 3))
    assert not np.array_equal(sample_users(500, 40, 3), sample_users(500, 40, 4))
    assert len(set(sample_users(30, 40, 0))) == 30


def test_views_of_mclrec_include_the_augmenters_and_are_reproducible(project, tiny):
    rows = sample_users(tiny.n_users, 25, 0)
    views = view_embeddings(project / "models/synthetic/mclrec/seed0/best.pt", tiny, rows, 0)
    assert set(views) == {"h1", "h2", "z1", "z2"} and all(v.shape == (25, 64) for v in views.values())
    again = view_embeddings(project / "models/synthetic/mclrec/seed0/best.pt", tiny, rows, 0)
    assert all(np.array_equal(views[k], again[k]) for k in views)
    assert not np.array_equal(views["h1"], views["h2"])  # two different augmentations


def test_tsne_figures_render(project, monkeypatch):
    monkeypatch.chdir(project)
    for kind in ("z", "h"):  # h: mclrec-j has no run here, so its panel is left out
        res = runner.invoke(app, ["report", "tsne", kind, "synthetic", "--users", "30"])
        assert res.exit_code == 0, res.output
        png = project / f"results/figures/tsne-{kind}-synthetic.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_tsne_figure_is_refused(project, monkeypatch):
    monkeypatch.chdir(project)
    res = runner.invoke(app, ["report", "tsne", "q", "synthetic"])
    assert res.exit_code == 1 and "choose z (Fig. 2) or h (Fig. 5)" in res.output
