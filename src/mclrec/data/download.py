"""Fetching raw files: from a local mirror or a URL, always checksum-verified, never half-written."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from mclrec.errors import DataError
from mclrec.io import atomic_path, sha256_file

TIMEOUT_S = 30
CHUNK = 1 << 20
MIRROR_ENV = "MCLREC_MIRROR"


def fetch_raw(name: str, source: dict, filename: str, raw_dir: Path, mirror: Path | None) -> Path:
    """Return `raw_dir/filename`, fetching it (mirror first, else URL) if it is not already there."""
    if "generator" in source:
        raise ValueError(f"dataset {name!r} is generated, not fetched; call the generator instead")
    dest = Path(raw_dir) / filename
    expected = source.get("sha256")
    if dest.exists():
        verify_existing(dest, expected)
        return dest
    if mirror is not None:
        return _copy_from_mirror(Path(mirror) / filename, dest, expected)
    if "url" in source:
        return _download(name, source["url"], dest, expected)
    if "manual" in source:
        raise DataError(
            f"dataset {name!r} cannot be downloaded automatically. Obtain {filename!r} as described here: "
            f"{source['manual']}. Then place it at {dest}, or set {MIRROR_ENV} to a folder containing {filename}."
        )
    raise ValueError(f"dataset {name!r}: source needs one of 'url', 'manual' or 'generator'")


def verify_existing(dest: Path, expected: str | None) -> None:
    """Accept a file already in place if its checksum matches (or none is known); never delete or change it."""
    if expected is None:
        return
    actual = sha256_file(dest)
    if actual != expected:
        raise DataError(
            f"{dest}: sha256 is {actual} but {expected} was expected; "
            "replace or remove the file yourself (it was left untouched)"
        )


def _copy_from_mirror(src: Path, dest: Path, expected: str | None) -> Path:
    """Copy `src` to `dest` atomically, verifying the checksum while copying."""
    if not src.is_file():
        raise DataError(f"{src}: not found in the mirror folder (expected the raw file there)")
    try:
        with open(src, "rb") as fh:
            _store(fh, dest, expected, origin=str(src))
    except DataError as exc:
        raise DataError(f"{exc}; nothing was written to {dest}") from None
    return dest


def _download(name: str, url: str, dest: Path, expected: str | None) -> Path:
    """Stream `url` into `dest`, renamed into place only when the checksum matches."""
    hint = f"Download it by hand and place it at {dest}, or set {MIRROR_ENV} to a folder containing {dest.name}."
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            _store(response, dest, expected, origin=url)
    except DataError as exc:
        raise DataError(f"{exc} {hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise DataError(f"dataset {name!r}: download of {url} failed ({reason}). {hint}") from None
    return dest


def _store(stream: IO[bytes], dest: Path, expected: str | None, origin: str) -> None:
    """Copy a byte stream into `dest` through a temp file, hashing as it goes; DataError on mismatch."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        if expected is not None and digest.hexdigest() != expected:
            raise DataError(f"{origin}: sha256 is {digest.hexdigest()} but {expected} was expected")
