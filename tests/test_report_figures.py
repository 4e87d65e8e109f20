"""Figures render non-empty PNGs atomically, and a 'no runs yet' placeholder when data is missing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mclrec.report import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(ndcg: float, hr: float = 0.1, **extra) -> dict:
    """A fabricated results document."""
    return {"metrics": {"test": {"HR@20": hr, "NDCG@20": ndcg}}, "metrics_std": {"test": {"HR@20": 0.002, "NDCG@20": 0.001}}, **extra}


def assert_png(path) -> None:
    """`path` is a non-empty PNG with no temp file left beside it."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def placeholders(monkeypatch) -> list:
    """Record calls of the 'no runs yet' placeholder (still drawing it)."""
    calls: list = []
    real = figures.plot_no_runs

    def spy(path, title=""):
        calls.append(path)
        real(path, title)

    monkeypatch.setattr(figures, "plot_no_runs", spy)
    return calls


def test_training_curves_overlay_seeds(tmp_path, placeholders):
    log = lambda shift: [{"epoch": e, "loss": {"rec": 9 - e + shift, "cl1": 1 / e, "cl2": 0.5},  # noqa: E731
                          "valid": {"MRR@10": 0.01 * e - 0.002 * (e == 3) + shift / 100}, "epoch_seconds": 1.0}
                         for e in range(1, 5)]
    other = [{"epoch": 1, "loss": {"rec": 1, "reg": 2}}]
    assert figures.loss_components([log(0), other]) == ["rec", "cl1", "cl2", "reg"]
    runs = {"seed 0": log(0), "seed 1": log(1), "seed 2": []}
    figures.plot_training_curves(runs, "beauty / mclrec", tmp_path / "c.png")
    assert_png(tmp_path / "c.png")
    figures.plot_training_curves(runs, "beauty / mclrec", tmp_path / "b.png", best={"seed 0": 2, "seed 1": None})
    assert_png(tmp_path / "b.png")
    figures.plot_training_curves({"seed 0": []}, "beauty / mclrec", tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
    assert placeholders == [tmp_path / "empty.png"]


def test_joint_vs_meta_and_batch_sizes(tmp_path, placeholders):
    index = {("beauty", "mclrec"): rec(0.05), ("beauty", "mclrec-j"): rec(0.045), ("sports", "mclrec"): rec(0.03),
             ("beauty", "mclrec-bs64"): rec(0.04), ("beauty", "sasrec"): rec(0.03)}
    figures.plot_joint_vs_meta(index, ["beauty", "sports"], tmp_path / "fig3.png")
    by_batch = {"mclrec": {64: "mclrec-bs64", 128: "mclrec-bs128", 256: "mclrec"}, "sasrec": {256: "sasrec"}}
    figures.plot_batch_sizes(index, ["beauty", "sports"], by_batch, tmp_path / "fig4.png")
    assert_png(tmp_path / "fig3.png") and assert_png(tmp_path / "fig4.png")
    assert placeholders == []
    figures.plot_joint_vs_meta({}, ["beauty"], tmp_path / "fig3-empty.png")
    figures.plot_batch_sizes({("beauty", "mclrec"): None}, ["beauty"], by_batch, tmp_path / "fig4-empty.png")
    assert placeholders == [tmp_path / "fig3-empty.png", tmp_path / "fig4-empty.png"]


def test_grid_heat_map(tmp_path, placeholders):
    lambdas, betas = [0.0, 0.1], [0.05, 0.1, 0.4]
    records = [{"config": {"lambda_cl1": 0.1, "beta": 0.4}, **rec(0.06)}, {"config": {"lambda_cl1": 0.0, "beta": 0.05}, **rec(0.05)},
               {"config": {"lambda_cl1": 0.3, "beta": 0.05}, **rec(0.07)}]
    grid = figures.grid_values(records, lambdas, betas, "NDCG@20")
    assert grid[0, 0] == 0.05 and grid[1, 2] == 0.06 and np.isnan(grid).sum() == 4
    figures.plot_grid(grid, lambdas, betas, tmp_path / "fig6.png", "NDCG@20", title="beauty")
    assert_png(tmp_path / "fig6.png")
    figures.plot_grid(np.full((2, 3), math.nan), lambdas, betas, tmp_path / "fig6-empty.png", "NDCG@20")
    assert placeholders == [tmp_path / "fig6-empty.png"]
    with pytest.raises(ValueError):
        figures.plot_grid(np.ones((3, 2)), lambdas, betas, tmp_path / "bad.png", "NDCG@20")


def test_noise_and_groups(tmp_path, placeholders):
    noisy = rec(0.05, noise={"0.05": {"NDCG@20": 0.045}, "0.1": {"NDCG@20": 0.04}})
    assert figures.noise_value(noisy, 0.0, "NDCG@20") == 0.05
    assert figures.noise_value(noisy, 0.1, "NDCG@20") == 0.04
    assert math.isnan(figures.noise_value(noisy, 0.3, "NDCG@20"))
    figures.plot_noise({"mclrec": noisy, "sasrec": None}, [0.0, 0.05, 0.1, 0.3], tmp_path / "fig7.png")
    grouped = rec(0.05, groups={"=5": {"n_users": 10, "NDCG@20": 0.03}, "6-8": {"n_users": 8, "NDCG@20": 0.04},
                                ">8": {"n_users": 5, "NDCG@20": 0.06}})
    figures.plot_groups({"mclrec": grouped, "duorec": None}, tmp_path / "fig8.png")
    assert_png(tmp_path / "fig7.png") and assert_png(tmp_path / "fig8.png")
    assert placeholders == []
    figures.plot_noise({"mclrec": None}, [0.05], tmp_path / "fig7-empty.png")
    figures.plot_groups({"mclrec": rec(0.05)}, tmp_path / "fig8-empty.png")
    assert placeholders == [tmp_path / "fig7-empty.png", tmp_path / "fig8-empty.png"]
    assert_png(tmp_path / "fig8-empty.png")


def test_training_curves_mark_the_epoch_training_chose(tmp_path, monkeypatch):
    """The dotted line stands at summary.json's best epoch where given, else at the metric's maximum."""
    figs = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: figs.append(fig))
    records = [{"epoch": e, "loss": {"rec": 1.0}, "valid": {"MRR@10": v}}
               for e, v in enumerate([0.01, 0.02330, 0.02328, 0.02334], start=1)]
    for best, expected in (({"seed 0": 2}, 2), (None, 4)):
        figures.plot_training_curves({"seed 0": records}, "t", tmp_path / "c.png", best=best)
        lines = [line for line in figs[-1].axes[-1].get_lines() if line.get_linestyle() == ":"]
        assert [line.get_xdata()[0] for line in lines] == [expected]
