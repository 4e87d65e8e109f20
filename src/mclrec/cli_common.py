"""What every `mclrec` command shares: the --params option and the one-line error report."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.text import Text

from mclrec.errors import MclrecError

# markup off: messages hold user ids and paths, whose square brackets rich would otherwise take for style tags
err_console = Console(stderr=True, markup=False)
ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read.")


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: the path is a folder, or one of its existing
    parents is a file (the folders that are missing are created when it is written)."""
    if path.is_dir():
        raise MclrecError(f"{option} {path}: is a folder; give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MclrecError(f"{option} {path}: {parent} is a file, not a folder")
            break


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn MclrecError and OSError (disk full, permissions; they name the file) into one line on stderr, exit 1."""
    try:
        yield
    except (MclrecError, OSError) as exc:
        err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def exit_on_sigterm() -> None:
    """Let SIGTERM (Snakemake or SLURM cancelling a job, `kill`) end a command as Ctrl-C does: through its clean-ups,
    so an atomic write in progress removes its temp file and the previous output stays; exit status 143.

    Python's default for SIGTERM ends the process on the spot. A handler someone else installed is left alone, and
    so is a worker that torchrun started (TORCHELASTIC_RUN_ID): blocked in a collective, it would run the handler
    only when the collective returns, while torchrun expects SIGTERM to end it.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
