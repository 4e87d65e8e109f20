"""Where each stage reads and writes, relative to the project root (one convention for CLI, Snakefile, dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

RAW_ROOT = Path("data/raw")
PROCESSED_ROOT = Path("data/processed")
MODELS_ROOT = Path("models")
RESULTS_ROOT = Path("results")
RUN_BEST, RUN_LAST, RUN_PREV, RUN_LOG, RUN_SUMMARY, RUN_CURVES = (  # the files of a run folder
    "best.pt", "last.pt", "last.prev.pt", "log.jsonl", "summary.json", "curves.json")


def raw_file(dataset: str, filename: str, root: Path = RAW_ROOT) -> Path:
    """The raw interaction file of a dataset."""
    return root / dataset / filename


def processed_dir(dataset: str, root: Path = PROCESSED_ROOT) -> Path:
    """The folder holding a dataset's Parquet splits and stats.json."""
    return root / dataset


def run_dir(dataset: str, variant: str, root: Path = MODELS_ROOT) -> Path:
    """The folder holding a training run's checkpoints and log."""
    return root / dataset / variant


def published_checkpoint(name: str, filename: str, root: Path = MODELS_ROOT) -> Path:
    """Where a published checkpoint declared in params.yaml is stored once downloaded and verified."""
    return root / "published" / name / filename


def result_file(dataset: str, variant: str, root: Path = RESULTS_ROOT) -> Path:
    """The evaluation JSON of a run."""
    return root / dataset / f"{variant}.json"
