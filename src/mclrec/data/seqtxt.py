"""Vectorised parser of the `seqtxt` format: one line per user, `<user> <item> <item> ...`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mclrec.data.rawio import UTF8_BOM
from mclrec.errors import DataError

CHUNK_BYTES = 16 << 20
MAX_DIGITS = 18
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True


def parse_seqtxt(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the file content into (user id per interaction, item id per interaction), int64."""
    users, items, line_offset = [], [], 0
    for start, stop in _chunk_bounds(data):
        chunk = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start)
        u, i, n_lines = parse_chunk(chunk, path, line_offset)
        users.append(u)
        items.append(i)
        line_offset += n_lines
    return np.concatenate(users), np.concatenate(items)


def _chunk_bounds(data: bytes) -> list[tuple[int, int]]:
    """Split the content at newlines into pieces of about CHUNK_BYTES; a leading UTF-8 BOM is left out."""
    bounds, start = [], len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    while start < len(data):
        cut = data.find(b"\n", min(start + CHUNK_BYTES, len(data)) - 1)
        stop = len(data) if cut < 0 else cut + 1
        bounds.append((start, stop))
        start = stop
    return bounds or [(start, start)]


def parse_chunk(b: np.ndarray, path: Path, line_offset: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse whole lines in `b`; return users, items and the number of newlines seen."""
    newlines = np.flatnonzero(b == 10)
    filled = ~_WHITESPACE[b]
    edges = np.diff(filled.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    bad = np.flatnonzero(filled & ~_DIGIT[b])
    if bad.size:
        tok = np.searchsorted(ends, bad[0], side="right")
        raise DataError(
            f"{path}, line {_line(newlines, bad[0], line_offset)}: "
            f"id {_token(b, starts[tok], ends[tok])!r} is not a positive integer"
        )
    lengths = ends - starts
    too_long = np.flatnonzero(lengths > MAX_DIGITS)
    if too_long.size:
        k = too_long[0]
        raise DataError(
            f"{path}, line {_line(newlines, starts[k], line_offset)}: "
            f"id {_token(b, starts[k], ends[k])!r} is too large"
        )
    values = _token_values(b, starts, lengths)
    lines = np.searchsorted(newlines, starts)
    first = np.ones(len(starts), dtype=bool)
    first[1:] = lines[1:] != lines[:-1]
    _check_lines(values, first, lines, path, line_offset)
    user_of_token = np.maximum.accumulate(np.where(first, np.arange(len(starts)), 0))
    items = values[~first]
    users = values[user_of_token[~first]]
    return users, items, len(newlines)


def _token_values(b: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Integer value of each digit token (Horner's rule, one vectorised step per digit column)."""
    values = np.zeros(len(starts), dtype=np.int64)
    for col in range(int(lengths.max(initial=0))):
        live = lengths > col
        digits = b[np.minimum(starts + col, len(b) - 1)].astype(np.int64) - 48
        values = np.where(live, values * 10 + digits, values)
    return values


def _check_lines(values: np.ndarray, first: np.ndarray, lines: np.ndarray, path: Path, offset: int) -> None:
    """Reject zero ids and lines that hold a user but no items."""
    zero = np.flatnonzero(values == 0)
    if zero.size:
        raise DataError(f"{path}, line {offset + 1 + lines[zero[0]]}: id 0 is not a positive integer")
    first_idx = np.flatnonzero(first)
    lonely = first_idx[np.diff(first_idx, append=len(first)) == 1]
    if lonely.size:
        k = lonely[0]
        raise DataError(f"{path}, line {offset + 1 + lines[k]}: user {values[k]} has no items")


def _line(newlines: np.ndarray, pos: int, offset: int) -> int:
    """1-based file line of byte `pos` of a chunk that starts after `offset` lines."""
    return offset + 1 + int(np.searchsorted(newlines, pos))


def _token(b: np.ndarray, start: int, end: int) -> str:
    """The text of one token, for error messages."""
    return b[start:end].tobytes().decode("utf-8", errors="replace")
