"""Where each stage reads and writes, relative to the project root: the one convention for the CLI, the Snakefile
and dvc.yaml (both workflows build their paths from the patterns below, see mclrec.pipeline).

A *run* is a training: `models/<dataset>/<run>/seed<k>/`, where <run> is a variant name or a lambda x beta grid
cell `grid/l<lambda>-b<beta>`. Its evaluation is `results/<dataset>/<run>/seed<k>.json`; the single-run result
`results/<dataset>/<variant>.json` evaluates the run of seed `train.seed`, so it trains nothing of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

RAW_ROOT = Path("data/raw")
PROCESSED_ROOT = Path("data/processed")
MODELS_ROOT = Path("models")
RESULTS_ROOT = Path("results")
RUN_BEST, RUN_LAST, RUN_PREV, RUN_LOG, RUN_SUMMARY, RUN_CURVES = (  # the files of a run folder
    "best.pt", "last.pt", "last.prev.pt", "log.jsonl", "summary.json", "curves.json")
PROCESSED_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet", "users.parquet", "stats.json")

# Path patterns with {placeholders}; `{result}` is `<run>/seed<k>` or a single-run name.
RAW = "data/raw/{dataset}/{filename}"
PROCESSED = "data/processed/{dataset}/{name}"
RUN_DIR = "models/{dataset}/{run}/seed{seed}"
PUBLISHED = "models/published/{checkpoint}/{filename}"
RESULT = "results/{dataset}/{result}.json"
RESULT_METRICS = "results/{dataset}/{result}.metrics.json"
RESULT_RANKS = "results/{dataset}/{result}.ranks.npy"
SEED_RESULTS = "results/{dataset}/{run}"  # the folder of a run's seed<k>.json
AGGREGATE = "results/aggregate/{dataset}/{run}.json"
AGGREGATE_METRICS = "results/aggregate/{dataset}/{run}.metrics.json"
AGGREGATE_RANKS = "results/aggregate/{dataset}/{run}.ranks.npy"
GRID_RUN = "grid/l{lam}-b{beta}"
LOG = "logs/{name}.log"  # a workflow job's stderr


def raw_file(dataset: str, filename: str, root: Path = RAW_ROOT) -> Path:
    """The raw interaction file of a dataset."""
    return root / dataset / filename


def processed_dir(dataset: str, root: Path = PROCESSED_ROOT) -> Path:
    """The folder holding a dataset's Parquet splits and stats.json."""
    return root / dataset


def run_dir(dataset: str, run: str, seed: int, root: Path = MODELS_ROOT) -> Path:
    """The folder holding one training's checkpoints and log: models/<dataset>/<run>/seed<seed>."""
    return root / dataset / run / f"seed{seed}"


def run_of_run_dir(checkpoint: Path) -> str | None:
    """The run a checkpoint in a run folder (<root>/<dataset>/<run>/seed<k>/<file>) belongs to: its variant, or
    grid/<cell> for a grid cell; None for a file outside that layout."""
    seed_dir = Path(checkpoint).parent
    if not re.fullmatch(r"seed\d+", seed_dir.name):
        return None
    run = seed_dir.parent
    return f"grid/{run.name}" if run.parent.name == "grid" else run.name


def grid_run(lam: float | str, beta: float | str) -> str:
    """The run name of a lambda x beta grid cell (Fig. 6)."""
    return GRID_RUN.format(lam=lam, beta=beta)


def published_checkpoint(name: str, filename: str, root: Path = MODELS_ROOT) -> Path:
    """Where a published checkpoint declared in params.yaml is stored once downloaded and verified."""
    return root / "published" / name / filename


def result_file(dataset: str, result: str, root: Path = RESULTS_ROOT) -> Path:
    """The evaluation JSON of a single run (`<variant>`) or of one seed (`<run>/seed<k>`)."""
    return root / dataset / f"{result}.json"


def seed_result(run: str, seed: int) -> str:
    """The result name of seed `seed` of `run`."""
    return f"{run}/seed{seed}"
