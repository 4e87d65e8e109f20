"""Evaluate a checkpoint (ours or RecBole's) on valid and test, with optional robustness studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from mclrec.cpu_heap import keep_freed_memory
from mclrec.vector_math import resolve_vector_math
from mclrec.data.processed import ProcessedData
from mclrec.environment import run_environment
from mclrec.errors import MclrecError
from mclrec.export import BENCHMARK_FILENAME as EXPORT_BENCHMARK
from mclrec.evaluation.metrics import metrics_from_ranks
from mclrec.evaluation.ranking import rank_all
from mclrec.evaluation.robustness import insert_noise, length_groups
from mclrec.io import atomic_paths, dump_json, metrics_only, metrics_path, naming, sha256_file
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.recbole import RecBoleFile, encoder_from_recbole_file, item_order_from_tokens, read_recbole_file
from mclrec.data.instances import eval_instances
from mclrec.checkpoint import check_catalogue, load_checkpoint
from mclrec.device import resolve_device
from mclrec.models.parts import build_parts
from mclrec.paths import RUN_SUMMARY


ITEM_ORDERS = ("dataset", "recbole-export")


def recbole_item_rows(file: RecBoleFile, data: ProcessedData, item_order: Optional[str] = None,
                      item_labels: Optional[Sequence[str]] = None) -> tuple[Optional[list[int]], str]:
    """Which of our items each item row of a RecBole file holds: (None when rows 1..n are our items 1..n, else our
    item id of rows 1..n), and how that was decided (recorded as `config.item_order` in the results).

    - The file lists its rows' original ids (`item_id_tokens`, as `mclrec export recbole-checkpoint` writes them):
      they are checked against the dataset's items (`item_labels`, the original id of our item i at i - 1) and
      used; an explicit `item_order` that says otherwise is an error naming the first row where they differ.
    - `item_order="recbole-export"`: RecBole's own numbering of `mclrec export recbole`'s files of this dataset
      (mclrec.export.recbole_item_order), for a SASRec RecBole trained on them. Refused when the file's pickled
      config shows RecBole read other files (a benchmark_filename other than [train, valid, test], or none: RecBole
      split one atomic file itself).
    - `item_order="dataset"`: rows are in our item ids (the published checkpoint, RecBole 0.2 files).
    - None (not said): "dataset", except for a file whose pickled config says `benchmark_filename: [train, valid,
      test]`: RecBole then numbered the items itself from benchmark files, most likely the export's, and the rows
      are not in our ids; which numbering is not guessed: an error asks for --item-order.
    """
    if item_order is not None and item_order not in ITEM_ORDERS:
        raise MclrecError(f"unknown item order {item_order!r} (use {' or '.join(ITEM_ORDERS)})")
    path, settings, ours = file.path, file.settings, list(range(1, data.n_items + 1))

    def export_rows() -> list[int]:
        from mclrec.export import recbole_item_order

        return recbole_item_order(data).tolist()

    if file.item_id_tokens is not None:
        if item_labels is None:
            raise MclrecError(f"{path}: the file lists its items' original ids (item_id_tokens); checking them needs "
                              "the dataset's item ids (item_labels)")
        rows = item_order_from_tokens(file.item_id_tokens, item_labels, path)
        said = {"recbole-export": export_rows, "dataset": lambda: ours}[item_order]() if item_order else rows
        if said != rows:
            k = next(k for k, (a, b) in enumerate(zip(rows, said), start=1) if a != b)
            differ = sum(a != b for a, b in zip(rows, said))
            raise MclrecError(
                f"{path}: its item_id_tokens contradict --item-order {item_order}: row {k} holds item "
                f"{file.item_id_tokens[k]!r} (our item {rows[k - 1]}), --item-order {item_order} puts item "
                f"{item_labels[said[k - 1] - 1]!r} (our item {said[k - 1]}) there ({differ} of {len(rows)} rows "
                "differ); leave --item-order out to use the file's own list")
        return (None if rows == ours else rows), "item_id_tokens"
    benchmark = settings.get("benchmark_filename")
    if item_order == "recbole-export":
        if "benchmark_filename" in settings and benchmark != EXPORT_BENCHMARK:
            raise MclrecError(
                f"{path}: --item-order recbole-export is RecBole's numbering of `mclrec export recbole`'s files "
                f"(benchmark_filename {EXPORT_BENCHMARK!r}), but the checkpoint's RecBole config says "
                f"benchmark_filename {benchmark!r} (dataset {settings.get('dataset')!r}): RecBole numbered the items "
                "of other files")
        return export_rows(), item_order
    if item_order is None and benchmark == EXPORT_BENCHMARK:
        raise MclrecError(
            f"{path}: the checkpoint's RecBole config says dataset {settings.get('dataset')!r}, benchmark_filename "
            f"{EXPORT_BENCHMARK!r}: RecBole numbered the items itself, in the order they first appear in those files, "
            "so its item rows are not in this dataset's item ids. Say which numbering they use: --item-order "
            "recbole-export (RecBole trained on `mclrec export recbole`'s files of this dataset) or --item-order "
            "dataset (the rows are in our item ids after all)")
    return None, "dataset"


def load_encoder(path: Path, fmt: str, data: ProcessedData, device: torch.device,
                 n_heads: Optional[int] = None, item_order: Optional[str] = None,
                 item_labels: Optional[Sequence[str]] = None) -> tuple[SASRecEncoder, dict[str, Any]]:
    """The encoder stored in a checkpoint, checked against the dataset's item count, and the checkpoint's metadata.

    `n_heads`: the attention heads of a RecBole file that carries no config (its weights do not show them).
    `item_order`, `item_labels`: the item numbering of a RecBole file's rows (see recbole_item_rows); the rows are
    moved to our item ids before anything is scored, and `config.item_order` records how they were read.
    """
    if fmt == "recbole":
        file = read_recbole_file(path)
        rows, how = recbole_item_rows(file, data, item_order, item_labels)
        encoder = encoder_from_recbole_file(file, data.n_items, n_heads, item_order=rows)
        meta: dict[str, Any] = {"config": {"model": "sasrec-family (recbole checkpoint)", "item_order": how}}
    elif fmt == "mclrec":
        if item_order not in (None, "dataset"):
            raise MclrecError(f"--item-order {item_order} applies to RecBole checkpoints (--checkpoint-format "
                              "recbole); an mclrec checkpoint's rows are in the dataset's item ids")
        meta = load_checkpoint(path)
        check_catalogue(path, meta, data)
        encoder = build_parts(meta["config"], meta["n_items"]).encoder
        encoder.load_state_dict(meta["modules"]["encoder"])
    else:
        raise MclrecError(f"unknown checkpoint format '{fmt}' (use mclrec or recbole)")
    if encoder.n_items != data.n_items:
        raise MclrecError(f"{path}: checkpoint has {encoder.n_items} items, the dataset has {data.n_items}")
    return encoder.to(device).eval(), meta


def evaluate_checkpoint(
    data: ProcessedData,
    checkpoint: Path,
    fmt: str = "mclrec",
    device: str = "auto",
    batch_size: int = 2048,
    ks: tuple[int, ...] = (5, 10, 20, 50),
    noise: tuple[float, ...] = (),
    groups: bool = False,
    seed: int = 0,
    n_heads: Optional[int] = None,
    item_order: Optional[str] = None,
    item_labels: Optional[Sequence[str]] = None,
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Full-ranking metrics on valid and test (plus noise and length-group results), the per-user test ranks and
    the checkpoint's metadata (its config, state). `item_order`, `item_labels`: see load_encoder."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    resolve_vector_math()
    encoder, meta = load_encoder(checkpoint, fmt, data, dev, n_heads, item_order, item_labels)
    buckets = meta["config"].get("length_buckets", [])  # the run's own exact speed-up; none for RecBole files
    valid, test = eval_instances(data, "valid", dev), eval_instances(data, "test", dev)
    test_ranks = rank_all(encoder, test, batch_size, buckets)
    result: dict[str, Any] = {
        "metrics": {"valid": metrics_from_ranks(rank_all(encoder, valid, batch_size, buckets), ks),
                    "test": metrics_from_ranks(test_ranks, ks)},
    }
    if noise:
        generator = torch.Generator(device=dev).manual_seed(seed)
        result["noise"] = {
            f"{ratio:g}": metrics_from_ranks(rank_all(encoder, insert_noise(test, ratio, data.n_items, data.max_len, generator), batch_size, buckets), ks)
            for ratio in noise
        }
    if groups:
        total = np.diff(data.train.offsets) + 3
        result["groups"] = {
            name: {"n_users": int(mask.sum()), **(metrics_from_ranks(test_ranks[torch.as_tensor(mask)], ks) if mask.any() else {})}
            for name, mask in length_groups(total).items()
        }
    return result, test_ranks.numpy(), meta


def evaluate_run(dataset: str, data: ProcessedData, checkpoint: Path, fmt: str = "mclrec", device: str = "auto",
                 batch_size: int = 2048, ks: tuple[int, ...] = (5, 10, 20, 50), noise: tuple[float, ...] = (),
                 groups: bool = False, seed: int = 0, variant: Optional[str] = None,
                 n_heads: Optional[int] = None, item_order: Optional[str] = None,
                 item_labels: Optional[Sequence[str]] = None) -> tuple[dict[str, Any], np.ndarray]:
    """What `mclrec evaluate` writes for one checkpoint: the results document and the per-user test ranks.

    `variant` names the run when the checkpoint does not (a RecBole file or a published checkpoint).
    """
    result, ranks, meta = evaluate_checkpoint(data, checkpoint, fmt, device, batch_size, ks, noise, groups, seed,
                                              n_heads, item_order, item_labels)
    record = results_record(dataset, result, meta, checkpoint, fmt, data)
    if record["variant"] is None:
        record["variant"] = variant
    return record, ranks


def results_record(dataset: str, result: dict[str, Any], meta: dict[str, Any], checkpoint: Path, fmt: str,
                   data: ProcessedData) -> dict[str, Any]:
    """The results JSON document (schema in README.md) from evaluate_checkpoint's result and metadata."""
    cfg = meta.get("config", {})
    summary_path = checkpoint.parent / RUN_SUMMARY
    summary = json.loads(summary_path.read_text()) if fmt == "mclrec" and summary_path.is_file() else {}
    state = meta.get("state", {})
    return {
        "dataset": dataset,
        "variant": cfg.get("variant"),
        "model": cfg.get("model"),
        "seed": cfg.get("seed"),
        **result,
        "best_epoch": summary.get("best_epoch", state.get("best_epoch")),
        "epochs_run": summary.get("epochs_run"),
        "train_seconds": summary.get("train_seconds", state.get("train_seconds")),
        "stopped": summary.get("stopped"),
        # processes the run trained over (runs from before multi-process training: 1); None for RecBole files
        "world_size": summary.get("world_size", meta.get("world_size", 1)) if fmt == "mclrec" else None,
        "config": cfg,
        "checkpoint": str(checkpoint),
        "checkpoint_format": fmt,
        "checkpoint_sha256": sha256_file(checkpoint),
        "data": {"n_users": data.n_users, "n_items": data.n_items, "raw_sha256": data.stats.get("raw_sha256")},
        "environment": {**run_environment(torch.get_num_threads()), "device": summary.get("device"),
                        "training": summary.get("environment")},
    }


def write_results(path: Path, record: dict[str, Any], test_ranks: Optional[np.ndarray] = None) -> None:
    """Write the results JSON, its .metrics.json and, if given, the per-user test ranks as .ranks.npy, together
    (io.atomic_paths): a failure while writing any of them leaves all three as they were."""
    ranks = path.with_suffix(".ranks.npy")
    targets = [path, metrics_path(path)] + ([ranks] if test_ranks is not None else [])
    with atomic_paths(*targets) as temps:
        with naming(path):
            dump_json(temps[0], record)
        with naming(targets[1]):
            dump_json(temps[1], metrics_only(record))
        if test_ranks is not None:
            with naming(ranks), open(temps[2], "wb") as fh:
                np.save(fh, test_ranks.astype(np.int64))
