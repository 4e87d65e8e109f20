"""Iterative k-core filtering of an interactions table."""

from __future__ import annotations

import numpy as np
import pandas as pd


def kcore_filter(df: pd.DataFrame, user_k: int, item_k: int) -> pd.DataFrame:
    """Drop users with < user_k and items with < item_k interactions, repeatedly, until stable; keeps row order."""
    users, _ = pd.factorize(df["user"])
    items, _ = pd.factorize(df["item"])
    keep = kcore_mask(users, items, user_k, item_k)
    return df if keep.all() else df[keep]


def kcore_mask(users: np.ndarray, items: np.ndarray, user_k: int, item_k: int) -> np.ndarray:
    """Boolean mask of the rows that survive k-core, given dense non-negative user and item codes."""
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    rows = np.arange(len(users))
    while rows.size:
        u, i = users[rows], items[rows]
        ok = (np.bincount(u, minlength=n_users)[u] >= user_k) & (np.bincount(i, minlength=n_items)[i] >= item_k)
        if ok.all():
            break
        rows = rows[ok]
    keep = np.zeros(len(users), dtype=bool)
    keep[rows] = True
    return keep
