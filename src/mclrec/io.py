"""Atomic file writing: every output is written to a temp file beside it, then renamed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from mclrec.errors import MclrecError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class WriteError(MclrecError, OSError):
    """Writing an output failed (disk full, file too large); names the file, whose previous version is untouched."""


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """A WriteError (keeping errno) naming the file `path` whose write raised `exc`."""
    return WriteError(exc.errno, f"{path}: cannot write ({exc.strerror or exc}); any previous version is unchanged")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_previous: Optional[str | os.PathLike] = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `path` only if the block succeeds.

    Order, so that a kill at any instant leaves a complete `path` or `keep_previous` (never a partial one under
    either name): (1) the block writes `.<name>.<random>.tmp`, which is fsync'ed; (2) with `keep_previous`, an
    existing `path` is renamed onto `keep_previous` (replacing the older one); (3) the temp file is renamed onto
    `path`. A kill after (2) leaves no `path` but a complete `keep_previous`; a failure removes the temp file.
    Disk-full errors (ENOSPC, EFBIG, EDQUOT) become a WriteError naming `path`.
    """
    path = Path(path)
    tmp_path = _temp_beside(path)
    try:
        with naming(path):
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            if keep_previous is not None and path.exists():
                os.replace(path, keep_previous)
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _temp_beside(path: Path) -> Path:
    """A new empty temp file `.<name>.<random>.tmp` in `path`'s folder (made if missing), with the mode a plain open
    would give (mkstemp's 0600 would make every output private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Report a disk-full error (ENOSPC, EFBIG, EDQUOT) raised in the block as a WriteError naming `path`."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, WriteError) or exc.errno not in NO_SPACE_ERRNOS:
            raise
        raise write_error(path, exc) from exc


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temp paths for files that belong together (a results JSON and its side files; wrap each write in `naming`).

    Every temp file is written and fsync'ed before any target is replaced; then they are renamed last to first (the
    first path, by which the others are found, comes last) with SIGINT and SIGTERM deferred, so a failure while
    writing or syncing leaves every previous version, and only a crash of the machine between two renames could mix
    them. The temp files are removed on any failure.
    """
    targets = [Path(path) for path in paths]
    temps = []
    try:
        for target in targets:
            temps.append(_temp_beside(target))
        yield temps
        for target, tmp in zip(targets, temps):
            with naming(target), open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        with _signals_held():
            for target, tmp in reversed(list(zip(targets, temps))):
                os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM over the block: in the main thread, where Python runs signal handlers, their handlers
    are swapped for ones that only note the signal, which is raised again after the block with the handlers back.
    (Blocking the signals with pthread_sigmask would not do: the kernel hands a process-wide signal to another
    thread, e.g. one of torch's, that does not block it.) Off the main thread nothing is needed: a handler never
    interrupts another thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
        for sig in dict.fromkeys(noted):
            signal.raise_signal(sig)


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it): outputs get the mode a plain open would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Delete temp files that a killed atomic write of one of `names` left in `directory`; return them."""
    stale = [p for name in names for p in Path(directory).glob(f".{name}.*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file for writing that replaces `path` when the block exits without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        dump_json(tmp, obj)


def dump_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` (a temp file of atomic_path or atomic_paths)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True, "store_schema": True}  # reproducible bytes


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a pyarrow table to Parquet atomically, with settings that make the bytes reproducible."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def metrics_path(results_path: str | os.PathLike) -> Path:
    """results/<d>/<v>.json -> results/<d>/<v>.metrics.json: the small, flat metrics file beside a results document."""
    path = Path(results_path)
    return path.with_name(path.name.removesuffix(".json") + ".metrics.json")


def write_metrics(results_path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write only the test and validation metrics of a results (or aggregate) document beside it, atomically."""
    write_json(metrics_path(results_path), metrics_only(record))


def metrics_only(record: dict[str, Any]) -> dict[str, Any]:
    """The test and validation metrics of a results (or aggregate) document: what its .metrics.json holds."""
    metrics = record.get("metrics", {})
    return {split: metrics[split] for split in ("test", "valid") if split in metrics}
