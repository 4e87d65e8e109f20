"""RecBole atomic interaction files (`.inter`): a tab-separated header `name:type` per column, then one row each.

Only `user_id` and `item_id` are required (ids are tokens, read as strings); with `timestamp` the interactions are
ordered by it, ties in file order, without it file order is the time order. Other columns are ignored, in any
order. See RecBole's "Atomic Files" documentation for the format.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mclrec.data.rawio import arrow_stream, text_lines
from mclrec.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")
REQUIRED = ("user_id", "item_id")
BLOCK_BYTES = 16 << 20


def parse_header(line: str, path: Path) -> list[str]:
    """Column names of a header line (`name:type` separated by tabs); DataError naming line 1 otherwise."""
    names, kinds = [], {}
    for position, field in enumerate(line.rstrip("\r\n").split("\t"), start=1):
        name, sep, kind = field.partition(":")
        if not sep or not name or kind not in TYPES:
            raise DataError(f"{path}, line 1: header field {position} {field!r} is not name:type with type one of "
                            f"{', '.join(TYPES)} (a RecBole .inter header, e.g. user_id:token<TAB>item_id:token)")
        names.append(name)
        kinds[name] = kind
    if len(set(names)) != len(names):
        raise DataError(f"{path}, line 1: a column name appears twice in the header: {names}")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise DataError(f"{path}, line 1: the header has no {', '.join(missing)} field; it has {', '.join(names)}")
    listed = [f"{name}:{kinds[name]}" for name in (*REQUIRED, "timestamp") if kinds.get(name, "").endswith("_seq")]
    if listed:
        kind = "is a sequence type" if len(listed) == 1 else "are sequence types"
        raise DataError(f"{path}, line 1: {', '.join(listed)} {kind}; an interaction file has one user, "
                        "item and timestamp per row (user_id:token, item_id:token, timestamp:float)")
    return names


def inter_fields(path: Path) -> list[str]:
    """The column names of a .inter file's header (parse_header's checks)."""
    with text_lines(path) as fh:
        header = fh.readline()
    if not header.strip():
        raise DataError(f"{path}, line 1: empty; a RecBole .inter file starts with a header line")
    return parse_header(header, path)


def read_recbole_inter(path: Path) -> pa.Table:
    """Read a .inter file into a (user, item, ts) table in file order; ts orders by timestamp (ties: file order)."""
    names = inter_fields(path)
    wanted = [name for name in ("user_id", "item_id", "timestamp") if name in names]
    try:
        table = pacsv.read_csv(
            arrow_stream(path),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in names},
                                                 include_columns=wanted, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise diagnose(path, names, str(exc)) from None
    for name in ("user_id", "item_id"):
        if pc.any(pc.equal(pc.utf8_length(table.column(name)), 0)).as_py():
            raise diagnose(path, names, f"an empty {name}")
    if "timestamp" in names:
        try:
            stamps = pc.cast(table.column("timestamp"), pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            raise diagnose(path, names, "a timestamp is not a number") from None
        if not np.isfinite(stamps).all():
            raise diagnose(path, names, "a timestamp is not a finite number")
        # the rank of each timestamp: int64 order keys that keep fractional timestamps' order and ties equal
        ts = np.unique(stamps, return_inverse=True)[1].astype(np.int64)
    else:
        ts = np.arange(table.num_rows, dtype=np.int64)
    return pa.table({"user": table.column("user_id"), "item": table.column("item_id"), "ts": ts})


def diagnose(path: Path, names: list[str], fallback: str) -> DataError:
    """The error for the first bad row (wrong field count, empty id, bad timestamp), found by a slow scan."""
    user, item = names.index("user_id"), names.index("item_id")
    stamp = names.index("timestamp") if "timestamp" in names else None
    with text_lines(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 or not line.strip("\r\n"):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(names):
                return DataError(f"{path}, line {number}: expected {len(names)} tab-separated fields "
                                 f"({', '.join(names)}), got {len(fields)}")
            for index, name in ((user, "user_id"), (item, "item_id")):
                if not fields[index]:
                    return DataError(f"{path}, line {number}: empty {name}")
            if stamp is not None:
                try:
                    value = float(fields[stamp])
                except ValueError:
                    return DataError(f"{path}, line {number}: timestamp {fields[stamp]!r} is not a number")
                if not math.isfinite(value):
                    return DataError(f"{path}, line {number}: timestamp {fields[stamp]!r} is not a finite number")
    return DataError(f"{path}: {fallback}")
