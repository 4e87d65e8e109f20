"""Iterative k-core filtering of an interactions table."""

from __future__ import annotations

import numpy as np
import pandas as pd


def kcore_filter(df: pd.DataFrame, user_k: int, item_k: int) -> pd.DataFrame:
    """Drop users with < user_k and items with < item_k interactions, repeatedly until stable; keeps row order."""
    keep = kcore_mask(dense_codes(df["user"]), dense_codes(df["item"]), user_k, item_k)
    return df if keep.all() else df[keep]


def dense_codes(column: pd.Series) -> np.ndarray:
    """Non-negative integer codes for a column: the values themselves if already small non-negative ints."""
    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "iu":
        values = column.to_numpy()
        if values.size == 0 or (values.min() >= 0 and values.max() <= 2 * values.size):
            return values
    return pd.factorize(column)[0]


def kcore_mask(users: np.ndarray, items: np.ndarray, user_k: int, item_k: int) -> np.ndarray:
    """Boolean mask of the rows that survive k-core, given non-negative integer user and item codes.

    Counts are computed once and then decremented by the rows removed in each round.
    """
    user_count = np.bincount(users)
    item_count = np.bincount(items)
    alive = np.ones(len(users), dtype=bool)
    while True:
        dead = alive & ((user_count < user_k)[users] | (item_count < item_k)[items])
        if not dead.any():
            return alive
        alive &= ~dead
        user_count -= np.bincount(users[dead], minlength=len(user_count))
        item_count -= np.bincount(items[dead], minlength=len(item_count))
