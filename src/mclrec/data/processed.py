"""Loading and validating a processed dataset; building padded model inputs from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mclrec.errors import DataError
from mclrec.paths import PROCESSED_FILES

SPLITS = ("train", "valid", "test")
REQUIRED = PROCESSED_FILES  # what a processed dataset folder holds (mclrec.paths: the one list)


@dataclass
class Split:
    """One split in CSR layout: input of user k is items[offsets[k]:offsets[k+1]], its target targets[k]."""

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    targets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Input length per user."""
        return np.diff(self.offsets)


@dataclass
class ProcessedData:
    """A validated processed dataset: three splits plus their sizes and stats."""

    n_users: int
    n_items: int
    max_len: int
    train: Split
    valid: Split
    test: Split
    stats: dict[str, Any] = field(default_factory=dict)
    catalogue_sha256: str | None = None  # what a checkpoint's item rows mean: see catalogue_fingerprint


def load_processed(directory: Path) -> ProcessedData:
    """Load `directory` (output of preprocess) and check it is complete and self-consistent."""
    directory = Path(directory)
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        # data/processed/<dataset> is named after its dataset; another folder (--data-dir) is not
        command = (f"mclrec preprocess {directory.name}" if directory.parent.name == "processed"
                   else f"mclrec preprocess DATASET --out {directory}")
        raise DataError(f"{directory / missing[0]}: processed file missing; run `{command}` first")
    stats = _read_stats(directory / "stats.json")
    splits = {name: _read_split(directory / f"{name}.parquet") for name in SPLITS}
    data = ProcessedData(
        n_users=stats["n_users"], n_items=stats["n_items"], max_len=stats["max_len"], stats=stats, **splits
    )
    _validate(directory, data)
    data.catalogue_sha256 = catalogue_fingerprint(directory / "items.parquet")
    return data


def catalogue_fingerprint(items_path: Path) -> str:
    """sha256 of the items' original ids in model-id order (one per line).

    A checkpoint's item-embedding rows are these items, so two datasets with the same fingerprint can share
    checkpoints (a length group keeps its parent's catalogue) and two without cannot, even with equal item counts.
    """
    try:
        column = pq.read_table(items_path, columns=["original_id"]).column("original_id")
    except (pa.ArrowException, KeyError) as exc:
        raise DataError(f"{items_path}: no readable column 'original_id' ({exc})") from None
    ids = pc.cast(column, pa.string()).to_pylist()
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def space_padded_ids(directory: Path) -> dict[str, int]:
    """How many user and item original ids start or end with whitespace ("users"/"items" -> count).

    CSV fields are taken as written, so `u1, i1` makes the item " i1"; preprocess reports such ids, which are
    usually a file written with ", " separators rather than ids meant to hold spaces.
    """
    counts = {}
    for kind in ("users", "items"):
        ids = pc.cast(pq.read_table(directory / f"{kind}.parquet", columns=["original_id"]).column(0), pa.string())
        counts[kind] = int(pc.sum(pc.not_equal(pc.utf8_trim_whitespace(ids), ids)).as_py() or 0)
    return counts


