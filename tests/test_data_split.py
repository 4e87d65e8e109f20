"""k-core, chronological order, id remapping and the leave-one-out split on hand-computed examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mclrec.data.formats import read_raw
from mclrec.data.kcore import kcore_filter
from mclrec.data.split import (
    SPLIT_SCHEMA,
    build_sequences,
    id_table,
    leave_one_out,
    order_chronologically,
    remap_ids,
)
from mclrec.errors import DataError

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH_FILES = ("Amazon_Beauty.txt", "Amazon_Sports_and_Outdoors.txt", "Yelp.txt")


def frame(pairs: list[tuple[str, str]], ts: list[int] | None = None) -> pd.DataFrame:
    """An interactions DataFrame from (user, item) pairs."""
    users, items = zip(*pairs)
    return pd.DataFrame({"user": list(users), "item": list(items), "ts": ts or list(range(len(pairs)))})


def test_kcore_iterates_until_stable_and_keeps_order():
    # Round 1 drops item c (1 interaction); that leaves u3 with 1 interaction, dropped in round 2;
    # u4's repeated pair (d, d) counts twice and survives.
    df = frame(
        [("u1", "a"), ("u3", "c"), ("u2", "a"), ("u1", "b"), ("u3", "a"), ("u2", "b"), ("u4", "d"), ("u4", "d")]
    )
    out = kcore_filter(df, user_k=2, item_k=2)
    assert list(zip(out["user"], out["item"])) == [
        ("u1", "a"), ("u2", "a"), ("u1", "b"), ("u2", "b"), ("u4", "d"), ("u4", "d")
    ]


def test_kcore_cascade_needs_three_rounds():
    # user_k=2, item_k=2. Round 1: item z (1). Round 2: user w (only y left). Round 3: item y (only x's).
    df = frame([("v", "p"), ("v", "q"), ("x", "p"), ("x", "q"), ("w", "z"), ("w", "y"), ("x", "y")])
    out = kcore_filter(df, user_k=2, item_k=2)
    assert list(zip(out["user"], out["item"])) == [("v", "p"), ("v", "q"), ("x", "p"), ("x", "q")]


def test_kcore_can_remove_everything():
    assert kcore_filter(frame([("u", "a"), ("v", "b")]), 2, 2).empty


def test_order_chronologically_ties_keep_file_order():
    df = frame([("u1", "a"), ("u2", "b"), ("u1", "c"), ("u2", "d"), ("u1", "e")], ts=[5, 3, 5, 3, 1])
    out = order_chronologically(df)
    assert list(out["item"]) == ["e", "b", "d", "a", "c"]


def test_remap_ids_by_first_appearance_in_chronological_order():
    df = order_chronologically(frame([("x", "i9"), ("y", "i7"), ("x", "i7"), ("z", "i8")], ts=[30, 10, 20, 10]))
    users, items, user_orig, item_orig = remap_ids(df)
    # chronological: (y,i7,10) (z,i8,10) (x,i7,20) (x,i9,30)
    assert users.tolist() == [1, 2, 3, 3] and items.tolist() == [1, 2, 1, 3]
    assert list(user_orig) == ["y", "z", "x"] and list(item_orig) == ["i7", "i8", "i9"]
    table = id_table("item", item_orig)
    assert table.schema == pa.schema([("item", pa.int32()), ("original_id", pa.string())])
    assert table.to_pylist()[2] == {"item": 3, "original_id": "i9"}


def test_build_sequences_groups_users_keeping_time_order():
    offsets, flat = build_sequences(np.array([2, 1, 2, 1, 1]), np.array([10, 20, 30, 40, 50]), n_users=2)
    assert offsets.tolist() == [0, 3, 5] and flat.tolist() == [20, 40, 50, 10, 30]


def test_leave_one_out_hand_example():
    # user 1: items 1..6; user 2: 7, 8, 9 (the minimum length)
    offsets, flat = np.array([0, 6, 9]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    train, valid, test = leave_one_out(offsets, flat, max_len=2)
    for table in (train, valid, test):
        assert table.schema == SPLIT_SCHEMA
    assert train.to_pylist() == [{"user": 1, "input": [1, 2, 3], "target": 4}, {"user": 2, "input": [], "target": 7}]
    assert valid.to_pylist() == [{"user": 1, "input": [3, 4], "target": 5}, {"user": 2, "input": [7], "target": 8}]
    assert test.to_pylist() == [{"user": 1, "input": [4, 5], "target": 6}, {"user": 2, "input": [7, 8], "target": 9}]


def test_leave_one_out_rejects_short_users():
    with pytest.raises(DataError, match="user 2 has 2 interactions"):
        leave_one_out(np.array([0, 3, 5]), np.arange(1, 6), max_len=5)


@pytest.mark.benchmark_data
@pytest.mark.parametrize("name", BENCH_FILES)
def test_remap_reproduces_benchmark_file_ids(name):
    path = BENCH / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    df = order_chronologically(read_raw(path, "seqtxt"))
    users, items, user_orig, item_orig = remap_ids(df)
    assert np.array_equal(users, df["user"].astype(np.int64).to_numpy())
    assert np.array_equal(items, df["item"].astype(np.int64).to_numpy())
    assert list(item_orig[:3]) == ["1", "2", "3"]
