"""Tables 3 and 4: published vs our numbers per dataset and metric, as Markdown and a tidy DataFrame."""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mclrec.io import atomic_open
from mclrec.report.formatting import MISSING, fmt_mean_std, fmt_p, fmt_pct, fmt_value, is_missing, markdown_grid
from mclrec.report.published import SAME_PROTOCOL, kind, published
from mclrec.report.significance import paired_test
from mclrec.run_options import set_options

ResultsIndex = Mapping[tuple[str, str], Mapping[str, Any] | None]
RanksIndex = Mapping[tuple[str, str], np.ndarray | None]

TABLE3_VARIANTS = ("sasrec", "sasrec-bpr", "sasrec-bce", "cl4srec", "cl4srec-orig", "duorec", "mclrec")
TABLE3_METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
TABLE4_VARIANTS = ("mclrec", "mclrec-no-cl1", "mclrec-no-cl2", "mclrec-no-reg", "mclrec-shared")
TABLE4_METRICS = ("HR@20", "NDCG@20")
TARGET = "mclrec"
IMPROVEMENT_ROW = "mclrec vs best same-protocol baseline"
COLUMNS = ("row", "kind", "dataset", "metric", "published", "ours_mean", "ours_std", "n_seeds", "rel_diff",
           "best_baseline", "improvement", "improvement_published", "wilcoxon_p", "ttest_p", "n_users",
           "settings_beyond_params")
BEYOND_MARK = "†"
NAN = float("nan")


def ours(record: Mapping[str, Any] | None, metric: str, split: str = "test") -> tuple[float, float, int]:
    """(mean, std, n_seeds) of a metric in a run or aggregate document; (nan, nan, 0) when missing."""
    if not record or metric not in record.get("metrics", {}).get(split, {}):
        return NAN, NAN, 0
    std = record.get("metrics_std", {}).get(split, {}).get(metric, 0.0)
    return float(record["metrics"][split][metric]), float(std), int(record.get("n_seeds", 1))


def beyond_params(record: Mapping[str, Any] | None) -> str:
    """The `--set` options a result's training had beyond what params.yaml gives its run now (as `mclrec evaluate`
    recorded them: settings_beyond_params, per seed in an aggregate), "" when none were recorded."""
    if not record:
        return ""
    if record.get("settings_beyond_params"):
        return set_options(record["settings_beyond_params"])
    by_seed = record.get("settings_beyond_params_by_seed") or {}
    return "; ".join(f"seed {seed}: {set_options(settings)}" for seed, settings in by_seed.items())


def _quoted_options(settings: str) -> str:
    """beyond_params' text with each seed's options as code: "`--set a=1`" or "seed 1: `--set a=1`; seed 2: ..."."""
    if not settings.startswith("seed "):
        return f"`{settings}`"
    parts = re.split(r"; (?=seed \S+: --set )", settings)  # beyond_params' joins, not a "; " inside a value
    return "; ".join(f"{seed}: `{options}`" for seed, options in (part.split(": ", 1) for part in parts))


def rel_diff(value: float | None, reference: float | None) -> float:
    """(value - reference) / reference, or nan when either is missing or the reference is 0."""
    if is_missing(value) or is_missing(reference) or reference == 0:
        return NAN
    return (value - reference) / reference


def _pub(dataset: str, variant: str, metric: str) -> float:
    """published() with nan for missing."""
    value = published(dataset, variant, metric)
    return NAN if value is None else value


