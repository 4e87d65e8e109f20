"""Length-group datasets (Table 5, Fig. 8): users filtered by sequence length, the parent's whole catalogue."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mclrec import config
from mclrec.data.preprocess import preprocess
from mclrec.data.processed import load_processed
from mclrec.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TABLE5 = {"sports-len5": (11416, 57080), "sports-len6to8": (14209, 95564), "sports-len9up": (9973, 143693),
          "yelp-len5": (8076, 40380), "yelp-len6to8": (11109, 75082), "yelp-len9up": (11246, 200892)}


@pytest.fixture
def raw(tmp_path):
    # users 10..14 with 3, 5, 6, 9, 5 items over items 1..12 (already 1-core)
    lines = ["10 1 2 3", "11 4 5 6 7 8", "12 1 9 10 11 12 2", "13 3 4 5 6 7 8 9 10 11", "14 12 11 10 9 8"]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_group_keeps_users_in_range_and_the_whole_catalogue(raw, tmp_path):
    full = preprocess(raw, "seqtxt", 3, 1, 50, tmp_path / "full")
    group = preprocess(raw, "seqtxt", 3, 1, 50, tmp_path / "g", length_group={"min": 5, "max": 6})
    assert full["n_items"] == group["n_items"] == 12
    assert (group["n_users"], group["n_interactions"]) == (3, 5 + 6 + 5)
    assert group["length_group"] == {"min": 5, "max": 6}
    data = load_processed(tmp_path / "g")  # passes the processed-folder checks
    originals = pq.read_table(tmp_path / "g" / "users.parquet").column("original_id").to_pylist()
    assert originals == ["11", "12", "14"] and data.n_users == 3  # in order, renumbered 1..3
    # item ids are the parent's: user 12's test target is the parent's id of item '2'
    items = pq.read_table(tmp_path / "full" / "items.parquet").to_pandas()
    parent_id_of_2 = int(items.loc[items["original_id"] == "2", "item"].iloc[0])
    assert int(data.test.targets[1]) == parent_id_of_2


def test_open_ended_group_and_empty_group(raw, tmp_path):
    nine_up = preprocess(raw, "seqtxt", 3, 1, 50, tmp_path / "g9", length_group={"min": 9, "max": None})
    assert (nine_up["n_users"], nine_up["n_interactions"]) == (1, 9)
    with pytest.raises(DataError, match=r"no user has a sequence length in \[20, inf\]"):
        preprocess(raw, "seqtxt", 3, 1, 50, tmp_path / "none", length_group={"min": 20, "max": None})
    assert not (tmp_path / "none").exists()


def test_params_declare_the_groups_with_their_parent(params):
    for name in TABLE5:
        spec = params["datasets"][name]
        parent = params["datasets"][spec["group_of"]]
        assert spec["source"] == parent["source"] and spec["filename"] == parent["filename"]
        assert spec["overrides"] == parent["overrides"]
    assert params["study"]["length_groups"] == list(TABLE5)


def test_groups_read_their_parents_raw_file_in_every_workflow(params, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mclrec.cli import app

    assert {name: config.raw_source(params, name) for name in TABLE5} == {n: n.split("-")[0] for n in TABLE5}
    own = {**params, "datasets": {**params["datasets"], "yelp-len5": {**params["datasets"]["yelp-len5"],
                                                                      "filename": "other.txt"}}}
    assert config.raw_source(own, "yelp-len5") == "yelp-len5"  # another file: its own folder
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages["download"]["foreach"]) == set(params["datasets"]) - set(TABLE5)
    assert stages["preprocess"]["foreach"]["sports-len5"]["raw"] == "sports"
    assert stages["preprocess"]["do"]["deps"][0] == "data/raw/${item.raw}/${item.filename}"

    monkeypatch.chdir(tmp_path)  # the CLI: download fills the parent's folder, preprocess reads it from there
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    spec = params["datasets"]["sports-len5"]
    runner = CliRunner()
    res = runner.invoke(app, ["preprocess", "sports-len5", "--params", str(ROOT / "params.yaml")])
    raw = f"data/raw/sports/{spec['filename']}"
    assert res.exit_code == 1 and raw in res.output and "mclrec download sports" in " ".join(res.output.split())
    res = runner.invoke(app, ["download", "sports-len5", "--params", str(ROOT / "params.yaml")],
                        env={"MCLREC_MIRROR": str(mirror)})
    assert res.exit_code == 1 and f"{mirror / spec['filename']}: not found in the mirror" in " ".join(res.output.split())
    assert not (tmp_path / "data" / "raw" / "sports-len5").exists()


def test_length_group_naming_an_unknown_parent_is_refused(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("group_of: yelp,", "group_of: yelps,", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(config.ConfigError, match="datasets.yelp-len5.group_of: 'yelps' is not in datasets"):
        config.load_params(tmp_path / "params.yaml")


@pytest.mark.slow
@pytest.mark.benchmark_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (benchmark datasets) is absent")
@pytest.mark.parametrize("parent", ["sports", "yelp"])
def test_groups_reproduce_table5(parent, tmp_path):
    for name, (users, actions) in TABLE5.items():
        if not name.startswith(parent):
            continue
        for command in (["download", name], ["preprocess", name]):
            subprocess.run(["mclrec", *command, "--params", str(ROOT / "params.yaml")], cwd=tmp_path, check=True,
                           capture_output=True, env={**os.environ, "MCLREC_MIRROR": str(SHARED_DATA)})
        stats = json.loads((tmp_path / f"data/processed/{name}/stats.json").read_text())
        n_items = {"sports": 18357, "yelp": 20033}[parent]
        assert (stats["n_users"], stats["n_interactions"], stats["n_items"]) == (users, actions, n_items)
        assert np.isclose(stats["avg_length"], actions / users)
