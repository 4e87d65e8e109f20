"""The Markdown report: titled sections (tables, figure links), the environment, and the exact commands."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from mclrec import __version__
from mclrec.io import atomic_open

ENVIRONMENT_KEYS = ("python", "torch", "mclrec", "device", "cpu_count", "platform")


def _torch_device() -> str:
    """The accelerator torch would use ("cuda: <name>", "mps") or "cpu"; "unavailable" without torch."""
    try:
        import torch
    except ImportError:
        return "unavailable"
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _version(package: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Python, torch and mclrec versions, device, CPU count and platform of this machine."""
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "mclrec": __version__,
        "device": _torch_device(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def figure_link(figure_path: str | os.PathLike, report_path: str | os.PathLike, caption: str) -> str:
    """A Markdown image whose target is `figure_path` relative to the report's folder."""
    rel = os.path.relpath(Path(figure_path), Path(report_path).parent)
    return f"![{caption}]({Path(rel).as_posix()})"


def environment_section(environment: Mapping[str, Any]) -> str:
    """A two-column Markdown table of the environment, the standard keys first."""
    keys = [k for k in ENVIRONMENT_KEYS if k in environment] + [k for k in environment if k not in ENVIRONMENT_KEYS]
    rows = [f"| {k} | {'–' if environment[k] is None else environment[k]} |" for k in keys]
    return "\n".join(["| item | value |", "|:---|:---|", *rows])


def commands_section(commands: Sequence[str]) -> str:
    """The commands, in order, in one fenced shell block."""
    return "```sh\n" + "\n".join(commands) + "\n```" if commands else "No commands recorded."


def render_report(sections: list[tuple[str, str]], environment: dict, commands: list[str],
                  title: str = "MCLRec reproduction report") -> str:
    """The whole report: a title, one `##` section per (title, Markdown content), environment and commands."""
    parts = [f"# {title}"]
    parts += [f"## {name}\n\n{content.strip()}" for name, content in sections]
    parts.append(f"## Environment\n\n{environment_section(environment)}")
    parts.append(f"## Commands\n\nRun from the project root, in this order:\n\n{commands_section(commands)}")
    return "\n\n".join(parts) + "\n"


def write_report(text: str, path: str | os.PathLike) -> None:
    """Write the report text atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
