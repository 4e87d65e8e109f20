"""Interop with RecBole checkpoints: read their encoder weights, build a SASRecEncoder, write them back (also in
RecBole's own item order, for RecBole's SASRec on our exported split), and read rows kept in RecBole's item order
back into ours (item_order)."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import re
import types
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from mclrec.checkpoint import damaged_record
from mclrec.errors import MclrecError
from mclrec.models.encoder import SASRecEncoder

ENCODER_PREFIXES = ("item_embedding.", "position_embedding.", "LayerNorm.", "trm_encoder.")
LAYER_KEY = re.compile(r"^trm_encoder\.layer\.(\d+)\.")


def encoder_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of a RecBole model state dict that belong to the SASRec encoder."""
    return {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES)}


class Placeholder:
    """Stands in for any class a checkpoint pickles that is not a tensor or a plain container (RecBole's Config,
    its enums, numpy scalars): it records what it was given and never runs code from the file."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


_SAFE_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "slice", "complex", "int", "float", "bool", "str",
                  "bytes", "bytearray", "range"}


def _reconstruct(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor for placeholders only (how plain objects such as RecBole's Config are pickled)."""
    if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls)


class _RestrictedUnpickler(pickle.Unpickler):
    """torch's weights-only globals, harmless builtins and OrderedDict; every other class becomes a Placeholder."""

    def __init__(self, *args: Any, **kwargs: Any):
        from torch._weights_only_unpickler import _get_allowed_globals

        super().__init__(*args, **kwargs)
        self._allowed = _get_allowed_globals()  # built once per file, not once per pickled class

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in self._allowed:
            return self._allowed[f"{module}.{name}"]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        if module.startswith("torch") or module in ("builtins", "os", "sys", "subprocess", "posix", "nt", "shutil"):
            raise pickle.UnpicklingError(f"the checkpoint refers to {module}.{name}, which is not loaded")
        return type(name, (Placeholder,), {"__module__": module, "__qualname__": name})


_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted")


@dataclass(frozen=True)
class RecBoleFile:
    """What a RecBole checkpoint holds that we use: its encoder weights, its settings ({} without a pickled config)
    and, where the file lists them, the original item ids of its item-embedding rows ([PAD] first): the
    `item_id_tokens` that `mclrec export recbole-checkpoint` writes; real RecBole files carry none."""

    path: str
    state_dict: dict[str, Tensor]
    settings: dict[str, Any]
    item_id_tokens: list[str] | None = None


def read_recbole_file(path: str | os.PathLike) -> RecBoleFile:
    """A RecBole checkpoint read without importing RecBole and without running code from the file: every pickled
    class other than tensors and plain containers becomes an inert Placeholder."""
    if os.path.isfile(path) and (damaged := damaged_record(path)) is not None:
        raise MclrecError(f"{path}: corrupt checkpoint: {damaged} fails its CRC check (a damaged copy or disk?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except FileNotFoundError as err:
        raise MclrecError(f"checkpoint not found: {path}") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError, KeyError,
            IndexError) as err:  # a legacy torch file that is not one fails in int() (ValueError), among others
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise MclrecError(f"{path}: not a readable RecBole checkpoint ({first})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise MclrecError(f"{path}: expected a RecBole checkpoint dict with a 'state_dict' key, found {found}")
    tokens = checkpoint.get("item_id_tokens")
    if tokens is not None and not (isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens)):
        raise MclrecError(f"{path}: item_id_tokens must be a list of original item ids (strings), "
                          f"found {type(tokens).__name__}")
    return RecBoleFile(str(path), encoder_keys(checkpoint["state_dict"]), _settings(checkpoint.get("config")),
                       None if tokens is None else list(tokens))


