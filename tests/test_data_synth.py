"""The synthetic dataset: deterministic, valid seqtxt, survives 5-core, and is genuinely sequential."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mclrec.data.formats import read_raw
from mclrec.data.kcore import kcore_filter
from mclrec.data.synth import generate_synthetic

DEFAULTS = dict(
    seed=7, n_users=3000, n_items=2000, n_clusters=40, mean_length=12, min_length=5, stay_probability=0.8
)


@pytest.fixture(scope="module")
def default_file(tmp_path_factory) -> tuple[Path, dict]:
    """The dataset with the intended default settings."""
    path = tmp_path_factory.mktemp("synth") / "synthetic.txt"
    return path, generate_synthetic(path, **DEFAULTS)


def test_deterministic_for_a_seed(tmp_path, default_file):
    path, info = default_file
    again = generate_synthetic(tmp_path / "again.txt", **DEFAULTS)
    assert again == info and (tmp_path / "again.txt").read_bytes() == path.read_bytes()
    other = generate_synthetic(tmp_path / "other.txt", **{**DEFAULTS, "seed": 8})
    assert (tmp_path / "other.txt").read_bytes() != path.read_bytes() and other["n_users"] == 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.txt", "other.txt"]


def test_valid_seqtxt_numbered_by_first_appearance(default_file):
    path, info = default_file
    df = read_raw(path, "seqtxt")
    users, items = df["user"].astype(int).to_numpy(), df["item"].astype(int).to_numpy()
    assert len(df) == info["n_interactions"] and np.unique(users).tolist() == list(range(1, 3001))
    first_seen = items[np.sort(np.unique(items, return_index=True)[1])]
    assert first_seen.tolist() == list(range(1, info["n_items"] + 1))
    lengths = np.bincount(users)[1:]
    assert lengths.min() >= 5 and 10 < lengths.mean() < 14
    assert path.read_text().count("\n") == 3000


def test_survives_five_core(default_file):
    df = kcore_filter(read_raw(default_file[0], "seqtxt"), 5, 5)
    assert df["user"].nunique() >= 2500 and df["item"].nunique() >= 1500


def test_first_order_markov_beats_popularity(default_file):
    df = read_raw(default_file[0], "seqtxt")
    users, items = df["user"].astype(int).to_numpy(), df["item"].astype(int).to_numpy()
    is_last = np.append(users[1:] != users[:-1], True)
    history = ~is_last
    top_pop = np.argsort(-np.bincount(items[history]), kind="stable")[:10]
    test_prev, test_target = items[np.flatnonzero(is_last) - 1], items[is_last]
    hr_pop = np.isin(test_target, top_pop).mean()
    same_user_pair = (users[1:] == users[:-1]) & history[1:]
    pairs = pd.DataFrame({"prev": items[:-1][same_user_pair], "next": items[1:][same_user_pair]})
    counts = pairs.value_counts().reset_index()
    counts = counts.sort_values(["prev", "count", "next"], ascending=[True, False, True])
    top_next = counts[counts.groupby("prev").cumcount() < 10]
    hits = pd.DataFrame({"prev": test_prev, "next": test_target}).merge(top_next, on=["prev", "next"])
    hr_markov = len(hits) / len(test_target)
    assert hr_markov > 3 * hr_pop and hr_markov > hr_pop + 0.2


def test_rejects_impossible_settings(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x.txt", **{**DEFAULTS, "n_clusters": 0})
