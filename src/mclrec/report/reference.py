"""Reference runs committed as evidence: copy a finished run's small files into results/reference/<dataset>/ and
keep a RUNS.md there that says how each was made (machine, torch, threads, git commit, wall time, epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from mclrec.errors import MclrecError
from mclrec.io import atomic_open, atomic_path
from mclrec.paths import RUN_LOG, RUN_SUMMARY
from mclrec.report.aggregate import aggregate_record, load_results

REFERENCE_ROOT = Path("results/reference")
SEED_METRICS = ("HR@10", "HR@20", "NDCG@10", "NDCG@20")  # test metrics RUNS.md lists per run and over seeds


def reference_paths(folder: Path, variant: str, seed: int) -> tuple[Path, Path]:
    """A reference run's results JSON and the folder of its log.jsonl and summary.json: seed 0 as <variant>.json and
    <variant>/ (the layout Table 3 and the README read), seed k > 0 as <variant>/seed<k>.json and <variant>/seed<k>/."""
    if seed == 0:
        return folder / f"{variant}.json", folder / variant
    return folder / variant / f"seed{seed}.json", folder / variant / f"seed{seed}"


def add_reference(dataset: str, variant: str, results_file: Path, run_dir: Path, root: Path = REFERENCE_ROOT,
                  params: dict | None = None) -> Path:
    """Copy a run's results JSON, log.jsonl and summary.json under root/<dataset>/ (reference_paths, by the run's
    seed), then rewrite RUNS.md (with `params`, the validated params.yaml, its settings column too)."""
    for path in (results_file, run_dir / RUN_LOG, run_dir / RUN_SUMMARY):
        if not Path(path).is_file():
            raise MclrecError(f"{path}: missing; a reference run needs the results JSON and the run's log and summary")
    record = json.loads(Path(results_file).read_text())
    if record.get("dataset") != dataset or record.get("variant") != variant:
        raise MclrecError(f"{results_file}: is {record.get('dataset')}/{record.get('variant')}, not {dataset}/{variant}")
    seed = record.get("seed") or 0
    if not isinstance(seed, int) or seed < 0:
        raise MclrecError(f"{results_file}: seed {seed!r} is not a non-negative integer")
    folder = root / dataset
    results_dest, run_dest = reference_paths(folder, variant, seed)
    for source, dest in ((results_file, results_dest), (run_dir / RUN_LOG, run_dest / RUN_LOG),
                         (run_dir / RUN_SUMMARY, run_dest / RUN_SUMMARY)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
    write_runs_table(folder, params)
    return results_dest


def _reference_files(folder: Path) -> list[tuple[Path, Path]]:
    """(results JSON, run folder) of every reference run in `folder`, by variant then seed."""
    found = [(path, folder / path.stem) for path in folder.glob("*.json") if not path.name.endswith(".metrics.json")]
    found += [(path, path.parent / path.stem) for path in folder.glob("*/seed*.json")]
    return sorted(found, key=lambda pair: (_variant_of(pair[0], folder),
                                           json.loads(pair[0].read_text()).get("seed") or 0))


def _variant_of(results_file: Path, folder: Path) -> str:
    """The variant of a reference results JSON in `folder` (<variant>.json or <variant>/seed<k>.json)."""
    return results_file.stem if results_file.parent == folder else results_file.parent.name


def seed_aggregates(folder: Path, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{variant: the seed-aggregate document (aggregate_record: mean, std, n_seeds ...)} for each of `variants` with
    two or more reference seeds in `folder`; `epochs_run` lists each seed's epochs, by seed."""
    by_variant: dict[str, list[Path]] = {}
    for path, _ in _reference_files(folder):
        by_variant.setdefault(_variant_of(path, folder), []).append(path)
    aggregates = {}
    for variant in variants:
        paths = by_variant.get(variant, [])
        if len(paths) < 2:
            continue
        records = load_results(paths)
        doc = aggregate_record(records, paths)
        doc["epochs_run"] = [r.get("epochs_run") for r in records]
        aggregates[variant] = doc
    return aggregates


