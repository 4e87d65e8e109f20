"""Seed aggregation: mean, sample std and 95% t-interval of every metric, written in the single-run schema."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from mclrec.errors import MclrecError
from mclrec.io import atomic_open, write_json, write_metrics

Nested = Mapping[str, Mapping[str, float]]


class AggregateError(MclrecError, ValueError):
    """Seed results that cannot be aggregated (unreadable, or not seeds of one run); the message names the files."""


def load_results(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The results JSON documents at `paths`, in the given order."""
    records = []
    for path in paths:
        try:
            records.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AggregateError(f"{path}: not a readable results JSON ({exc})") from None
    return records


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof=1; 0 for one value), n and 95% t-interval [lo, hi] (None for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarise: no values")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "std": 0.0, "n": 1, "ci95": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, x.size - 1)) * std / math.sqrt(x.size)
    return {"mean": mean, "std": std, "n": int(x.size), "ci95": [mean - half, mean + half]}


def summarise_nested(trees: Sequence[Nested]) -> dict[str, dict[str, dict[str, Any]]]:
    """summarise() per (outer, inner) key of {outer: {inner: value}} dicts; only keys present in every tree."""
    outer_keys = [k for k in trees[0] if all(k in t for t in trees)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for outer in outer_keys:
        inner_keys = [k for k in trees[0][outer] if all(k in t[outer] for t in trees)]
        out[outer] = {inner: summarise([t[outer][inner] for t in trees]) for inner in inner_keys}
    return out


def aggregate_seeds(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per split and metric: {"mean", "std", "n", "ci95"} over the records (one per seed)."""
    if not records:
        raise ValueError("aggregate_seeds: no records")
    return summarise_nested([r["metrics"] for r in records])


def _field(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], name: str) -> dict[str, dict[str, Any]]:
    """One field ("mean", "std", "ci95") of a nested summary, in the nested shape."""
    return {outer: {inner: s[name] for inner, s in inners.items()} for outer, inners in summary.items()}


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values, or None when any is missing."""
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _check_same_run(records: Sequence[Mapping[str, Any]], paths: Sequence[str | os.PathLike] = ()) -> None:
    """Raise AggregateError (naming `paths`) unless the records share dataset and variant and have distinct seeds."""
    files = f" ({', '.join(map(str, paths))})" if paths else ""
    for key in ("dataset", "variant"):
        if len({r.get(key) for r in records}) > 1:
            raise AggregateError(f"cannot aggregate runs of different {key}s: "
                                 f"{sorted({str(r.get(key)) for r in records})}{files}")
    seeds = [r.get("seed") for r in records if r.get("seed") is not None]
    if len(seeds) != len(set(seeds)):
        raise AggregateError(f"cannot aggregate: repeated seeds {seeds}{files}")


def aggregate_record(records: Sequence[Mapping[str, Any]], paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The multi-seed results document: `metrics` (and noise/groups) as means, plus std, ci95, seeds and runs.

    `train_seconds` is the mean per seed; `best_epochs` lists each seed's best epoch.
    """
    if not records:
        raise ValueError("aggregate_record: no records")
    _check_same_run(records, paths)
    summary = aggregate_seeds(records)
    first = records[0]
    doc: dict[str, Any] = {
        "dataset": first.get("dataset"),
        "variant": first.get("variant"),
        "model": first.get("model"),
        "seeds": [r.get("seed") for r in records],
        "n_seeds": len(records),
        "metrics": _field(summary, "mean"),
        "metrics_std": _field(summary, "std"),
        "metrics_ci95": _field(summary, "ci95"),
        "best_epochs": [r.get("best_epoch") for r in records],
        "train_seconds": _mean_or_none([r.get("train_seconds") for r in records]),
        "config": {k: v for k, v in first.get("config", {}).items() if k != "seed"},
        "runs": [str(p) for p in paths],
    }
    beyond = {str(r.get("seed")): r["settings_beyond_params"] for r in records if r.get("settings_beyond_params")}
    if beyond:  # per seed: which seeds were trained with settings params.yaml did not give the run at evaluation
        doc["settings_beyond_params_by_seed"] = beyond
    for key in ("noise", "groups"):
        if all(key in r for r in records):
            nested = summarise_nested([r[key] for r in records])
            doc[key], doc[f"{key}_std"] = _field(nested, "mean"), _field(nested, "std")
    return doc


def seed_paths(run_dir: str | os.PathLike, seeds: Iterable[int]) -> list[Path]:
    """The per-seed results JSONs `<run_dir>/seed<k>.json` of a study run, in seed order."""
    return [Path(run_dir) / f"seed{k}.json" for k in seeds]


def ranks_path(result_path: str | os.PathLike) -> Path:
    """The per-user test ranks file beside a results JSON (`<stem>.ranks.npy`)."""
    return Path(result_path).with_suffix(".ranks.npy")


def stacked_ranks(seed_results: Sequence[str | os.PathLike]) -> np.ndarray | None:
    """[seeds, users] test ranks of the seed runs; None when any seed has no ranks file."""
    files = [ranks_path(p) for p in seed_results]
    return np.stack([_load_npy(f) for f in files]) if all(f.is_file() for f in files) else None


def _load_npy(path: Path) -> np.ndarray:
    """np.load of a ranks file; AggregateError naming it when it is truncated or not a .npy file."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise AggregateError(f"{path}: not a readable ranks file ({exc})") from None


def write_aggregate(seed_results: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> dict[str, Any]:
    """Aggregate the per-seed results JSONs into `out_path` and their stacked ranks beside it (atomically)."""
    doc = aggregate_record(load_results(seed_results), seed_results)
    ranks = stacked_ranks(seed_results)
    if ranks is not None:
        with atomic_open(ranks_path(out_path), "wb") as fh:
            np.save(fh, ranks, allow_pickle=False)
    write_json(out_path, doc)
    write_metrics(out_path, doc)
    return doc


def load_ranks(result_path: str | os.PathLike) -> np.ndarray | None:
    """Per-user test ranks beside a results JSON: [users] for a run, [seeds, users] for an aggregate (None: missing)."""
    path = ranks_path(result_path)
    return _load_npy(path) if path.is_file() else None


SINGLE_RUN = "{dataset}/{variant}.json"
SEED_AGGREGATE = "aggregate/{dataset}/{variant}.json"


def load_index(results_root: str | os.PathLike, datasets: Sequence[str], variants: Sequence[str],
               pattern: str = SINGLE_RUN) -> dict[tuple[str, str], dict[str, Any] | None]:
    """{(dataset, variant): results document or None} from `<root>/<pattern>` (single run or seed aggregate)."""
    index: dict[tuple[str, str], dict[str, Any] | None] = {}
    for d in datasets:
        for v in variants:
            path = Path(results_root) / pattern.format(dataset=d, variant=v)
            index[(d, v)] = load_results([path])[0] if path.is_file() else None
    return index


def load_ranks_index(results_root: str | os.PathLike, datasets: Sequence[str], variants: Sequence[str],
                     pattern: str = SINGLE_RUN) -> dict[tuple[str, str], np.ndarray | None]:
    """{(dataset, variant): per-user test ranks or None} for `<root>/<pattern>`."""
    return {(d, v): load_ranks(Path(results_root) / pattern.format(dataset=d, variant=v))
            for d in datasets for v in variants}
