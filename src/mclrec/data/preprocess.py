"""The preprocess stage: raw file -> k-core -> chronological leave-one-out split -> Parquet + stats.json.

Two engines give byte-identical outputs: `memory` (pandas/numpy, the whole file in memory: about 170 bytes of
RAM per raw interaction) and `duckdb` (outofcore.py: the interactions in a DuckDB database on disk under a
memory limit, for raw files larger than RAM). `auto` picks duckdb for raw files of AUTO_DUCKDB_BYTES or more.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mclrec.data.atomicdir import atomic_directory
from mclrec.data.formats import FORMATS, read_raw, time_order
from mclrec.data.rawio import check_exists
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
ENGINES = ("auto", "memory", "duckdb")
# 1 GiB of raw file: about 25M ratings-CSV lines, which take ~4 GiB in memory (more than the duckdb engine's
# whole budget); below it the in-memory engine is faster. A gzip file counts by its compressed size.
AUTO_DUCKDB_BYTES = 1 << 30
MIN_MAX_LEN = 2  # params.schema.yaml's minimum for preprocess.max_len, so the CLI's --max-len agrees with it


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
    engine: str = "auto",
    memory_limit: str | None = None,
    expected_sha256: str | None = None,
    declared_in: str | None = None,
) -> dict:
    """Build the processed dataset in `out_dir`; return its stats (also written to stats.json).

    `length_group` ({"min": a, "max": b or None}) keeps only the users whose k-core sequence length lies in
    [a, b], renumbered 1..U in their order, with the whole k-core item catalogue (the paper's Table 5 groups).
    `timings`, when given, receives the seconds spent per stage (hash, read, kcore, split, write).
    `engine` is auto, memory or duckdb (see the module docstring; same outputs); `memory_limit` caps the duckdb
    engine's own memory (a DuckDB size such as "2GB"; default outofcore.DEFAULT_MEMORY_LIMIT).
    `expected_sha256`: the raw file's declared checksum (`declared_in` names where it is declared); another file is
    a DataError before the file is read or anything is written.
    """
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    _check_params(fmt, user_k, item_k, max_len)
    check_exists(raw_path)
    lap = _stopwatch(timings)
    raw_sha256 = _checked_sha256(raw_path, expected_sha256, declared_in)
    lap("hash")
    if choose_engine(engine, raw_path) == "duckdb":
        return _preprocess_duckdb(raw_path, fmt, (user_k, item_k, max_len), out_dir, extra_stats or {},
                                  length_group, lap, memory_limit, raw_sha256)
    raw = read_raw(raw_path, fmt)
    coded, user_labels, item_labels = _encode(raw)
    lap("read")
    kept = kcore_filter(coded, user_k, item_k)
    if kept.empty:
        raise _nothing_left(raw_path, user_k, item_k)
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
    raw_counts = (len(coded), int(coded["user"].max()) + 1, int(coded["item"].max()) + 1)
    stats = _stats(_raw_stats(raw_counts, raw_path, fmt, raw_sha256), offsets, len(item_codes),
                   (user_k, item_k, max_len), length_group, extra_stats or {})
    lap("split")
    _write(out_dir, tables, stats)
    lap("write")
    return stats


def _checked_sha256(raw_path: Path, expected: str | None, declared_in: str | None = None) -> str:
    """The raw file's sha256; DataError if it is not the declared one."""
    actual = sha256_file(raw_path)
    if expected is not None and actual != expected.lower():
        where = declared_in or "the dataset's source.sha256"
        raise DataError(f"{raw_path}: sha256 is {actual} but {where} is {expected}: this is not the declared file "
                        "(replace it, or correct that checksum if this file is the right one); nothing was written")
    return actual


def choose_engine(engine: str, raw_path: Path) -> str:
    """memory or duckdb: `engine` itself, or for auto by the raw file's size (AUTO_DUCKDB_BYTES)."""
    if engine not in ENGINES:
        raise DataError(f"unknown preprocess engine {engine!r}; known engines: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    return "duckdb" if raw_path.is_file() and raw_path.stat().st_size >= AUTO_DUCKDB_BYTES else "memory"


def _preprocess_duckdb(raw_path: Path, fmt: str, ks: tuple[int, int, int], out_dir: Path, extra_stats: dict,
                       length_group: dict | None, lap, memory_limit: str | None, raw_sha256: str) -> dict:
    """The duckdb engine (outofcore.py): same stages, same outputs, the interactions kept on disk."""
    from mclrec.data import outofcore
    from mclrec.data.rawbatches import raw_batches

    user_k, item_k, max_len = ks
    with outofcore.workspace(out_dir, memory_limit or outofcore.DEFAULT_MEMORY_LIMIT) as work:
        counts = work.load(raw_batches(raw_path, fmt))
        lap("read")
        if work.kcore(user_k, item_k) == 0:
            raise _nothing_left(raw_path, user_k, item_k)
        lap("kcore")
        lengths, n_items = work.number()
        if length_group is not None:
            keep = length_mask(lengths, length_group, raw_path)
            work.keep_users(keep)
            lengths = lengths[keep]
        check_leave_one_out(lengths)
        raw_counts = (counts.n_interactions, counts.n_users, counts.n_items)
        stats = _stats(_raw_stats(raw_counts, raw_path, fmt, raw_sha256),
                       np.concatenate([[0], np.cumsum(lengths)]), n_items, ks, length_group, extra_stats)
        lap("split")
        with atomic_directory(out_dir) as tmp:
            work.write(tmp, lengths, max_len)
            write_json(tmp / "stats.json", stats)
    lap("write")
    return stats


def select_lengths(offsets: np.ndarray, flat: np.ndarray, user_codes: np.ndarray, group: dict,
                   source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The users whose sequence length is in [group["min"], group["max"]] (max None: no bound), in order."""
    lengths = np.diff(offsets)
    keep = length_mask(lengths, group, source)
    per_item = np.repeat(keep, lengths)
    new_offsets = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(offsets.dtype)
    return new_offsets, flat[per_item], np.asarray(user_codes)[keep]


def length_mask(lengths: np.ndarray, group: dict, source: Path) -> np.ndarray:
    """Which users' lengths lie in [group["min"], group["max"]] (max None: no bound); DataError if none."""
    low, high = group["min"], group.get("max")
    keep = (lengths >= low) & (lengths <= (high if high is not None else lengths.max()))
    if not keep.any():
        raise DataError(f"{source}: no user has a sequence length in [{low}, {high if high is not None else 'inf'}]")
    return keep


def check_leave_one_out(lengths: np.ndarray) -> None:
    """split.leave_one_out's check, on the lengths alone: every user needs MIN_LENGTH interactions."""
    short = np.flatnonzero(lengths < MIN_LENGTH)
    if short.size:
        raise DataError(f"user {short[0] + 1} has {lengths[short[0]]} interactions; leave-one-out needs {MIN_LENGTH}")


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
    if max_len < MIN_MAX_LEN:
        raise DataError(f"max_len must be at least {MIN_MAX_LEN} (as params.yaml's preprocess.max_len), got {max_len}")


def _nothing_left(raw_path: Path, user_k: int, item_k: int) -> DataError:
    return DataError(f"{raw_path}: no interactions left after k-core filtering (user_k={user_k}, item_k={item_k})")


def _stats(raw: dict, offsets: np.ndarray, n_items: int, ks: tuple[int, int, int], length_group: dict | None,
           extra: dict) -> dict[str, Any]:
    """stats.json: raw provenance, dataset statistics, the parameters and the caller's extra entries."""
    user_k, item_k, max_len = ks
    stats = {
        **raw,
        **dataset_stats(offsets, n_items, max_len),
        "user_k": user_k,
        "item_k": item_k,
        **({"length_group": dict(length_group)} if length_group is not None else {}),
    }
    stats.update(_checked_extra(extra, stats))
    return stats


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


def _raw_stats(counts: tuple[int, int, int], raw_path: Path, fmt: str, raw_sha256: str) -> dict[str, Any]:
    """Provenance and size (interactions, distinct users, distinct items) of the raw input."""
    n_inter, n_users, n_items = counts
    return {
        "format": fmt,
        "time_order": time_order(raw_path, fmt),
        "raw_file": raw_path.name,
        "raw_sha256": raw_sha256,
        "n_raw_interactions": n_inter,
        "n_raw_users": n_users,
        "n_raw_items": n_items,
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
