"""Reference runs committed as evidence: copy a finished run's small files into results/reference/<dataset>/ and
keep a RUNS.md there that says how each was made (machine, torch, threads, git commit, wall time, epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mclrec.errors import MclrecError
from mclrec.io import atomic_open, atomic_path
from mclrec.paths import RUN_LOG, RUN_SUMMARY

REFERENCE_ROOT = Path("results/reference")


def add_reference(dataset: str, variant: str, results_file: Path, run_dir: Path, root: Path = REFERENCE_ROOT) -> Path:
    """Copy a run's results JSON, log.jsonl and summary.json under root/<dataset>/, then rewrite RUNS.md."""
    for path in (results_file, run_dir / RUN_LOG, run_dir / RUN_SUMMARY):
        if not Path(path).is_file():
            raise MclrecError(f"{path}: missing; a reference run needs the results JSON and the run's log and summary")
    record = json.loads(Path(results_file).read_text())
    if record.get("dataset") != dataset or record.get("variant") != variant:
        raise MclrecError(f"{results_file}: is {record.get('dataset')}/{record.get('variant')}, not {dataset}/{variant}")
    folder = root / dataset
    for source, dest in ((results_file, folder / f"{variant}.json"), (run_dir / RUN_LOG, folder / variant / RUN_LOG),
                         (run_dir / RUN_SUMMARY, folder / variant / RUN_SUMMARY)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
    write_runs_table(folder)
    return folder / f"{variant}.json"


def runs_rows(folder: Path) -> list[dict[str, Any]]:
    """One row per committed reference run in `folder` (a <variant>.json with its <variant>/summary.json)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".metrics.json"):
            continue
        record = json.loads(path.read_text())
        summary_path = folder / path.stem / RUN_SUMMARY
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        # runs trained before the summary recorded its environment: the evaluation's (same machine), and the
        # training threads from the run's settings
        env = summary.get("environment") or record.get("environment", {}).get("training") or record.get("environment", {})
        threads = (summary.get("environment") or {}).get("threads") or record.get("config", {}).get("num_threads")
        test = record.get("metrics", {}).get("test", {})
        rows.append({
            "variant": record.get("variant"), "seed": record.get("seed"), "epochs": summary.get("epochs_run"),
            "best": summary.get("best_epoch"), "stopped": summary.get("stopped", ""),
            "hours": (summary.get("train_seconds") or 0) / 3600, "cpu": env.get("cpu"), "threads": threads or env.get("threads"),
            "torch": env.get("torch"), "commit": ((env.get("git") or {}).get("commit") or "")[:10],
            "HR@20": test.get("HR@20"), "NDCG@20": test.get("NDCG@20"),
        })
    return rows


def write_runs_table(folder: Path) -> None:
    """RUNS.md: how every reference run in `folder` was made."""
    lines = ["# Reference runs", "",
             "Each was trained with `snakemake --cores 1 results/<dataset>/<variant>/seed<k>.json` (the study's seed "
             "run: `mclrec train ... --seed <k>` then `mclrec report evaluate-seed`), with `num_threads: 1`, on the "
             "machine below, and added with `mclrec report reference`.", "",
             "| variant | seed | epochs (best) | stopped | train hours | CPU | threads | torch | commit | test HR@20 | test NDCG@20 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs_rows(folder):
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} ({r['best']}) | {r['stopped']} | {r['hours']:.2f} "
                     f"| {r['cpu']} | {r['threads']} | {r['torch']} | {r['commit']} | {r['HR@20']:.4f} | {r['NDCG@20']:.4f} |")
    with atomic_open(folder / "RUNS.md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
