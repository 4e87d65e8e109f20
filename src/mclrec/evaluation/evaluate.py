"""Evaluate a checkpoint (ours or RecBole's) on valid and test, with optional robustness studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from mclrec.data.processed import ProcessedData
from mclrec.environment import run_environment
from mclrec.errors import MclrecError
from mclrec.evaluation.metrics import metrics_from_ranks
from mclrec.evaluation.ranking import rank_all
from mclrec.evaluation.robustness import insert_noise, length_groups
from mclrec.io import atomic_path, sha256_file, write_json, write_metrics
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.recbole import encoder_from_recbole_file
from mclrec.data.instances import eval_instances
from mclrec.checkpoint import load_checkpoint
from mclrec.device import resolve_device
from mclrec.models.parts import build_parts
from mclrec.paths import RUN_SUMMARY


def load_encoder(path: Path, fmt: str, data: ProcessedData, device: torch.device,
                 n_heads: Optional[int] = None) -> tuple[SASRecEncoder, dict[str, Any]]:
    """The encoder stored in a checkpoint, checked against the dataset's item count, and the checkpoint's metadata.

    `n_heads`: the attention heads of a RecBole file that carries no config (its weights do not show them).
    """
    if fmt == "recbole":
        encoder = encoder_from_recbole_file(path, data.n_items, n_heads)
        meta: dict[str, Any] = {"config": {"model": "sasrec-family (recbole checkpoint)"}}
    elif fmt == "mclrec":
        meta = load_checkpoint(path)
        if meta["n_items"] != data.n_items:
            raise MclrecError(f"{path}: checkpoint was trained with {meta['n_items']} items, "
                              f"but the dataset has {data.n_items} (checkpoint from another dataset?)")
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
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Full-ranking metrics on valid and test (plus noise and length-group results), the per-user test ranks and
    the checkpoint's metadata (its config, state)."""
    dev = resolve_device(device)
    encoder, meta = load_encoder(checkpoint, fmt, data, dev, n_heads)
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
                 n_heads: Optional[int] = None) -> tuple[dict[str, Any], np.ndarray]:
    """What `mclrec evaluate` writes for one checkpoint: the results document and the per-user test ranks.

    `variant` names the run when the checkpoint does not (a RecBole file or a published checkpoint).
    """
    result, ranks, meta = evaluate_checkpoint(data, checkpoint, fmt, device, batch_size, ks, noise, groups, seed, n_heads)
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
        "config": cfg,
        "checkpoint": str(checkpoint),
        "checkpoint_format": fmt,
        "checkpoint_sha256": sha256_file(checkpoint),
        "data": {"n_users": data.n_users, "n_items": data.n_items, "raw_sha256": data.stats.get("raw_sha256")},
        "environment": {**run_environment(torch.get_num_threads()), "device": summary.get("device"),
                        "training": summary.get("environment")},
    }


def write_results(path: Path, record: dict[str, Any], test_ranks: Optional[np.ndarray] = None) -> None:
    """Write the results JSON (and, if given, per-user test ranks beside it as .ranks.npy) atomically."""
    if test_ranks is not None:
        with atomic_path(path.with_suffix(".ranks.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, test_ranks.astype(np.int64))
    write_json(path, record)
    write_metrics(path, record)