def prefix_instances(split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All training prefixes: (inputs [N, max_len] right-padded, lengths, targets, users), by user then t.

    With s = input + [target] per user, instance t = 1..len(s)-1 predicts s[t] from s[:t]; instance
    number k ends at flat input position k, so everything is index arithmetic on the CSR arrays.
    """
    n = len(split.items)
    owner = np.repeat(np.arange(len(split.users)), split.lengths)
    pos = np.arange(n) - split.offsets[owner]
    is_last = np.arange(n) == split.offsets[owner + 1] - 1
    next_item = split.items[np.minimum(np.arange(n) + 1, max(n - 1, 0))]
    targets = np.where(is_last, split.targets[owner], next_item).astype(np.int64)
    lengths = np.minimum(pos + 1, max_len).astype(np.int64)
    inputs = _window(split.items, np.arange(n) + 1, lengths, max_len)
    return inputs, lengths, targets, split.users[owner].astype(np.int64)


def sequence_instances(split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per user with a non-empty input, for sequence-to-sequence training (the original SASRec):
    (inputs [U, max_len], lengths, next items [U, max_len], users).

    With s = input + [target], the row holds the last max_len items of s[:-1] and, aligned with them, the
    next items s[1:]: input position t predicts next[t]. Both are right-padded with 0.
    """
    inputs, lengths, targets, users = padded_inputs(split, max_len)
    keep = lengths > 0
    inputs, lengths, targets, users = inputs[keep], lengths[keep], targets[keep], users[keep]
    nexts = np.zeros_like(inputs)
    nexts[:, :-1] = inputs[:, 1:]
    nexts[np.arange(len(inputs)), lengths - 1] = targets
    return inputs, lengths, nexts, users


def padded_inputs(split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per user: (inputs [U, max_len] = last max_len items right-padded, lengths, targets, users)."""
    lengths = np.minimum(split.lengths, max_len).astype(np.int64)
    inputs = _window(split.items, split.offsets[1:], lengths, max_len)
    return inputs, lengths, split.targets.astype(np.int64), split.users.astype(np.int64)


def _window(items: np.ndarray, ends: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Rows holding items[end-length:end] left-aligned, padded with 0 on the right."""
    cols = np.arange(max_len)
    idx = (ends - lengths)[:, None] + cols[None, :]
    valid = cols[None, :] < lengths[:, None]
    if len(items) == 0:
        return np.zeros(idx.shape, dtype=np.int64)
    return np.where(valid, items[np.clip(idx, 0, len(items) - 1)], 0).astype(np.int64)


def _read_stats(path: Path) -> dict[str, Any]:
    """Parse stats.json and check the keys the loader relies on."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(stats, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(stats).__name__}")
    for key in ("n_users", "n_items", "n_interactions", "max_len"):
        if not isinstance(stats.get(key), int):
            raise DataError(f"{path}: key {key!r} missing or not an integer")
    return stats


def _read_split(path: Path) -> Split:
    """Read one split Parquet file into CSR numpy arrays; DataError on missing columns or null values."""
    try:
        table = pq.read_table(path)
        inputs = table.column("input").combine_chunks()
        columns = {"user": table.column("user"), "input": inputs, "input item": inputs.flatten(),
                   "target": table.column("target")}
        offsets = inputs.offsets.to_numpy().astype(np.int64)
    except (pa.ArrowException, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: not a valid split table ({exc})") from None
    nulls = [name for name, column in columns.items() if column.null_count]
    if nulls:
        raise DataError(f"{path}: null values in {', '.join(nulls)}")
    return Split(
        users=columns["user"].to_numpy().astype(np.int64),
        offsets=offsets - offsets[0],
        items=columns["input item"].to_numpy().astype(np.int64),
        targets=columns["target"].to_numpy().astype(np.int64),
    )


def _validate(directory: Path, data: ProcessedData) -> None:
    """Cross-check the splits, id tables and stats.json; DataError naming the file and the mismatch."""
    n_users, n_items = data.n_users, data.n_items
    for name in SPLITS:
        split: Split = getattr(data, name)
        path = directory / f"{name}.parquet"
        if not np.array_equal(split.users, np.arange(1, n_users + 1)):
            raise DataError(f"{path}: users are not exactly 1..{n_users} in order (stats.json n_users={n_users})")
        for what, ids in (("input", split.items), ("target", split.targets)):
            if ids.size and (ids.min() < 1 or ids.max() > n_items):
                raise DataError(f"{path}: {what} item ids outside 1..{n_items} (stats.json n_items={n_items})")
    for name, key, expected in (("items", "item", n_items), ("users", "user", n_users)):
        _validate_id_table(directory / f"{name}.parquet", key, expected)
    _validate_lengths(directory, data)
    _validate_chain(directory, data)


def _validate_id_table(path: Path, key: str, expected: int) -> None:
    """items.parquet / users.parquet: exactly `expected` rows whose `key` column is 1..expected in order."""
    try:
        rows = pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    if rows != expected:
        raise DataError(f"{path}: {rows} rows but stats.json n_{key}s={expected}")
    try:
        ids = pq.read_table(path, columns=[key]).column(key).to_numpy()
    except (pa.ArrowException, KeyError) as exc:
        raise DataError(f"{path}: no readable integer column {key!r} ({exc})") from None
    if not np.array_equal(ids, np.arange(1, expected + 1)):
        raise DataError(f"{path}: column {key!r} is not exactly 1..{expected} in order")


def _validate_chain(directory: Path, data: ProcessedData) -> None:
    """Leave-one-out chaining: each valid input ends with the train target, each test input with the valid target."""
    for name, previous in (("valid", "train"), ("test", "valid")):
        split, targets = getattr(data, name), getattr(data, previous).targets
        wrong = np.flatnonzero(split.items[split.offsets[1:] - 1] != targets) if split.items.size else []
        if len(wrong):
            raise DataError(f"{directory / f'{name}.parquet'}: input of user {int(wrong[0]) + 1} does not end with "
                            f"its {previous}.parquet target (splits from different preprocessing runs?)")


def _validate_lengths(directory: Path, data: ProcessedData) -> None:
    """Each user contributes len(train input) + 3 interactions; valid/test inputs extend train by 1 and 2."""
    train_len = data.train.lengths
    total = int(train_len.sum()) + 3 * data.n_users
    if total != data.stats["n_interactions"]:
        raise DataError(
            f"{directory / 'train.parquet'}: splits hold {total} interactions "
            f"but stats.json n_interactions={data.stats['n_interactions']}"
        )
    for name, extra in (("valid", 1), ("test", 2)):
        expected = np.minimum(train_len + extra, data.max_len)
        if not np.array_equal(getattr(data, name).lengths, expected):
            raise DataError(
                f"{directory / f'{name}.parquet'}: input lengths do not match train.parquet "
                f"(expected the last max_len={data.max_len} items)"
            )
