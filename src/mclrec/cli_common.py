"""What every `mclrec` command shares: the --params option and the one-line error report."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.text import Text

from mclrec.errors import MclrecError

# markup off: messages hold user ids and paths, whose square brackets rich would otherwise take for style tags
err_console = Console(stderr=True, markup=False)
ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read.")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn MclrecError and OSError (disk full, permissions; they name the file) into one line on stderr, exit 1."""
    try:
        yield
    except (MclrecError, OSError) as exc:
        err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