def read_recbole_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A RecBole checkpoint's encoder weights and its settings (RecBole 1.x pickles its Config object; files without
    one give {}), read as read_recbole_file reads them."""
    file = read_recbole_file(path)
    return file.state_dict, file.settings


def _settings(config: Any) -> dict[str, Any]:
    """The settings a RecBole Config carried (its final_config_dict), a plain dict as it is, {} otherwise."""
    if isinstance(config, dict):
        return config
    final = getattr(config, "final_config_dict", None)
    return dict(final) if isinstance(final, dict) else {}


def load_recbole_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict[str, Tensor]:
    """The encoder weights of a RecBole checkpoint (see read_recbole_checkpoint; `trust` is no longer needed)."""
    return read_recbole_checkpoint(path)[0]


RECBOLE_SETTINGS = {"n_layers": "n_layers", "n_heads": "n_heads", "hidden_size": "hidden_size",
                    "inner_size": "inner_size", "MAX_ITEM_LIST_LENGTH": "max_len", "layer_norm_eps": "layer_norm_eps"}


def encoder_from_recbole_file(path: str | os.PathLike | RecBoleFile, n_items: int, n_heads: int | None = None,
                              item_order: Sequence[int] | None = None) -> SASRecEncoder:
    """The SASRecEncoder of a RecBole checkpoint (a path, or a file read_recbole_file has read) for a dataset of
    `n_items` items.

    Sizes come from the weights' shapes and are checked against the pickled config when there is one; `n_heads`
    (not visible in the shapes) comes from the config, else from the `n_heads` argument, else it is an error.
    Both embedding layouts load: RecBole's SASRec (n_items + 1 rows) and the MCLRec fork (n_items + 2).
    `item_order`: the file's item rows are in another numbering, file row k holding our item `item_order[k - 1]`
    (see recbole_rows_to_ours); None: they are in our item ids already.
    """
    file = path if isinstance(path, RecBoleFile) else read_recbole_file(path)
    path, state_dict, settings = file.path, file.state_dict, file.settings
    if settings.get("hidden_act", "gelu") != "gelu":
        raise MclrecError(f"{path}: hidden_act is {settings['hidden_act']!r}; only gelu (SASRec's) is supported")
    heads = settings.get("n_heads")
    if heads is not None and n_heads is not None and heads != n_heads:
        raise MclrecError(f"{path}: the checkpoint's config says n_heads={heads}, --n-heads says {n_heads}")
    heads = heads if heads is not None else n_heads
    if heads is None:
        raise MclrecError(f"{path}: the checkpoint carries no config, so its number of attention heads is unknown "
                          "(the weights' shapes do not show it); pass --n-heads (the published MCLRec uses 2)")
    hidden = state_dict["item_embedding.weight"].shape[1] if "item_embedding.weight" in state_dict else None
    if hidden is not None and hidden % heads:
        raise MclrecError(f"{path}: its hidden size {hidden} is not a multiple of {heads} attention heads"
                          + (" (--n-heads)" if settings.get("n_heads") is None else ""))
    encoder = encoder_from_recbole(state_dict, n_items=n_items, n_heads=heads,
                                   layer_norm_eps=float(settings.get("layer_norm_eps", 1e-12)))
    built = {"n_layers": len(encoder.trm_encoder.layer), "n_heads": heads, "hidden_size": encoder.LayerNorm.normalized_shape[0],
             "inner_size": encoder.trm_encoder.layer[0].feed_forward.dense_1.out_features, "max_len": encoder.max_len,
             "layer_norm_eps": encoder.LayerNorm.eps}
    for key, ours in RECBOLE_SETTINGS.items():
        if key in settings and settings[key] != built[ours]:
            raise MclrecError(f"{path}: the config says {key}={settings[key]} but the weights give {built[ours]}")
    if item_order is not None:
        if len(item_order) != n_items:
            raise MclrecError(f"{path}: an item order of {len(item_order)} items for a dataset of {n_items}")
        with torch.no_grad():
            encoder.item_embedding.weight.copy_(recbole_rows_to_ours(encoder.item_embedding.weight, item_order))
    return encoder


def encoder_from_recbole(state_dict: dict[str, Tensor], max_len: int | None = None, n_items: int | None = None,
                         **encoder_kwargs) -> SASRecEncoder:
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
    if n_items is None:
        n_items = n_rows - 2  # the MCLRec fork's layout: padding, items, a spare (mask) row
    if n_rows == n_items + 1:  # RecBole's SASRec: padding and items; our spare mask row is added, zero, never ranked
        state_dict = {**state_dict, "item_embedding.weight": torch.cat(
            [state_dict["item_embedding.weight"], state_dict["item_embedding.weight"].new_zeros(1, hidden_size)])}
    elif n_rows != n_items + 2:
        raise MclrecError(f"item_embedding.weight has {n_rows} rows, which fits neither {n_items} + 1 (RecBole's "
                          f"SASRec) nor {n_items} + 2 (the MCLRec fork) items: a checkpoint from another dataset?")
    encoder = SASRecEncoder(n_items=n_items, max_len=n_positions, hidden_size=hidden_size, n_layers=n_layers,
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


def _item_order_tensor(item_order: Sequence[int], n: int) -> Tensor:
    """`item_order` as a tensor, checked to be a permutation of our items 1..n."""
    order = torch.as_tensor(list(item_order) if not isinstance(item_order, Tensor) else item_order, dtype=torch.long)
    if order.shape != (n,) or not torch.equal(torch.sort(order).values, torch.arange(1, n + 1)):
        raise MclrecError(f"the RecBole item order must be a permutation of our items 1..{n}; got {len(order)} ids "
                          f"({len(set(order.tolist()) & set(range(1, n + 1)))} distinct items of 1..{n})")
    return order


def to_recbole_sasrec_state_dict(encoder: SASRecEncoder, item_order: Sequence[int]) -> dict[str, Tensor]:
    """The encoder's weights as RecBole's SASRec holds them for a dataset RecBole numbers its own way.

    `item_order[k - 1]` is our item id of RecBole's item id k (k = 1..n_items; a permutation of 1..n_items, see
    mclrec.export.recbole_item_order). item_embedding gets RecBole's n_items + 1 rows: row 0 ([PAD]) is ours, row k
    is our row item_order[k - 1]; our spare mask row (n_items + 1) is dropped, as RecBole's SASRec has none. Every
    other weight is as to_recbole_state_dict gives it (detached copies under RecBole's names).
    """
    order = _item_order_tensor(item_order, encoder.n_items)
    state = to_recbole_state_dict(encoder)
    rows = torch.cat([torch.zeros(1, dtype=torch.long), order])
    state["item_embedding.weight"] = state["item_embedding.weight"][rows].contiguous()
    return state


def recbole_rows_to_ours(weight: Tensor, item_order: Sequence[int]) -> Tensor:
    """An item-embedding matrix whose rows 1..n are in another numbering (row k holds our item `item_order[k - 1]`),
    with those rows moved to our item ids: the inverse of to_recbole_sasrec_state_dict's row order. Row 0 ([PAD])
    and any row after n (the MCLRec fork's spare row) stay where they are."""
    n = len(item_order)
    if weight.shape[0] < n + 1:
        raise MclrecError(f"item_embedding.weight has {weight.shape[0]} rows, too few for {n} items and [PAD]")
    order = _item_order_tensor(item_order, n).to(weight.device)
    ours = weight.detach().clone()
    ours[order] = weight.detach()[1 : n + 1]
    return ours


def item_order_from_tokens(tokens: Sequence[str], item_labels: Sequence[str], path: str | os.PathLike) -> list[int]:
    """Our item ids of a file's item rows 1..n from the original ids it lists for its rows (`item_id_tokens`, [PAD]
    first; RecBole's `field2id_token["item_id"]`), checked against the dataset's items (`item_labels[i - 1]`: the
    original id of our item i). Errors name the file and the first ids that do not fit."""
    n = len(item_labels)
    if not tokens or tokens[0] != "[PAD]":
        raise MclrecError(f"{path}: item_id_tokens must start with '[PAD]' (RecBole's id 0), "
                          f"found {tokens[0] if tokens else 'nothing'!r}")
    if len(tokens) != n + 1:
        raise MclrecError(f"{path}: item_id_tokens lists {len(tokens) - 1} items, the dataset has {n}: "
                          "a checkpoint of another dataset?")
    ours = {str(label): i for i, label in enumerate(item_labels, start=1)}
    unknown = [(k, t) for k, t in enumerate(tokens[1:], start=1) if t not in ours]
    if unknown:
        shown = ", ".join(f"row {k}: {t!r}" for k, t in unknown[:5])
        raise MclrecError(f"{path}: item_id_tokens names {len(unknown)} item(s) the dataset does not have ({shown}): "
                          "a checkpoint of another dataset, or of another preprocessing of it?")
    seen: dict[str, int] = {}
    for k, t in enumerate(tokens[1:], start=1):
        if t in seen:
            raise MclrecError(f"{path}: item_id_tokens lists {t!r} twice (rows {seen[t]} and {k})")
        seen[t] = k
    return [ours[t] for t in tokens[1:]]


def recbole_sasrec_config(settings: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """RecBole's names and values for the SASRec settings of a run (`settings`: a checkpoint's resolved settings),
    as plain values: what RecBole's SASRec reads from its Config, and what read_recbole_checkpoint checks the
    weights against. `loss_type` only where RecBole's SASRec has the loss (ce: CE, bpr: BPR; bce has none)."""
    config = {"model": "SASRec", "dataset": dataset, "n_layers": settings["n_layers"], "n_heads": settings["n_heads"],
              "hidden_size": settings["hidden_size"], "inner_size": settings["inner_size"],
              "hidden_dropout_prob": settings["hidden_dropout"], "attn_dropout_prob": settings["attn_dropout"],
              "hidden_act": "gelu", "layer_norm_eps": settings["layer_norm_eps"],
              "initializer_range": settings["initializer_range"], "MAX_ITEM_LIST_LENGTH": settings["max_len"]}
    loss_type = {"ce": "CE", "bpr": "BPR"}.get(settings.get("loss", "ce"))
    if loss_type is not None:
        config["loss_type"] = loss_type
    return config
