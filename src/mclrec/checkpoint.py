"""Checkpoints: atomic save, validated load (torch.load with weights_only=True)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from mclrec.errors import MclrecError
from mclrec.io import WriteError, atomic_path, write_error

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "modules", "n_items", "epoch")
# Settings added after checkpoints were first written, with the value that reproduces how those runs behaved.
LEGACY_SETTINGS = {"early_stopping": "exact", "mask_item": "padding"}


class CheckpointError(MclrecError):
    """A checkpoint is missing, truncated, corrupt or from another setup."""


def save_checkpoint(path: Path, payload: dict[str, Any], keep_previous: Optional[Path] = None) -> None:
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) atomically; `keep_previous`: see atomic_path.

    It is serialised in memory first, so a full disk fails in a plain file write (WriteError naming `path`, errno
    kept) rather than inside torch's zip writer, and nothing but the temp file is touched before it is complete.
    """
    buffer = io.BytesIO()
    try:
        torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
        with atomic_path(path, keep_previous) as tmp, open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
        raise CheckpointError(f"{path}: not an mclrec checkpoint (missing keys: {', '.join(missing)})")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format_version']}, expected {FORMAT_VERSION}")
    for key, value in LEGACY_SETTINGS.items():
        payload["config"].setdefault(key, value)
    return payload


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run depends on: torch's global CPU/CUDA RNGs and the run's generator."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back the random states saved by rng_state."""
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
