"""The preprocess stage: raw file -> k-core -> chronological leave-one-out split -> Parquet + stats.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mclrec.data.atomicdir import atomic_directory
from mclrec.data.formats import FORMATS, read_raw
from mclrec.data.kcore import kcore_filter
from mclrec.data.split import (
    MIN_LENGTH,
    build_sequences,
    id_table,
    leave_one_out,
    order_chronologically,
    remap_ids,
)
from mclrec.errors import DataError
from mclrec.io import sha256_file, write_json, write_parquet

SPLIT_FILES = ("train", "valid", "test", "items", "users")


def preprocess(
    raw_path: Path,
    fmt: str,
    user_k: int,
    item_k: int,
    max_len: int,
    out_dir: Path,
    extra_stats: dict | None = None,
    *,
    length_group: dict | None = None,
    timings: dict[str, float] | None = None,
) -> dict:
    """Build the processed dataset in `out_dir`; return its stats (also written to stats.json).

    `length_group` ({"min": a, "max": b or None}) keeps only the users whose k-core sequence length lies in
    [a, b], renumbered 1..U in their order, with the whole k-core item catalogue (the paper's Table 5 groups).
    `timings`, when given, receives the seconds spent per stage (read, hash, kcore, split, write).
    """
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    _check_params(fmt, user_k, item_k, max_len)
    lap = _stopwatch(timings)
    raw = read_raw(raw_path, fmt)
    coded, user_labels, item_labels = _encode(raw)
    lap("read")
    raw_sha256 = sha256_file(raw_path)
    lap("hash")
    kept = kcore_filter(coded, user_k, item_k)
    if kept.empty:
        raise DataError(
            f"{raw_path}: no interactions left after k-core filtering (user_k={user_k}, item_k={item_k})"
        )
    lap("kcore")
    users, items, user_codes, item_codes = remap_ids(order_chronologically(kept))
    offsets, flat = build_sequences(users, items, len(user_codes))
    if length_group is not None:
        offsets, flat, user_codes = select_lengths(offsets, flat, user_codes, length_group, raw_path)
    train, valid, test = leave_one_out(offsets, flat, max_len)
    tables = {
        "train": train,
        "valid": valid,
        "test": test,
        "items": id_table("item", item_labels.take(np.asarray(item_codes))),
        "users": id_table("user", user_labels.take(np.asarray(user_codes))),
    }
    stats = {
        **_raw_stats(coded, raw_path, fmt, raw_sha256),
        **dataset_stats(offsets, len(item_codes), max_len),
        "user_k": user_k,
        "item_k": item_k,
        **({"length_group": dict(length_group)} if length_group is not None else {}),
    }
    stats.update(_checked_extra(extra_stats or {}, stats))
    lap("split")
    _write(out_dir, tables, stats)
    lap("write")
    return stats


def select_lengths(offsets: np.ndarray, flat: np.ndarray, user_codes: np.ndarray, group: dict,
                   source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The users whose sequence length is in [group["min"], group["max"]] (max None: no bound), in order."""
    lengths = np.diff(offsets)
    low, high = group["min"], group.get("max")
    keep = (lengths >= low) & (lengths <= (high if high is not None else lengths.max()))
    if not keep.any():
        raise DataError(f"{source}: no user has a sequence length in [{low}, {high if high is not None else 'inf'}]")
    per_item = np.repeat(keep, lengths)
    new_offsets = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(offsets.dtype)
    return new_offsets, flat[per_item], np.asarray(user_codes)[keep]


def dataset_stats(offsets: np.ndarray, n_items: int, max_len: int) -> dict[str, Any]:
    """Size statistics of the per-user sequences (offsets of the CSR layout)."""
    lengths = np.diff(offsets)
    n_users, n_inter = len(lengths), int(offsets[-1])
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_inter,
        "avg_length": n_inter / n_users,
        "sparsity": 1.0 - n_inter / (n_users * n_items),
        "min_length": int(lengths.min()),
        "max_length": int(lengths.max()),
        "max_len": max_len,
        "n_train_instances": int((lengths - 3).sum()),
    }


def _check_params(fmt: str, user_k: int, item_k: int, max_len: int) -> None:
    """Reject parameters that cannot give a valid split."""
    if fmt not in FORMATS:
        raise DataError(f"unknown raw format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if user_k < MIN_LENGTH:
        raise DataError(f"user_k must be at least {MIN_LENGTH} (leave-one-out needs 3 per user), got {user_k}")
    if item_k < 1:
        raise DataError(f"item_k must be at least 1, got {item_k}")
    if max_len < 1:
        raise DataError(f"max_len must be at least 1, got {max_len}")


def _checked_extra(extra: dict, stats: dict) -> dict:
    """`extra` if it does not overwrite a computed statistic."""
    clash = sorted(set(extra) & set(stats))
    if clash:
        raise ValueError(f"extra_stats may not overwrite computed stats: {', '.join(clash)}")
    return extra


def _encode(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """Replace string ids by integer codes once (hashing strings is the costly part); keep the labels."""
    users, user_labels = pd.factorize(raw["user"], sort=False)
    items, item_labels = pd.factorize(raw["item"], sort=False)
    coded = pd.DataFrame({"user": users, "item": items, "ts": raw["ts"].to_numpy()})
    return coded, user_labels, item_labels


def _raw_stats(coded: pd.DataFrame, raw_path: Path, fmt: str, raw_sha256: str) -> dict[str, Any]:
    """Provenance and size of the raw input."""
    return {
        "format": fmt,
        "raw_file": raw_path.name,
        "raw_sha256": raw_sha256,
        "n_raw_interactions": len(coded),
        "n_raw_users": int(coded["user"].max()) + 1,
        "n_raw_items": int(coded["item"].max()) + 1,
    }


def _write(out_dir: Path, tables: dict[str, pa.Table], stats: dict) -> None:
    """Write all Parquet files and stats.json into `out_dir` atomically."""
    with atomic_directory(out_dir) as tmp:
        for name in SPLIT_FILES:
            write_parquet(tmp / f"{name}.parquet", tables[name])
        write_json(tmp / "stats.json", stats)


def _stopwatch(sink: dict[str, float] | None):
    """A function that records the seconds since its previous call under a stage name."""
    last = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        if sink is not None:
            sink[stage] = now - last[0]
        last[0] = now

    return lap
