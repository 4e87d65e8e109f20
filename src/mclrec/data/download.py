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


def fetch_raw(
    name: str, source: dict, filename: str, raw_dir: Path, mirror: Path | None, declared_in: str | None = None
) -> Path:
    """Return `raw_dir/filename`, fetching it (mirror first, else URL) if it is not already there.

    `declared_in` names where the expected sha256 comes from (e.g. `params.yaml: datasets.x.source.sha256`), so
    that a checksum error says which setting to correct when the new file is the right one.
    """
    if "generator" in source:
        raise ValueError(f"dataset {name!r} is generated, not fetched; call the generator instead")
    dest = Path(raw_dir) / filename
    expected = source.get("sha256")
    expected = expected.lower() if expected else None  # the digests computed here are lower-case
    if dest.exists():
        verify_existing(dest, expected, declared_in)
        return dest
    if mirror is not None and not Path(mirror).is_dir():
        raise DataError(f"{mirror}: the mirror folder ({MIRROR_ENV}) does not exist")
    if mirror is not None or "url" in source:
        fresh = [folder for folder in dest.parents if not folder.exists()]  # innermost first
        try:
            if mirror is not None:
                return _copy_from_mirror(Path(mirror) / filename, dest, expected, declared_in)
            return _download(name, source["url"], dest, expected, declared_in)
        except BaseException:
            for folder in fresh:  # "nothing was written": not even the folders made for the file
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
    if "manual" in source:
        raise DataError(
            f"dataset {name!r} cannot be downloaded automatically. Obtain {filename!r} as described here: "
            f"{source['manual']}. Then place it at {dest}, or set {MIRROR_ENV} to a folder containing {filename}."
        )
    raise ValueError(f"dataset {name!r}: source needs one of 'url', 'manual' or 'generator'")


def _mismatch(origin: str, actual: str, expected: str, declared_in: str | None) -> str:
    """The checksum error: both digests and, when known, the setting that declares the expected one."""
    where = f" ({declared_in})" if declared_in else ""
    return f"{origin}: sha256 is {actual} but {expected} was expected{where}"


def _fix_checksum(declared_in: str | None) -> str:
    """Advice for a file that may be right where the declared checksum is not."""
    return " If the file is the right one, correct that setting." if declared_in else ""


def verify_existing(dest: Path, expected: str | None, declared_in: str | None = None) -> None:
    """Accept a file already in place if its checksum matches (or none is known); never delete or change it."""
    if expected is None:
        return
    actual = sha256_file(dest)
    if actual != expected.lower():
        raise DataError(
            f"{_mismatch(str(dest), actual, expected, declared_in)}; "
            f"replace or remove the file yourself (it was left untouched).{_fix_checksum(declared_in)}"
        )


def _copy_from_mirror(src: Path, dest: Path, expected: str | None, declared_in: str | None = None) -> Path:
    """Copy `src` to `dest` atomically, verifying the checksum while copying."""
    if not src.is_file():
        raise DataError(f"{src}: not found in the mirror folder (expected the raw file there)")
    try:
        with open(src, "rb") as fh:
            _store(fh, dest, expected, str(src), declared_in)
    except DataError as exc:
        raise DataError(f"{exc}; nothing was written to {dest}.{_fix_checksum(declared_in)}") from None
    return dest


def _download(name: str, url: str, dest: Path, expected: str | None, declared_in: str | None = None) -> Path:
    """Stream `url` into `dest`, renamed into place only when the checksum matches."""
    by_hand = f"download it by hand and place it at {dest}, or set {MIRROR_ENV} to a folder containing {dest.name}."
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            _store(response, dest, expected, url, declared_in)
    except DataError as exc:
        fix = _fix_checksum(declared_in)
        raise DataError(f"{exc}; nothing was written to {dest}.{fix} To use a copy you trust, {by_hand}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise DataError(f"dataset {name!r}: download of {url} failed ({reason}); {by_hand}") from None
    return dest


def _store(stream: IO[bytes], dest: Path, expected: str | None, origin: str, declared_in: str | None) -> None:
    """Copy a byte stream into `dest` through a temp file, hashing as it goes; DataError on mismatch."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        if expected is not None and digest.hexdigest() != expected:
            raise DataError(_mismatch(origin, digest.hexdigest(), expected, declared_in))
