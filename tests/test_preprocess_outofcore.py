"""The duckdb (out-of-core) preprocess engine gives the in-memory engine's outputs byte for byte, and its errors."""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.cli import app
from mclrec.data import outofcore, parquetstream, rawbatches, records
from mclrec.data import preprocess as preprocess_module
from mclrec.data.preprocess import SPLIT_FILES, choose_engine, preprocess
from mclrec.errors import ConfigError, DataError

from .conftest import ROOT, SHARED_DATA

OUTPUTS = [f"{name}.parquet" for name in SPLIT_FILES] + ["stats.json"]
MIRROR = Path(os.environ.get("MCLREC_MIRROR", SHARED_DATA))
BENCHMARK_FILES = ("Amazon_Beauty.txt", "Amazon_Sports_and_Outdoors.txt", "Yelp.txt")


def both_engines(tmp_path: Path, raw: Path, fmt: str, user_k: int = 3, item_k: int = 2, max_len: int = 4,
                 **kwargs) -> dict:
    """Run both engines; assert identical returned stats and identical bytes of every output file."""
    stats = {}
    for engine in ("memory", "duckdb"):
        stats[engine] = preprocess(raw, fmt, user_k, item_k, max_len, tmp_path / engine, engine=engine, **kwargs)
    assert stats["memory"] == stats["duckdb"]
    for name in OUTPUTS:
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "duckdb" / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left
    return stats["duckdb"]


def both_errors(tmp_path: Path, raw: Path, fmt: str, ks: tuple[int, int, int] = (3, 1, 4), **kwargs) -> str:
    """Run both engines on a bad input; assert the same DataError message and no output; return it."""
    messages = {}
    for engine in ("memory", "duckdb"):
        with pytest.raises(DataError) as info:
            preprocess(raw, fmt, *ks, tmp_path / engine, engine=engine, **kwargs)
        messages[engine] = str(info.value)
        assert not (tmp_path / engine).exists()
    assert messages["memory"] == messages["duckdb"]
    return messages["duckdb"]