def comparison_rows(index: ResultsIndex, datasets: Sequence[str], variants: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One tidy row per (variant, dataset, metric): published, our mean/std/n and relative difference."""
    rows = []
    for variant in variants:
        for dataset in datasets:
            for metric in metrics:
                record = index.get((dataset, variant))
                mean, std, n = ours(record, metric)
                pub = _pub(dataset, variant, metric)
                rows.append({"row": variant, "kind": kind(variant), "dataset": dataset, "metric": metric, "published": pub, "ours_mean": mean,
                             "ours_std": std, "n_seeds": n, "rel_diff": rel_diff(mean, pub),
                             "settings_beyond_params": beyond_params(record)})
    return rows


def _best(values: Mapping[str, float]) -> str | None:
    """The key with the largest non-missing value (first on ties), or None."""
    present = {k: v for k, v in values.items() if not is_missing(v)}
    return max(present, key=present.__getitem__) if present else None


def _split_metric(metric: str) -> tuple[str, int]:
    """"NDCG@20" -> ("NDCG", 20)."""
    name, k = metric.split("@")
    return name, int(k)


def improvement_row(index: ResultsIndex, ranks: RanksIndex, dataset: str, metric: str, baselines: Sequence[str]) -> dict[str, Any]:
    """mclrec's relative improvement over the best of `baselines` (ours and published) and the paired-test p-values."""
    target, _, _ = ours(index.get((dataset, TARGET)), metric)
    best = _best({b: ours(index.get((dataset, b)), metric)[0] for b in baselines})
    pub_best = _best({b: _pub(dataset, b, metric) for b in baselines})
    row = {"row": IMPROVEMENT_ROW, "kind": "", "dataset": dataset, "metric": metric, "best_baseline": best,
           "improvement": rel_diff(target, ours(index.get((dataset, best)), metric)[0]) if best else NAN,
           "improvement_published": rel_diff(_pub(dataset, TARGET, metric), _pub(dataset, pub_best, metric)) if pub_best else NAN,
           "wilcoxon_p": NAN, "ttest_p": NAN, "n_users": NAN, "settings_beyond_params": ""}
    ranks_a, ranks_b = ranks.get((dataset, TARGET)), ranks.get((dataset, best)) if best else None
    if ranks_a is not None and ranks_b is not None and not is_missing(target):
        name, k = _split_metric(metric)
        test = paired_test(ranks_a, ranks_b, k=k, metric=name)
        row.update(wilcoxon_p=test["wilcoxon_p"], ttest_p=test["ttest_p"], n_users=test["n_users"])
    return row


def _cells(row: Mapping[str, Any]) -> list[str]:
    """The three Markdown cells (paper, ours, Δ) of one tidy row."""
    if row["row"] != IMPROVEMENT_ROW:
        return [fmt_value(row["published"]), fmt_mean_std(row["ours_mean"], row["ours_std"], row["n_seeds"]), fmt_pct(row["rel_diff"])]
    if is_missing(row["improvement"]):
        ours_cell = MISSING
    else:
        ours_cell = f"{fmt_pct(row['improvement'])} vs {row['best_baseline']}"
        if not is_missing(row["wilcoxon_p"]):
            ours_cell += f", {fmt_p(row['wilcoxon_p'])}"
    return [fmt_pct(row["improvement_published"]), ours_cell, ""]


def _has_published(sub: pd.DataFrame) -> bool:
    """Whether a dataset's rows hold any published number (a dataset the paper has, not one a user added)."""
    values = [sub["published"]] + ([sub["improvement_published"]] if "improvement_published" in sub else [])
    return any(not is_missing(v) for column in values for v in column)


def to_markdown(df: pd.DataFrame, datasets: Sequence[str], metrics: Sequence[str], with_kind: bool = False) -> str:
    """One Markdown table per dataset: a row per variant (and its kind), columns paper | ours | Δ per metric.

    A dataset without any published number (one added in params.yaml) gets only the `ours` column per metric,
    under a line saying so, rather than columns of dashes.
    """
    lead_header = ["Variant"] + (["Kind"] if with_kind else [])
    blocks = []
    for dataset in datasets:
        sub = df[df["dataset"] == dataset]
        compared = _has_published(sub)
        header = lead_header + ([f"{m} {col}" for m in metrics for col in ("paper", "ours", "Δ")] if compared
                                else list(metrics))
        lines, beyond = [], {}
        for label in dict.fromkeys(sub["row"]):
            records = sub[sub["row"] == label].to_dict("records")
            by_metric = {r["metric"]: r for r in records}
            settings = records[0].get("settings_beyond_params")
            if isinstance(settings, str) and settings:
                beyond[label] = settings
            lead = [f"{label} {BEYOND_MARK}" if label in beyond else label] + ([records[0]["kind"]] if with_kind else [])
            cells = [_cells(by_metric[m]) for m in metrics]
            lines.append(lead + [c for trio in cells for c in (trio if compared else trio[1:2])])
        note = "" if compared else "The paper has no numbers for this dataset: ours only.\n\n"
        footnote = "".join(f"\n\n{BEYOND_MARK} {label}: trained with settings that params.yaml did not give this run "
                           f"when it was evaluated (its results JSON records them); `mclrec train` retrains it as it "
                           f"was with {_quoted_options(settings)}" for label, settings in beyond.items())
        blocks.append(f"**{dataset}**\n\n{note}" + markdown_grid(header, lines) + footnote)
    return "\n\n".join(blocks) + "\n"


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Tidy rows as a DataFrame with the fixed column order."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype({"n_seeds": "Int64", "n_users": "Int64", "best_baseline": "object"})


NOTE3 = ("Test split, full ranking. paper = published value; ours = mean ± sample std over seeds; "
         "Δ = (ours − paper) / paper. Kind: *same protocol* = trained exactly as MCLRec is (prefixes, cross-entropy "
         "or BPR, our encoder, MCLRec's augmentation operators), so only the method differs; *authors' objective* = "
         "the baseline's own objective or augmentation settings, which is how the paper's baseline cells were made "
         "(the MCLRec authors ran each baseline's public code: sasrec-bce is kang205/SASRec's objective, "
         "cl4srec-orig the linked CL4SRec's augmentation). A published SASRec or CL4SRec cell is shown beside every "
         "variant of that baseline. Last row: relative improvement of mclrec over the strongest same-protocol "
         "baseline (paper column: over the best published baseline); p = two-sided Wilcoxon signed-rank test on "
         "per-user values, mclrec vs that baseline. – = no run yet.\n")
NOTE4 = ("Test split, full ranking, HR@20 / NDCG@20 as in the paper's Table 4. paper = published value; "
         "ours = mean ± sample std over seeds; Δ = (ours − paper) / paper. – = no run yet.\n")


def table3(results_index: ResultsIndex, datasets: Sequence[str], variants: Sequence[str] = TABLE3_VARIANTS,
           metrics: Sequence[str] = TABLE3_METRICS, ranks_index: RanksIndex | None = None) -> tuple[str, pd.DataFrame]:
    """Table 3: published vs ours per variant, plus the mclrec-vs-best-baseline row (with p-values given ranks)."""
    rows = comparison_rows(results_index, datasets, variants, metrics)
    baselines = [v for v in variants if kind(v) == SAME_PROTOCOL]
    if TARGET in variants and baselines:
        rows += [improvement_row(results_index, ranks_index or {}, d, m, baselines) for d in datasets for m in metrics]
    df = _frame(rows)
    return to_markdown(df, datasets, metrics, with_kind=True) + "\n" + NOTE3, df


REFERENCE_NOTE = ("Reference runs: models trained by this project on the CPU and committed under "
                  "results/reference/<dataset>/ (results JSON, log.jsonl, summary.json). A variant's first row is "
                  "seed 0, so its Δ includes seed noise; where a variant has several seeds, a second row gives mean ± "
                  "sample sd over them (Δ of the mean; epochs per seed; mean hours per seed). The paper's baseline "
                  "cells come from each baseline's own code (see Kind).\n")


def _reference_line(variant: str, record: Mapping[str, Any], dataset: str, metrics: Sequence[str],
                    label: str) -> list[str]:
    """One reference-table row: paper | ours (mean ± sd over seeds when an aggregate) | Δ per metric, epochs, hours."""
    cells = []
    for metric in metrics:
        value, std, n = ours(record, metric)
        cells += [fmt_value(_pub(dataset, variant, metric)), fmt_mean_std(value, std, n),
                  fmt_pct(rel_diff(value, _pub(dataset, variant, metric)))]
    epochs = record.get("epochs_run", MISSING)
    if isinstance(epochs, list):
        epochs = "/".join(MISSING if e is None else str(e) for e in epochs)
    hours = record.get("train_seconds")
    return [label, kind(variant)] + cells + [str(epochs), f"{hours / 3600:.1f}" if hours else MISSING]


def reference_table(reference_index: ResultsIndex, datasets: Sequence[str], variants: Sequence[str],
                    metrics: Sequence[str] = TABLE3_METRICS, seed_index: ResultsIndex | None = None) -> str:
    """The committed reference runs beside the published cells (paper | ours | Δ), with epochs and wall time, and,
    for a variant in `seed_index` (seed aggregates), a row of mean ± sd over its seeds; empty when there is none."""
    header = ["Variant", "Kind"] + [f"{m} {col}" for m in metrics for col in ("paper", "ours", "Δ")]
    header += ["epochs", "hours"]
    blocks = []
    for dataset in datasets:
        lines = []
        for variant in variants:
            record = reference_index.get((dataset, variant))
            if record:
                lines.append(_reference_line(variant, record, dataset, metrics, variant))
            spread = (seed_index or {}).get((dataset, variant))
            if spread:
                seeds = ", ".join(map(str, spread.get("seeds", [])))
                lines.append(_reference_line(variant, spread, dataset, metrics, f"{variant}, seeds {seeds}"))
        if lines:
            blocks.append(f"**{dataset}, reference runs**\n\n" + markdown_grid(header, lines))
    return "\n\n".join(blocks) + "\n\n" + REFERENCE_NOTE if blocks else ""


def table4(results_index: ResultsIndex, datasets: Sequence[str], variants: Sequence[str] = TABLE4_VARIANTS,
           metrics: Sequence[str] = TABLE4_METRICS) -> tuple[str, pd.DataFrame]:
    """Table 4 (ablations): published vs ours per ablation variant."""
    df = _frame(comparison_rows(results_index, datasets, variants, metrics))
    return to_markdown(df, datasets, metrics) + "\n" + NOTE4, df


def write_table(md: str, df: pd.DataFrame, md_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """Write the Markdown and the tidy CSV, each atomically."""
    with atomic_open(md_path, "w", encoding="utf-8") as fh:
        fh.write(md)
    with atomic_open(csv_path, "w", encoding="utf-8", newline="") as fh:
        df.to_csv(fh, index=False, float_format="%.6g")
