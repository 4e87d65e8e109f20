"""The recbole-inter raw format: RecBole atomic .inter files in, the same splits as the equivalent seqtxt."""

from pathlib import Path

import pytest

from mclrec.data.formats import read_raw
from mclrec.data.preprocess import preprocess
from mclrec.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "recbole" / "toy.inter"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = ("train", "valid", "test", "items", "users")


def test_fixture_is_read_in_timestamp_order_with_ties_in_file_order():
    df = read_raw(FIXTURE, "recbole-inter")
    rows = [line.split("\t") for line in FIXTURE.read_text().splitlines()[1:]]
    assert df["user"].tolist() == [r[0] for r in rows] and df["item"].tolist() == [r[1] for r in rows]
    stamps = [float(r[3]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (stamps[i], i))  # the loop version of the stable order
    ranks = df["ts"].tolist()
    assert sorted(range(len(rows)), key=lambda i: (ranks[i], i)) == order


def test_columns_in_any_order_and_no_timestamp_means_file_order(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("rating:float\titem_id:token\tuser_id:token\n5\ta\tu1\n3\tb\tu2\n4\ta\tu2\n")
    df = read_raw(path, "recbole-inter")
    assert df["user"].tolist() == ["u1", "u2", "u2"] and df["item"].tolist() == ["a", "b", "a"]
    assert df["ts"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("text,message", [
    ("user_id:token\titem_id\n", "line 1: header field 2 'item_id' is not name:type"),
    ("user_id:token\tstamp:float\n", "line 1: the header has no item_id field"),
    ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1.0\nu1\ti2\tlater\n", "line 3: timestamp 'later' is not a number"),
    ("user_id:token\titem_id:token\nu1\ti1\nu2\n", "line 3: expected 2 tab-separated fields"),
    ("user_id:token\titem_id:token\nu1\ti1\n\ti2\n", "line 3: empty user_id"),
    ("", "line 1: empty"),
    ("user_id:token\titem_id:token_seq\nu1\ti1 i2\n", "line 1: item_id:token_seq is a sequence type"),
    ("user_id:token_seq\titem_id:token\ttimestamp:float_seq\n", "user_id:token_seq, timestamp:float_seq are sequence types"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.inter"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_raw(path, "recbole-inter")
    assert str(path) in str(info.value)


@pytest.mark.benchmark_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (benchmark datasets) is absent")
def test_inter_form_of_beauty_gives_the_same_splits_as_its_txt_form(tmp_path):
    txt = SHARED_DATA / "Amazon_Beauty.txt"
    inter = tmp_path / "Amazon_Beauty.inter"
    with open(txt) as src, open(inter, "w") as out:  # the RecBole atomic form: one row per interaction, in order
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        position = 0
        for line in src:
            user, *items = line.split()
            for item in items:
                out.write(f"{user}\t{item}\t{position}.0\n")
                position += 1
    a = preprocess(txt, "seqtxt", 5, 5, 50, tmp_path / "txt")
    b = preprocess(inter, "recbole-inter", 5, 5, 50, tmp_path / "inter")
    assert (b["n_users"], b["n_items"], b["n_interactions"]) == (22363, 12101, 198502)
    assert {k: a[k] for k in ("n_users", "n_items", "n_interactions", "avg_length")} == \
           {k: b[k] for k in ("n_users", "n_items", "n_interactions", "avg_length")}
    for name in SPLITS:
        assert (tmp_path / "txt" / f"{name}.parquet").read_bytes() == (tmp_path / "inter" / f"{name}.parquet").read_bytes()
