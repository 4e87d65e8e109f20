"""Chronological ordering, id remapping, per-user sequences and the leave-one-out split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from mclrec.errors import DataError

SPLIT_SCHEMA = pa.schema([("user", pa.int32()), ("input", pa.list_(pa.int32())), ("target", pa.int32())])
MIN_LENGTH = 3


def order_chronologically(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by (ts, file position): a stable sort on ts keeps the file order of equal timestamps."""
    order = np.argsort(df["ts"].to_numpy(), kind="stable")
    return pd.DataFrame({name: _take(df[name], order) for name in df.columns})


def _take(column: pd.Series, order: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """Reorder a column's values; plain numpy indexing for numpy-backed columns (the fast path)."""
    return column.to_numpy()[order] if isinstance(column.dtype, np.dtype) else column.array.take(order)


def remap_ids(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Index, pd.Index]:
    """Number users and items 1..N by first appearance.

    Returns (user ids, item ids, original user label per id, original item label per id).
    """
    users, user_originals = pd.factorize(df["user"], sort=False)
    items, item_originals = pd.factorize(df["item"], sort=False)
    return (users + 1).astype(np.int32), (items + 1).astype(np.int32), user_originals, item_originals


def id_table(column: str, originals: pd.Index | np.ndarray) -> pa.Table:
    """Table mapping model id 1..N (`column`, int32) to the original id (string)."""
    original = pa.array(pd.Index(originals).astype("str").array)
    return pa.table(
        {
            column: pa.array(np.arange(1, len(original) + 1, dtype=np.int32)),
            "original_id": original.cast(pa.string()),
        }
    )


def build_sequences(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR sequences: offsets int64 [n_users+1] and flat items, chronological within each user (ids 1..n_users)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=n_users + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, np.asarray(items)[order].astype(np.int32)


def leave_one_out(offsets: np.ndarray, items: np.ndarray, max_len: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Train (full i1..i(L-3) -> i(L-2)), valid (last max_len of i1..i(L-2) -> i(L-1)), test (.. -> iL)."""
    if max_len < 1:
        raise DataError(f"max_len must be at least 1, got {max_len}")
    lengths = np.diff(offsets)
    short = np.flatnonzero(lengths < MIN_LENGTH)
    if short.size:
        user, n = short[0] + 1, lengths[short[0]]
        raise DataError(f"user {user} has {n} interactions; leave-one-out needs {MIN_LENGTH}")
    zeros = np.zeros_like(lengths)
    train = _split_table(offsets, items, zeros, lengths - 3)
    valid = _split_table(offsets, items, np.maximum(zeros, lengths - 2 - max_len), lengths - 2)
    test = _split_table(offsets, items, np.maximum(zeros, lengths - 1 - max_len), lengths - 1)
    return train, valid, test


def _split_table(offsets: np.ndarray, items: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.Table:
    """One row per user: input = the user's items at positions lo..hi-1, target = the item at position hi."""
    starts = offsets[:-1]
    counts = hi - lo
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    gather = np.repeat(starts + lo - new_offsets[:-1], counts) + np.arange(new_offsets[-1])
    inputs = pa.ListArray.from_arrays(
        pa.array(new_offsets.astype(np.int32)), pa.array(items[gather].astype(np.int32))
    )
    users = np.arange(1, len(starts) + 1, dtype=np.int32)
    return pa.Table.from_arrays(
        [pa.array(users), inputs, pa.array(items[starts + hi].astype(np.int32))], schema=SPLIT_SCHEMA
    )
