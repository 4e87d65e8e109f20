"""Checkpoints: atomic save, validated load (torch.load with weights_only=True)."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import torch

from mclrec.errors import MclrecError
from mclrec.io import WriteError, atomic_path, write_error

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "modules", "n_items", "epoch")
# Settings added after checkpoints were first written, with the value that reproduces how those runs behaved.
LEGACY_SETTINGS = {"early_stopping": "exact", "mask_item": "padding", "packed_tokens": False, "precision": "fp32",
                   "attention": "math", "compile": False, "nproc": 1, "dropout_draws": "uniform",
                   "fused_losses": False, "adam": "foreach"}
# Settings older checkpoints stored that are no longer run settings (eval_ks moved to params.yaml `evaluate.ks`;
# it never changed what was trained).
RETIRED_SETTINGS = ("eval_ks",)


class CheckpointError(MclrecError):
    """A checkpoint is missing, truncated, corrupt or from another setup."""


def check_catalogue(path: Path, meta: dict[str, Any], data: Any) -> None:
    """Refuse an mclrec checkpoint whose item rows are not `data`'s items (a ProcessedData).

    The item count must match; where the checkpoint records its catalogue (`catalogue_sha256`; older
    checkpoints do not), the items themselves must too: with another catalogue of the same size every score
    would belong to another item and nothing else would notice.
    """
    trained_on = meta.get("data_stats", {}).get("dataset")
    origin = f"dataset '{trained_on}'" if trained_on else "another dataset"
    if meta["n_items"] != data.n_items:
        raise CheckpointError(f"{path}: checkpoint was trained with {meta['n_items']} items, "
                              f"but the dataset has {data.n_items} (checkpoint from {origin}?)")
    trained, here = meta.get("catalogue_sha256"), getattr(data, "catalogue_sha256", None)
    if trained and here and trained != here:
        raise CheckpointError(
            f"{path}: checkpoint was trained on the items of {origin}, which are not this dataset's "
            f"(items.parquet original ids differ, though both have {data.n_items}); its item rows would score "
            "other items. Use it with the dataset it was trained on, preprocessed as it was then")


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


# a file that is no zip archive is read as torch's legacy format, which fails where the bytes take it: each of these
# means the file is not a checkpoint (and a resume falls back to last.prev.pt); their text alone says little
LEGACY_READER_ERRORS = (KeyError, IndexError, TypeError, AttributeError, OverflowError)


def damaged_record(path: Path) -> str | None:
    """The first record of a torch zip file whose bytes fail their CRC-32, else None. torch.load does not check the
    CRCs, so damage inside the weights' bytes would load as other weights. Not checked: records stored with CRC 0
    (torch.serialization.set_crc32_options(False) writes those) and files that are no zip archive (torch.load then
    says what they are)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC == 0:
                    continue
                try:
                    with archive.open(record) as fh:  # zipfile compares the CRC-32 as the last bytes are read
                        while fh.read(1 << 24):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError):
                    return record.filename
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, OSError):
        return None
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint written by save_checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file (a copy or write that never finished?)")
    if (damaged := damaged_record(path)) is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint: {damaged} fails its CRC check (a damaged copy or disk?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, UnicodeDecodeError,
            *LEGACY_READER_ERRORS) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(payload, dict) or k not in payload]
        hint = ("; it holds a RecBole-style state_dict: evaluate and recommend read those with --checkpoint-format "
                "recbole") if isinstance(payload, dict) and "state_dict" in payload else ""
        raise CheckpointError(f"{path}: not an mclrec checkpoint (missing keys: {', '.join(missing)}){hint}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format_version']}, expected {FORMAT_VERSION}")
    for key, value in LEGACY_SETTINGS.items():
        payload["config"].setdefault(key, value)
    for key in RETIRED_SETTINGS:
        payload["config"].pop(key, None)
    return payload


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """Why torch.load failed, in one line. torch's weights-only message (several lines, terminal escapes, and advice
    to load the file with code execution allowed) is reduced to its cause."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    marker = "WeightsUnpickler error:"
    cause = text.split(marker, 1)[1] if marker in text else text
    reason = next((line.strip() for line in cause.splitlines() if line.strip()), type(exc).__name__)
    if isinstance(exc, LEGACY_READER_ERRORS):
        reason = f"{type(exc).__name__}: {reason}"  # a KeyError's text alone is the key, e.g. "101"
    found = re.match(r"Unsupported global: GLOBAL (\S+)", reason)
    if found:
        return CheckpointError(f"{path}: not an mclrec checkpoint: it pickles {found.group(1)}, and only tensors and "
                               "plain containers are loaded (a RecBole checkpoint? evaluate and recommend read those "
                               "with --checkpoint-format recbole)")
    return CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {reason}")


CPU_GENERATOR_STATE_BYTES = 5056  # mt19937; a CUDA generator's (Philox) state is 16 bytes


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state a run depends on: torch's global CPU RNG, the run's generator (with its device type) and,
    on CUDA, the run device's generator (dropout) only, not every visible GPU's."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "generator_device": generator.device.type}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def saved_generator_device(state: dict[str, Any]) -> str:
    """The device type the run's generator state was saved on (older checkpoints: told by the state's size)."""
    if "generator_device" in state:
        return state["generator_device"]
    return "cpu" if state["generator"].numel() == CPU_GENERATOR_STATE_BYTES else "cuda"


def restore_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device, reseed: int) -> bool:
    """Put back the random states saved by rng_state; True when every stream was restored exactly.

    A CPU state cannot drive a CUDA generator and vice versa. When the run moved between device types (a resume on
    a node with or without a GPU), the run's generator and the CUDA dropout generator are seeded with `reseed`
    instead: deterministic, the same law, but not the numbers of an uninterrupted run. torch's global CPU RNG
    always moves, as it is the same on every machine.
    """
    torch.set_rng_state(state["torch"].cpu())
    saved = saved_generator_device(state)
    exact = saved == generator.device.type
    if exact:
        generator.set_state(state["generator"].cpu())
    else:
        generator.manual_seed(reseed)
    if device.type == "cuda":
        cuda = state.get("cuda")
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible device
            index = device.index or 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None and saved == "cuda":
            torch.cuda.set_rng_state(cuda.cpu(), device)
        else:
            torch.cuda.manual_seed(reseed)
            exact = False
    return exact
