"""Interop with RecBole checkpoints: read their encoder weights, build a SASRecEncoder, write them back."""

from __future__ import annotations

import os
import pickle
import re

import torch
from torch import Tensor

from mclrec.errors import MclrecError
from mclrec.models.encoder import SASRecEncoder

ENCODER_PREFIXES = ("item_embedding.", "position_embedding.", "LayerNorm.", "trm_encoder.")
LAYER_KEY = re.compile(r"^trm_encoder\.layer\.(\d+)\.")


def encoder_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of a RecBole model state dict that belong to the SASRec encoder."""
    return {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES)}


def load_recbole_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Tensor]:
    """Read a RecBole checkpoint ({"state_dict": ..., ...}) and return its encoder weights.

    Loads with weights_only=True; only with `trust=True` does it unpickle arbitrary objects (RecBole stores its
    Config object in the file), which can run code from the file, so pass it only for files you trust.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    except FileNotFoundError as err:
        raise MclrecError(f"checkpoint not found: {path}") from err
    except pickle.UnpicklingError as err:
        raise MclrecError(
            f"{path}: the checkpoint pickles objects other than tensors and plain containers (RecBole saves its "
            f"Config object), so it was not loaded in safe weights-only mode. Loading it runs code from the file; "
            f"if you trust its source, retry with trust=True.\nDetail: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise MclrecError(f"{path}: not a readable torch checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise MclrecError(f"{path}: expected a RecBole checkpoint dict with a 'state_dict' key, found {found}")
    return encoder_keys(checkpoint["state_dict"])


def encoder_from_recbole(state_dict: dict[str, Tensor], max_len: int | None = None, **encoder_kwargs) -> SASRecEncoder:
    """Build a SASRecEncoder whose sizes are inferred from the RecBole weights' shapes, and load them.

    n_items = item_embedding rows - 2, hidden_size = its columns, max_len = position_embedding rows,
    n_layers = number of trm_encoder layers, inner_size = feed_forward.dense_1 rows. n_heads and dropouts come
    from `encoder_kwargs` (shapes do not determine them). Any mismatch raises MclrecError naming the keys.
    """
    state_dict = encoder_keys(state_dict)
    required = ["item_embedding.weight", "position_embedding.weight"]
    if missing := [k for k in required if k not in state_dict]:
        raise MclrecError(f"RecBole state dict lacks encoder keys: {missing}")
    n_rows, hidden_size = state_dict["item_embedding.weight"].shape
    n_positions = state_dict["position_embedding.weight"].shape[0]
    if max_len is not None and max_len != n_positions:
        raise MclrecError(f"max_len={max_len} but position_embedding.weight has {n_positions} rows")
    layers = {int(m.group(1)) for k in state_dict if (m := LAYER_KEY.match(k))}
    n_layers = max(layers) + 1 if layers else 0
    dense_1 = state_dict.get("trm_encoder.layer.0.feed_forward.dense_1.weight")
    if dense_1 is not None:
        encoder_kwargs.setdefault("inner_size", dense_1.shape[0])
    encoder = SASRecEncoder(n_items=n_rows - 2, max_len=n_positions, hidden_size=hidden_size, n_layers=n_layers,
                            **encoder_kwargs)
    check_state_dict(encoder, state_dict)
    encoder.load_state_dict(state_dict)
    return encoder


def check_state_dict(encoder: SASRecEncoder, state_dict: dict[str, Tensor]) -> None:
    """Raise MclrecError listing missing keys, unexpected keys and shape mismatches against `encoder`."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs encoder {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{name}: {items}" for name, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if items]
    if problems:
        raise MclrecError("RecBole state dict does not fit SASRecEncoder; " + "; ".join(problems))


def to_recbole_state_dict(encoder: SASRecEncoder) -> dict[str, Tensor]:
    """The encoder's weights under RecBole's names (detached copies), ready for {"state_dict": ...}."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}