def runs_rows(folder: Path, params: dict | None = None) -> list[dict[str, Any]]:
    """One row per committed reference run in `folder` (reference_paths' layout), by variant then seed; with
    `params`, each row's `settings` are the --set options that make today's params.yaml train it as it was."""
    rows = []
    for path, run_folder in _reference_files(folder):
        record = json.loads(path.read_text())
        summary_path = run_folder / RUN_SUMMARY
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        # runs trained before the summary recorded its environment: the evaluation's (same machine), and the
        # training threads from the run's settings
        trained_env = summary.get("environment") or record.get("environment", {}).get("training")
        env = trained_env or record.get("environment", {})
        threads = (summary.get("environment") or {}).get("threads") or record.get("config", {}).get("num_threads")
        test = record.get("metrics", {}).get("test", {})
        git = env.get("git") or {}
        commit = (git.get("commit") or "")[:10] + ("-dirty" if git.get("dirty") else "")
        rows.append({
            "variant": record.get("variant"), "seed": record.get("seed"), "epochs": summary.get("epochs_run"),
            "best": summary.get("best_epoch"), "stopped": summary.get("stopped", ""),
            "hours": (summary.get("train_seconds") or 0) / 3600, "cpu": env.get("cpu"), "threads": threads or env.get("threads"),
            "torch": env.get("torch"), "commit": commit + ("" if trained_env else " (evaluation's)"),
            "settings": None if params is None else settings_to_reproduce(record, summary, params, folder.name),
            **{metric: test.get(metric) for metric in SEED_METRICS},
        })
    return rows


def settings_to_reproduce(record: dict[str, Any], summary: dict[str, Any], params: dict, dataset: str) -> str:
    """The `--set key=value` options under which today's params.yaml resolves the run's dataset and variant to the
    settings it was trained with (provenance.settings_beyond_params), "" when none are needed, "?" when params.yaml
    no longer declares the dataset or variant."""
    from mclrec.provenance import settings_beyond_params
    from mclrec.run_options import set_options

    beyond = settings_beyond_params(record.get("config", {}), params, dataset, record.get("variant"),
                                    summary.get("device"))
    return "?" if beyond is None else set_options(beyond)


def seed_spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant with two or more seeds: the seeds, and mean and sample sd (ddof 1) of each SEED_METRICS."""
    spread = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant and all(r[m] is not None for m in SEED_METRICS)]
        if len(mine) < 2:
            continue
        stats = {}
        for metric in SEED_METRICS:
            values = [r[metric] for r in mine]
            mean = sum(values) / len(values)
            stats[metric] = (mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5)
        spread.append({"variant": variant, "seeds": [r["seed"] for r in mine], **stats})
    return spread


def write_runs_table(folder: Path, params: dict | None = None) -> None:
    """RUNS.md: how every reference run in `folder` was made, then mean ± sd over seeds where a variant has several;
    with `params`, the settings column (settings_to_reproduce)."""
    rows = runs_rows(folder, params)
    lines = ["# Reference runs", "",
             "Each was trained by the workflow (`snakemake results/<dataset>/<variant>.json` for seed 0, "
             "`results/<dataset>/<variant>/seed<k>.json` for seed k: `mclrec train ... --seed <k>`, then `mclrec "
             "evaluate`) with the torch threads listed, on the CPU listed, and added with `mclrec report reference` "
             "(seed 0 as `<variant>.json` and `<variant>/`, seed k > 0 as `<variant>/seed<k>.json` and "
             "`<variant>/seed<k>/`). commit: the training's git commit (`-dirty`: with uncommitted changes; "
             "\"evaluation's\": the run predates the training's own record, so CPU, torch and commit are its "
             "evaluation's). settings: the `--set` options with which today's params.yaml trains the run as it was "
             "trained (defaults changed since; none: it resolves to them as it is).", "",
             "| variant | seed | epochs (best) | stopped | train hours | CPU | threads | torch | commit | settings "
             "| test HR@10 | test HR@20 | test NDCG@10 | test NDCG@20 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        metrics = " | ".join(f"{r[m]:.4f}" if r[m] is not None else "-" for m in SEED_METRICS)
        settings = "-" if r["settings"] is None else f"`{r['settings']}`" if r["settings"] else "none"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} ({r['best']}) | {r['stopped']} | {r['hours']:.2f} "
                     f"| {r['cpu']} | {r['threads']} | {r['torch']} | {r['commit']} | {settings} | {metrics} |")
    spread = seed_spread(rows)
    if spread:
        lines += ["", "## Over seeds", "", "Mean ± sample standard deviation of the test metrics over the seeds above.", "",
                  "| variant | seeds | " + " | ".join(f"test {m}" for m in SEED_METRICS) + " |",
                  "|---|---|" + "---|" * len(SEED_METRICS)]
        for r in spread:
            cells = " | ".join(f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in SEED_METRICS)
            lines.append(f"| {r['variant']} | {', '.join(map(str, r['seeds']))} | {cells} |")
    with atomic_open(folder / "RUNS.md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