def random_interactions(seed: int, n: int, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Power-law-ish users and items, so that k-core removes some of both."""
    rng = np.random.default_rng(seed)
    users = np.minimum(rng.zipf(1.6, n), n_users) - 1
    items = np.minimum(rng.zipf(1.4, n), n_items) - 1
    return users, items


def kcore_rounds(users: np.ndarray, items: np.ndarray, user_k: int, item_k: int) -> int:
    """How many removal rounds kcore.kcore_mask makes on these rows."""
    alive, rounds = np.ones(len(users), dtype=bool), 0
    while True:
        u_count = np.bincount(users[alive], minlength=users.max() + 1)
        i_count = np.bincount(items[alive], minlength=items.max() + 1)
        dead = alive & ((u_count < user_k)[users] | (i_count < item_k)[items])
        if not dead.any():
            return rounds
        alive &= ~dead
        rounds += 1


# --- byte-identical outputs ---------------------------------------------------------------------------


def test_seqtxt_with_a_kcore_of_several_rounds(tmp_path):
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 800, 4000), rng.integers(0, 600, 4000)  # ~5 per user, ~7 per item: cascades
    order = np.argsort(users, kind="stable")
    assert kcore_rounds(users, items, 4, 3) >= 3
    lines = {}
    for u, i in zip(users[order], items[order]):
        lines.setdefault(u, []).append(str(i + 1))
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"{u + 1}\t{' '.join(seq)}\r\n" for u, seq in lines.items()) + "\n  \n")
    stats = both_engines(tmp_path / "out", raw, "seqtxt", 4, 3, 5)
    assert 0 < stats["n_interactions"] < stats["n_raw_interactions"]


def test_ratings_csv_with_timestamp_ties_and_awkward_ids(tmp_path):
    users, items = random_interactions(1, 5000, 300, 200)
    rng = np.random.default_rng(1)
    stamps = rng.integers(0, 40, len(users))  # many ties: file order decides
    odd = ['"a,b"', '"q""uote"', " lead", "ü€", "007", "7"]  # quoted commas and quotes, spaces, unicode, digits
    user_ids = [odd[u] if u < len(odd) else f"U{u}" for u in users]
    lines = [f"{u},I{i},5.0,{t}\n" for u, i, t in zip(user_ids, items, stamps)]
    raw = tmp_path / "ratings.csv"
    raw.write_text("".join(lines[:100]) + "\n" + "".join(lines[100:]), encoding="utf-8")
    stats = both_engines(tmp_path / "out", raw, "amazon-ratings-csv", 3, 2, 6)
    originals = pq.read_table(tmp_path / "out" / "duckdb" / "users.parquet").column("original_id").to_pylist()
    assert {"a,b", 'q"uote', " lead", "ü€"} <= set(originals)
    assert stats["n_raw_users"] == len(set(user_ids))


def test_gzip_files(tmp_path):
    raw = tmp_path / "ratings.csv.gz"
    users, items = random_interactions(2, 2000, 100, 80)
    raw.write_bytes(gzip.compress("".join(f"u{u},i{i},1,{i % 7}\n" for u, i in zip(users, items)).encode()))
    both_engines(tmp_path / "csv", raw, "amazon-ratings-csv")
    seq = tmp_path / "raw.txt.gz"
    seq.write_bytes(gzip.compress(b"1 1 2 3 4\n2 2 3 1 4 5\n3 5 1 2\n4 4 3\n"))
    both_engines(tmp_path / "seq", seq, "seqtxt", 3, 2, 2)


@pytest.mark.parametrize("group", [{"min": 5, "max": 7}, {"min": 6, "max": None}, {"min": 3, "max": 3}])
def test_length_groups(tmp_path, group):
    users, items = random_interactions(3, 5000, 300, 200)
    raw = tmp_path / "ratings.csv"
    raw.write_text("".join(f"u{u},i{i},1,{(u * 7 + i) % 50}\n" for u, i in zip(users, items)))
    stats = both_engines(tmp_path / "out", raw, "amazon-ratings-csv", 3, 2, 4, length_group=group)
    assert stats["length_group"] == group


def test_length_group_without_users(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3\n2 2 3 1\n")
    message = both_errors(tmp_path, raw, "seqtxt", length_group={"min": 9, "max": None})
    assert message == f"{raw}: no user has a sequence length in [9, inf]"


def test_recbole_inter_with_and_without_timestamps(tmp_path):
    users, items = random_interactions(4, 3000, 150, 120)
    stamps = np.random.default_rng(4).choice(["1.5", "-0.0", "0", "2e3", "0.25", "7"], len(users))
    raw = tmp_path / "r.inter"
    raw.write_text("rating:float\tuser_id:token\titem_id:token\ttimestamp:float\n"
                   + "".join(f"4\tu{u}\ti{i}\t{t}\n" for u, i, t in zip(users, items, stamps)))
    both_engines(tmp_path / "ts", raw, "recbole-inter")
    plain = tmp_path / "p.inter"
    plain.write_text("item_id:token\tuser_id:token\n" + "".join(f"i{i}\tu{u}\n" for u, i in zip(users, items)))
    both_engines(tmp_path / "plain", plain, "recbole-inter")


def test_json_formats(tmp_path):
    users, items = random_interactions(5, 3000, 150, 120)
    amazon = tmp_path / "reviews.json"
    amazon.write_text("".join(json.dumps({"reviewerID": f"A{u}", "asin": f"B{i}", "unixReviewTime": int(i % 9),
                                          "overall": 5.0}) + "\n" for u, i in zip(users, items)))
    both_engines(tmp_path / "amazon", amazon, "amazon-reviews-json")
    yelp = tmp_path / "yelp.json"
    yelp.write_text("".join(json.dumps({"user_id": f"Y{u}", "business_id": f"b{i}", "stars": 3,
                                        "date": f"2019-01-0{1 + i % 3} 10:00:0{u % 2}"}) + "\n"
                            for u, i in zip(users, items)))
    both_engines(tmp_path / "yelp", yelp, "yelp-reviews-json")


def test_several_row_groups(tmp_path, monkeypatch):
    """Row groups of 7 rows on both sides: the streamed writer cuts the tables exactly as write_table does."""
    monkeypatch.setattr(parquetstream, "ROW_GROUP_ROWS", 7)
    monkeypatch.setattr(pq, "write_table", functools.partial(pq.write_table, row_group_size=7))
    users, items = random_interactions(6, 3000, 150, 100)
    raw = tmp_path / "ratings.csv"
    raw.write_text("".join(f"u{u},i{i},1,{i % 11}\n" for u, i in zip(users, items)))
    both_engines(tmp_path / "out", raw, "amazon-ratings-csv")
    for name in ("train", "items", "users"):
        assert pq.ParquetFile(tmp_path / "out" / "duckdb" / f"{name}.parquet").metadata.num_row_groups > 3


def test_row_group_length_is_pyarrows_default(tmp_path):
    pq.write_table(pa.table({"x": pa.array(np.zeros(parquetstream.ROW_GROUP_ROWS + 1, dtype=np.int8))}),
                   tmp_path / "x.parquet")
    metadata = pq.ParquetFile(tmp_path / "x.parquet").metadata
    assert [metadata.row_group(k).num_rows for k in range(metadata.num_row_groups)] == [
        parquetstream.ROW_GROUP_ROWS, 1]


def test_row_group_writer_refuses_groups_write_table_would_not_make(tmp_path):
    schema = pa.schema([("x", pa.int32())])
    with pytest.raises(ValueError, match="row group"), parquetstream.row_group_writer(tmp_path / "x.parquet", schema) as w:
        w.write(pa.table({"x": pa.array([1, 2], pa.int32())}))
        w.write(pa.table({"x": pa.array([3], pa.int32())}))  # a second group after a short one
    assert list(tmp_path.iterdir()) == []


@pytest.mark.benchmark_data
@pytest.mark.parametrize("name", BENCHMARK_FILES)
def test_benchmark_files(tmp_path, name):
    raw = MIRROR / name
    if not raw.is_file():
        pytest.skip(f"{raw} not available (../shared/data or MCLREC_MIRROR)")
    both_engines(tmp_path, raw, "seqtxt", 5, 5, 50, extra_stats={"dataset": name})


@pytest.mark.benchmark_data
def test_benchmark_length_group(tmp_path):
    raw = MIRROR / "Amazon_Sports_and_Outdoors.txt"
    if not raw.is_file():
        pytest.skip(f"{raw} not available (../shared/data or MCLREC_MIRROR)")
    stats = both_engines(tmp_path, raw, "seqtxt", 5, 5, 50, length_group={"min": 6, "max": 8})
    assert (stats["n_users"], stats["n_interactions"]) == (14209, 95564)  # Table 5


# --- errors ------------------------------------------------------------------------------------------


def test_malformed_csv_line_deep_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BLOCK_BYTES", 4096)  # the bad line is many blocks in
    raw = tmp_path / "ratings.csv"
    good = "".join(f"u{k % 50},i{k % 30},5.0,{k}\n" for k in range(3000))
    raw.write_text(good + "u1,i2,5.0\n" + good)
    assert both_errors(tmp_path, raw, "amazon-ratings-csv") == (
        f"{raw}, line 3001: expected 4 fields (user,item,rating,timestamp), got 3")
    raw.write_text(good + "u1,,5.0,7\n" + good)
    assert both_errors(tmp_path, raw, "amazon-ratings-csv") == f"{raw}, line 3001: missing field 'item'"
    raw.write_text(good + "u1,i2,5.0,1.5\n")
    assert "line 3001: timestamp '1.5' is not an integer" in both_errors(tmp_path, raw, "amazon-ratings-csv")


def test_malformed_seqtxt_line_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(rawbatches, "CHUNK_BYTES", 64)
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"{k} 1 2 3 4\n" for k in range(1, 60)) + "60 1 x2\n")
    assert both_errors(tmp_path, raw, "seqtxt") == f"{raw}, line 60: id 'x2' is not a positive integer"


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("amazon-reviews-json", '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n{"reviewerID": "A"\n',
     "line 2: invalid JSON"),
    ("yelp-reviews-json", '{"user_id": "u", "business_id": "b", "date": "2019-13-01 00:00:00"}\n',
     "line 1: invalid value '2019-13-01 00:00:00' for field 'date'"),
    ("recbole-inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tsoon\n",
     "line 2: timestamp 'soon' is not a number"),
    ("recbole-inter", "user_id:token\titem_id:token\n", "no interactions"),
    ("amazon-ratings-csv", "", "no interactions (the file is empty)"),
    ("seqtxt", "\n\n", "no interactions (the file is empty)"),
])
def test_other_errors_match_the_in_memory_engine(tmp_path, fmt, text, expected):
    raw = tmp_path / "raw"
    raw.write_text(text)
    assert expected in both_errors(tmp_path, raw, fmt)


def test_kcore_leaving_nothing(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3\n2 2 3 1\n")
    assert both_errors(tmp_path, raw, "seqtxt", (3, 9, 4)) == (
        f"{raw}: no interactions left after k-core filtering (user_k=3, item_k=9)")


def test_unsupported_format_and_engine_are_named(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3\n")
    with pytest.raises(DataError, match="raw format 'parquet' is not supported by the duckdb engine"):
        list(rawbatches.raw_batches(raw, "parquet"))
    with pytest.raises(DataError, match="unknown raw format 'parquet'"):
        preprocess(raw, "parquet", 3, 1, 4, tmp_path / "out", engine="duckdb")
    with pytest.raises(DataError, match="unknown preprocess engine 'spark'; known engines: auto, memory, duckdb"):
        preprocess(raw, "seqtxt", 3, 1, 4, tmp_path / "out", engine="spark")


def test_failed_write_keeps_the_previous_output_and_no_temp_folders(tmp_path, monkeypatch):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3 4\n2 2 3 1 4\n3 4 1 2\n")
    out = tmp_path / "out"
    preprocess(raw, "seqtxt", 3, 1, 4, out, engine="duckdb")
    before = {name: (out / name).read_bytes() for name in OUTPUTS}

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(outofcore, "write_splits", broken)
    with pytest.raises(OSError, match="disk full"):
        preprocess(raw, "seqtxt", 3, 1, 2, out, engine="duckdb")
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.txt"]


# --- engine choice: auto, CLI and params ----------------------------------------------------------------


def test_auto_picks_duckdb_for_large_files(tmp_path, monkeypatch):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3\n")
    assert choose_engine("auto", raw) == "memory"
    assert choose_engine("duckdb", raw) == "duckdb"
    monkeypatch.setattr(preprocess_module, "AUTO_DUCKDB_BYTES", raw.stat().st_size)
    assert choose_engine("auto", raw) == "duckdb"


def test_cli_engine_option_and_params_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"toy": {"source": {"manual": "ask"}, "filename": "toy.txt", "format": "seqtxt",
                                  "preprocess": {"user_k": 3, "item_k": 1, "max_len": 10, "engine": "duckdb"}}}
    del params["study"], params["checkpoints"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    raw = tmp_path / "data/raw/toy/toy.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("1 1 2 3\n2 2 3 1\n")
    calls = []
    real = preprocess_module.choose_engine
    monkeypatch.setattr(preprocess_module, "choose_engine", lambda engine, path: calls.append(engine) or real(engine, path))
    runner = CliRunner()
    assert runner.invoke(app, ["preprocess", "toy"]).exit_code == 0
    assert runner.invoke(app, ["preprocess", "toy", "--engine", "memory"]).exit_code == 0
    assert calls == ["duckdb", "memory"]
    res = runner.invoke(app, ["preprocess", "toy", "--engine", "spark"])
    assert res.exit_code == 1 and "unknown preprocess engine 'spark'" in res.output
    params["datasets"]["toy"]["preprocess"]["engine"] = "spark"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="engine"):
        config.load_params(tmp_path / "params.yaml")


def _raw_text(fmt: str, users: np.ndarray, items: np.ndarray) -> str:
    """These interactions as a raw file of `fmt` (seqtxt: one line per user, in file order)."""
    if fmt == "seqtxt":
        return "".join(f"{u + 1} " + " ".join(str(i + 1) for i in items[users == u]) + "\n" for u in np.unique(users))
    if fmt == "recbole-inter":
        return "user_id:token\titem_id:token\n" + "".join(f"u{u}\ti{i}\n" for u, i in zip(users, items))
    return "".join(f"u{u},i{i},5.0,{i % 7}\n" for u, i in zip(users, items))


@pytest.mark.parametrize("fmt", ["seqtxt", "recbole-inter", "amazon-ratings-csv"])
def test_a_leading_utf8_bom_is_skipped_by_both_engines(tmp_path, fmt):
    text = _raw_text(fmt, *random_interactions(6, 2000, 120, 100))
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # what Windows editors write
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    both_engines(tmp_path / "plain", plain, fmt)
    both_engines(tmp_path / "bom", marked, fmt)
    for name in OUTPUTS[:-1]:  # the parquet files; stats.json names the raw file and its hash
        assert (tmp_path / "plain" / "duckdb" / name).read_bytes() == (tmp_path / "bom" / "duckdb" / name).read_bytes()
