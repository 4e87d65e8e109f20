"""preprocess end to end (small fixtures and the benchmark files), atomic output, loading and instances."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mclrec.data import preprocess as preprocess_module
from mclrec.data.preprocess import SPLIT_FILES, preprocess
from mclrec.data.processed import Split, load_processed, padded_inputs, prefix_instances
from mclrec.errors import DataError
from mclrec.io import sha256_file

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data"
OUTPUTS = [f"{name}.parquet" for name in SPLIT_FILES] + ["stats.json"]

# users 1, 2, 3 keep 5, 6 and 3 items; user 9 (1 item) and item 99 (1 user) go in the 3/2-core.
SEQTXT = "1 1 2 3 4 5\n2 2 3 1 4 5 6\n9 99\n3 6 1 2\n"


def write(path: Path, text: str) -> Path:
    """Write a fixture file."""
    path.write_text(text, encoding="utf-8")
    return path


def test_preprocess_seqtxt_small(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT)
    stats = preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out", extra_stats={"dataset": "small"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    assert pq.read_table(tmp_path / "out" / "train.parquet").to_pylist() == [
        {"user": 1, "input": [1, 2], "target": 3},
        {"user": 2, "input": [2, 3, 1], "target": 4},
        {"user": 3, "input": [], "target": 6},
    ]
    assert pq.read_table(tmp_path / "out" / "valid.parquet").to_pylist() == [
        {"user": 1, "input": [2, 3], "target": 4},
        {"user": 2, "input": [1, 4], "target": 5},
        {"user": 3, "input": [6], "target": 1},
    ]
    assert pq.read_table(tmp_path / "out" / "test.parquet").column("target").to_pylist() == [5, 6, 2]
    assert pq.read_table(tmp_path / "out" / "test.parquet").to_pylist()[0] == {"user": 1, "input": [3, 4], "target": 5}
    assert pq.read_table(tmp_path / "out" / "users.parquet").column("original_id").to_pylist() == ["1", "2", "3"]
    expected = {
        "n_users": 3, "n_items": 6, "n_interactions": 14, "avg_length": 14 / 3, "sparsity": 1 - 14 / 18,
        "min_length": 3, "max_length": 6, "max_len": 2, "n_train_instances": 5, "user_k": 3, "item_k": 2,
        "format": "seqtxt", "n_raw_interactions": 15, "n_raw_users": 4, "n_raw_items": 7, "dataset": "small",
    }
    assert {key: stats[key] for key in expected} == pytest.approx(expected)
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    assert len(stats["raw_sha256"]) == 64


def test_preprocess_csv_orders_by_time_with_stable_ties(tmp_path):
    csv = "u1,iA,5,300\nu1,iB,5,100\nu2,iB,4,100\nu1,iC,1,100\nu2,iC,3,50\nu2,iA,2,400\n"
    raw = write(tmp_path / "r.csv", csv)
    preprocess(raw, "amazon-ratings-csv", 3, 1, 50, tmp_path / "out")
    # chronological: (u2,iC,50) (u1,iB,100) (u2,iB,100) (u1,iC,100) (u1,iA,300) (u2,iA,400)
    # users: u2=1, u1=2; items: iC=1, iB=2, iA=3
    test = pq.read_table(tmp_path / "out" / "test.parquet").to_pylist()
    assert test == [{"user": 1, "input": [1, 2], "target": 3}, {"user": 2, "input": [2, 1], "target": 3}]
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert items == [{"item": 1, "original_id": "iC"}, {"item": 2, "original_id": "iB"}, {"item": 3, "original_id": "iA"}]


def test_preprocess_is_byte_identical(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT)
    preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "a")
    preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "b")
    preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "a")
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "small.txt"]


def test_failed_write_keeps_previous_output_and_no_temp_dirs(tmp_path, monkeypatch):
    raw = write(tmp_path / "small.txt", SEQTXT)
    out = tmp_path / "out"
    preprocess(raw, "seqtxt", 3, 2, 2, out)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    calls = []
    real = preprocess_module.write_parquet

    def flaky(path, table):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path, table)

    monkeypatch.setattr(preprocess_module, "write_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        preprocess(raw, "seqtxt", 3, 2, 3, out)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.txt"]
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        preprocess(raw, "seqtxt", 3, 2, 3, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.txt"]


@pytest.mark.parametrize("engine", ["memory", "duckdb"])
def test_a_raw_file_other_than_the_declared_one_writes_nothing(tmp_path, engine):
    raw = write(tmp_path / "small.txt", SEQTXT)
    with pytest.raises(DataError, match=f"small.txt: sha256 is {sha256_file(raw)} but the dataset's source.sha256"):
        preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out", engine=engine, expected_sha256="0" * 64)
    assert not (tmp_path / "out").exists()
    stats = preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out", engine=engine, expected_sha256=sha256_file(raw))
    assert stats["raw_sha256"] == sha256_file(raw)


def test_kcore_leaving_nothing_names_file_and_k(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT)
    with pytest.raises(DataError, match=r"small\.txt: no interactions left .*user_k=10, item_k=5"):
        preprocess(raw, "seqtxt", 10, 5, 50, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("user_k", "item_k", "max_len", "message"), [(2, 1, 5, "user_k"), (3, 0, 5, "item_k"),
                                                                    (3, 1, 0, "max_len"), (3, 1, 1, "max_len")])
def test_invalid_parameters(tmp_path, user_k, item_k, max_len, message):
    raw = write(tmp_path / "small.txt", SEQTXT)
    with pytest.raises(DataError, match=message):
        preprocess(raw, "seqtxt", user_k, item_k, max_len, tmp_path / "out")


def test_bad_raw_file_error_names_line(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT + "4 a b\n")
    with pytest.raises(DataError, match=r"small\.txt, line 5"):
        preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out")


# --- loading ----------------------------------------------------------------------------------


@pytest.fixture
def processed(tmp_path) -> Path:
    """A small processed dataset directory."""
    preprocess(write(tmp_path / "small.txt", SEQTXT), "seqtxt", 3, 2, 2, tmp_path / "small")
    return tmp_path / "small"


def test_load_processed_roundtrip(processed):
    data = load_processed(processed)
    assert (data.n_users, data.n_items, data.max_len) == (3, 6, 2)
    assert data.train.offsets.tolist() == [0, 2, 5, 5] and data.train.items.tolist() == [1, 2, 2, 3, 1]
    assert data.test.targets.tolist() == [5, 6, 2] and data.valid.users.dtype == np.int64


def test_load_processed_missing_file(processed, tmp_path):
    """The hint names the dataset for data/processed/<dataset>, and the folder (--out) for any other folder."""
    (processed / "valid.parquet").unlink()
    with pytest.raises(DataError, match=r"valid\.parquet: processed file missing; run `mclrec preprocess DATASET "
                                        rf"--out {re.escape(str(processed))}` first"):
        load_processed(processed)
    default = tmp_path / "data" / "processed" / "small"
    default.parent.mkdir(parents=True)
    processed.rename(default)
    with pytest.raises(DataError, match=r"valid\.parquet: processed file missing; run `mclrec preprocess small` first"):
        load_processed(default)


@pytest.mark.parametrize("table", ["items", "users"])
def test_load_processed_corrupt_id_table_names_the_file(processed, table):
    path = processed / f"{table}.parquet"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=rf"{table}\.parquet: not a readable Parquet file"):
        load_processed(processed)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_items", 5, r"train\.parquet: target item ids outside 1\.\.5"),
        ("n_items", 7, r"items\.parquet: 6 rows but stats\.json n_items=7"),
        ("n_users", 4, r"train\.parquet: users are not exactly 1\.\.4"),
        ("n_interactions", 13, r"train\.parquet: splits hold 14 interactions but stats\.json n_interactions=13"),
        ("max_len", 1, r"valid\.parquet: input lengths do not match"),
        ("n_users", None, r"stats\.json: key 'n_users' missing"),
    ],
)
def test_load_processed_detects_mismatch(processed, key, value, message):
    stats = json.loads((processed / "stats.json").read_text())
    stats[key] = value
    (processed / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(DataError, match=message):
        load_processed(processed)


# --- model inputs -----------------------------------------------------------------------------


def naive_prefixes(split: Split, max_len: int):
    """Reference implementation: a plain loop over users and prefix lengths."""
    inputs, lengths, targets, users = [], [], [], []
    for k, user in enumerate(split.users):
        seq = list(split.items[split.offsets[k]:split.offsets[k + 1]]) + [split.targets[k]]
        for t in range(1, len(seq)):
            window = seq[:t][-max_len:]
            inputs.append(window + [0] * (max_len - len(window)))
            lengths.append(len(window))
            targets.append(seq[t])
            users.append(user)
    return np.array(inputs).reshape(-1, max_len), np.array(lengths), np.array(targets), np.array(users)


def example_split() -> Split:
    """Users with training inputs of lengths 5 (> max_len), 0, 1 and 2."""
    items = np.array([11, 12, 13, 14, 15, 21, 22, 23])
    return Split(
        users=np.array([1, 2, 3, 4]),
        offsets=np.array([0, 5, 5, 6, 8]),
        items=items,
        targets=np.array([16, 30, 40, 50]),
    )


def test_prefix_instances_hand_example():
    inputs, lengths, targets, users = prefix_instances(example_split(), max_len=3)
    assert inputs.tolist() == [
        [11, 0, 0], [11, 12, 0], [11, 12, 13], [12, 13, 14], [13, 14, 15],
        [21, 0, 0],
        [22, 0, 0], [22, 23, 0],
    ]
    assert lengths.tolist() == [1, 2, 3, 3, 3, 1, 1, 2]
    assert targets.tolist() == [12, 13, 14, 15, 16, 40, 23, 50]
    assert users.tolist() == [1, 1, 1, 1, 1, 3, 4, 4]
    assert all(a.dtype == np.int64 for a in (inputs, lengths, targets, users))


@pytest.mark.parametrize("max_len", [1, 2, 3, 50])
def test_prefix_instances_match_naive_loop(processed, max_len):
    for split in (example_split(), load_processed(processed).train):
        for got, want in zip(prefix_instances(split, max_len), naive_prefixes(split, max_len)):
            assert got.tolist() == want.tolist()


def test_padded_inputs_keep_last_items():
    inputs, lengths, targets, users = padded_inputs(example_split(), max_len=3)
    assert inputs.tolist() == [[13, 14, 15], [0, 0, 0], [21, 0, 0], [22, 23, 0]]
    assert lengths.tolist() == [3, 0, 1, 2] and targets.tolist() == [16, 30, 40, 50] and users.tolist() == [1, 2, 3, 4]


# --- benchmark files (Table 2) ----------------------------------------------------------------

TABLE2 = {
    "Amazon_Beauty.txt": (22363, 12101, 198502),
    "Amazon_Sports_and_Outdoors.txt": (35598, 18357, 296337),
    "Yelp.txt": (30431, 20033, 316354),
}


@pytest.mark.benchmark_data
@pytest.mark.parametrize("name", sorted(TABLE2))
def test_benchmark_table2_counts(tmp_path, name):
    path = BENCH / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    stats = preprocess(path, "seqtxt", 5, 5, 50, tmp_path / "out")
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == TABLE2[name]
    assert stats["n_train_instances"] == stats["n_interactions"] - 3 * stats["n_users"]
    data = load_processed(tmp_path / "out")
    items = pq.read_table(tmp_path / "out" / "items.parquet").column("original_id").to_pylist()
    assert items == [str(k) for k in range(1, data.n_items + 1)]
    if name == "Amazon_Beauty.txt":
        assert stats["n_train_instances"] == 131413


def test_extra_stats_cannot_overwrite_computed_ones(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT)
    with pytest.raises(ValueError, match="n_users"):
        preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out", extra_stats={"n_users": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.txt"]


def test_output_path_that_is_a_file_leaves_no_debris(tmp_path):
    raw = write(tmp_path / "small.txt", SEQTXT)
    write(tmp_path / "out", "not a directory")
    with pytest.raises(OSError):
        preprocess(raw, "seqtxt", 3, 2, 2, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.txt"]
    assert (tmp_path / "out").read_text() == "not a directory"
