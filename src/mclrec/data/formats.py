"""Read any supported raw format into one interactions DataFrame (user, item, ts) in file order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mclrec.data import records
from mclrec.data.rawio import check_exists, read_bytes
from mclrec.data.recbole_inter import inter_fields, read_recbole_inter
from mclrec.data.seqtxt import parse_seqtxt
from mclrec.errors import DataError

FORMATS = ("seqtxt", "amazon-ratings-csv", "amazon-reviews-json", "yelp-reviews-json", "recbole-inter")


def read_raw(path: Path, fmt: str) -> pd.DataFrame:
    """Read a raw file: columns user (str), item (str), ts (int64), one row per interaction."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown raw format {fmt!r}; known formats: {', '.join(FORMATS)}")
    check_exists(path)
    table = _READERS[fmt](path)
    if table.num_rows == 0:
        raise DataError(f"{path}: no interactions (the file is empty)")
    return table.to_pandas()


def _read_seqtxt(path: Path) -> pa.Table:
    """seqtxt: ts is the interaction's position in the file, so file order is chronological."""
    users, items = parse_seqtxt(read_bytes(path), path)
    return pa.table(
        {
            "user": pa.array(users).cast(pa.string()),
            "item": pa.array(items).cast(pa.string()),
            "ts": pa.array(np.arange(len(items), dtype=np.int64)),
        }
    )


def time_order(path: Path, fmt: str) -> str:
    """What orders each user's interactions: "timestamp", or "file order" (seqtxt, whose lines are sequences, and a
    .inter file without a timestamp field, as RecBole takes it)."""
    if fmt == "seqtxt" or (fmt == "recbole-inter" and "timestamp" not in inter_fields(path)):
        return "file order"
    return "timestamp"


_READERS = {
    "seqtxt": _read_seqtxt,
    "amazon-ratings-csv": records.read_ratings_csv,
    "amazon-reviews-json": records.read_amazon_json,
    "yelp-reviews-json": records.read_yelp_json,
    "recbole-inter": read_recbole_inter,
}
