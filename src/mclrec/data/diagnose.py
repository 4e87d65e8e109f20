"""Slow line-by-line scans, run only after a fast reader failed, to name the offending line."""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from mclrec.data.rawio import text_lines
from mclrec.errors import DataError

CSV_FIELDS = ("user", "item", "rating", "timestamp")
_INT = re.compile(r"-?\d+")
YELP_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def diagnose_csv(path: Path, fallback: str) -> DataError:
    """The error for the first bad line of a `user,item,rating,timestamp` file."""
    seen = False
    with text_lines(path) as fh:
        reader = csv.reader(fh)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            seen = True
            problem = _csv_row_problem(row)
            if problem:
                return DataError(f"{path}, line {reader.line_num}: {problem}")
    return _fallback(path, seen, fallback)


def _csv_row_problem(row: list[str]) -> str | None:
    """What is wrong with one CSV row, or None."""
    if len(row) != len(CSV_FIELDS):
        return f"expected {len(CSV_FIELDS)} fields ({','.join(CSV_FIELDS)}), got {len(row)}"
    for name, value in zip(CSV_FIELDS, row):
        if value == "":
            return f"missing field {name!r}"
    if not _INT.fullmatch(row[3].strip()):
        named = row[3].strip().lower() in ("timestamp", "time", "ts")
        header = " (the format has no header line: remove it)" if named else ""
        return f"timestamp {row[3]!r} is not an integer{header}"
    return None


def diagnose_json(path: Path, checks: dict[str, Callable[[Any], bool]], fallback: str) -> DataError:
    """The error for the first bad line of a JSON-lines file; `checks` maps field -> validity test."""
    seen = False
    with text_lines(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            seen = True
            problem = _json_line_problem(line, checks)
            if problem:
                return DataError(f"{path}, line {line_no}: {problem}")
    return _fallback(path, seen, fallback)


def _json_line_problem(line: str, checks: dict[str, Callable[[Any], bool]]) -> str | None:
    """What is wrong with one JSON line, or None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg})"
    if not isinstance(record, dict):
        return "expected a JSON object"
    for name, valid in checks.items():
        if record.get(name) is None:
            return f"missing field {name!r}"
        if not valid(record[name]):
            return f"invalid value {record[name]!r} for field {name!r}"
    return None


def is_id(value: Any) -> bool:
    """A non-empty string id."""
    return isinstance(value, str) and value != ""


def is_unix_time(value: Any) -> bool:
    """An integer number of seconds."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_yelp_date(value: Any) -> bool:
    """A `YYYY-MM-DD HH:MM:SS` string."""
    try:
        datetime.strptime(value, YELP_DATE_FORMAT)
    except (TypeError, ValueError):
        return False
    return True


def _fallback(path: Path, seen: bool, fallback: str) -> DataError:
    """Error when the scan found no bad line: either the file is empty or report the reader's message."""
    if not seen:
        return DataError(f"{path}: no interactions (the file is empty)")
    return DataError(f"{path}: {fallback}")
