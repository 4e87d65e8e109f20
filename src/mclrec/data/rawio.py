"""Opening raw files: existence check and gzip detection by magic bytes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO

import pyarrow as pa

from mclrec.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"  # what Windows editors put before the first line; the readers skip it


def check_exists(path: Path) -> None:
    """Raise DataError if `path` is not a readable regular file."""
    if not path.is_file():
        raise DataError(f"{path}: raw data file not found")


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its extension)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def arrow_stream(path: Path) -> pa.NativeFile:
    """A pyarrow input stream over the file, decompressing gzip transparently."""
    return pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of the file."""
    if is_gzip(path):
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def text_lines(path: Path) -> IO[str]:
    """A text handle over the (decompressed) file for slow diagnostic scans."""
    raw = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")  # -sig: a leading BOM skipped
