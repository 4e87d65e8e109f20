"""Check that two training settings give statistically equal results: train both over several seeds, compare metrics.

Usage: python benchmarks/compare_settings.py --dataset synthetic --variant mclrec --seeds 0 1 2 3 4 5
                                              [--a KEY=VALUE ...] [--b KEY=VALUE ...] [--set KEY=VALUE ...]

Setting A defaults to the unoptimised reference path (length_buckets=[], batch_views=false, as bench_train.py
--naive); B defaults to params.yaml as it is. Each (setting, seed) run is trained with the real trainer into
--out/<a|b>/seed-<s> and its best checkpoint evaluated by full ranking. Per test metric the table gives mean and
standard deviation over seeds of each setting, the difference B - A, that difference in units of A's seed standard
deviation, and Welch's t-test p-value. "Statistically equal" here means no metric differs at --alpha (a small seed
count only detects large effects, which is why the difference is also given in seed standard deviations).

Any run setting can differ, `nproc` too: `--a nproc=1 --b nproc=2` compares one process with one training over two
processes at the same global batch (the trainer starts the processes; docs/performance.md, "Distributed training").
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from mclrec.config import NAIVE_PATH, load_params, parse_overrides, resolve_run, run_config
from mclrec.data.processed import load_processed
from mclrec.evaluation.evaluate import evaluate_checkpoint
from mclrec.io import atomic_open
from mclrec.paths import processed_dir
from mclrec.training.trainer import BEST, train

METRICS = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--variant", default="mclrec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--a", dest="a", action="append", metavar="KEY=VALUE",
                        help="setting A (repeatable); default: the reference path " + describe(NAIVE_PATH))
    parser.add_argument("--b", dest="b", action="append", default=[], metavar="KEY=VALUE",
                        help="setting B (repeatable); default: params.yaml unchanged")
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                        help="override for both settings (repeatable), e.g. max_epochs=3")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data-dir", type=Path, help="processed data (default data/processed/<dataset>)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/compare"), help="run folders")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", type=Path, help="also save every run's metrics and the comparison")
    return parser.parse_args(argv)


def describe(settings: dict[str, Any]) -> str:
    """KEY=VALUE pairs of a settings dict, for the report."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in settings.items()) or "params.yaml"


def run_seed(cfg: dict, data, run_dir: Path) -> dict[str, float]:
    """Train one run afresh and return its best checkpoint's test metrics."""
    summary = train(cfg, data, run_dir, resume="never", progress=False)
    result, _, _ = evaluate_checkpoint(data, run_dir / BEST, device=cfg.device, batch_size=cfg.eval_batch_size)
    return {**result["metrics"]["test"], "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"]}


def compare(a: list[dict[str, float]], b: list[dict[str, float]], metrics: tuple[str, ...],
            alpha: float) -> list[dict[str, Any]]:
    """Per metric: means, seed standard deviations, B - A, (B - A) / sd_A and Welch's p over the seeds."""
    rows = []
    for metric in metrics:
        xa = np.array([r[metric] for r in a], dtype=float)
        xb = np.array([r[metric] for r in b], dtype=float)
        sd_a, sd_b = xa.std(ddof=1), xb.std(ddof=1)
        diff = xb.mean() - xa.mean()
        if sd_a == 0 and sd_b == 0:
            p = 1.0 if diff == 0 else 0.0
        else:
            p = float(stats.ttest_ind(xb, xa, equal_var=False).pvalue)
        rows.append({"metric": metric, "mean_a": xa.mean(), "sd_a": sd_a, "mean_b": xb.mean(), "sd_b": sd_b,
                     "diff": diff, "diff_in_sd_a": diff / sd_a if sd_a else float("nan"), "p_welch": p,
                     "differs": p < alpha})
    return rows


def render(args: argparse.Namespace, settings: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
           seconds: dict[str, float]) -> str:
    """The Markdown report: machine, settings, the table and a one-line verdict."""
    lines = [f"# compare_settings: {args.dataset}/{args.variant}, seeds {args.seeds}", "",
             f"- machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"- A: {describe(settings['a'])}; B: {describe(settings['b'])}; both: {' '.join(args.common) or '-'}",
             f"- training + evaluation time: A {seconds['a']:.0f} s, B {seconds['b']:.0f} s", "",
             "| test metric | A mean (sd) | B mean (sd) | B - A | (B - A) / sd_A | Welch p |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['mean_a']:.4f} ({r['sd_a']:.4f}) | {r['mean_b']:.4f} ({r['sd_b']:.4f}) "
                     f"| {r['diff']:+.4f} | {r['diff_in_sd_a']:+.2f} | {r['p_welch']:.3f} |")
    differing = [r["metric"] for r in rows if r["differs"]]
    lines += ["", f"differ at alpha={args.alpha}: {', '.join(differing) if differing else 'none'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate both settings over the seeds, print the comparison and return it."""
    args = parse_args(argv)
    params = load_params(args.params)
    data_dir = args.data_dir or processed_dir(args.dataset)
    data = load_processed(data_dir)
    common = parse_overrides(args.common)
    max_len = resolve_run(params, args.dataset, args.variant, common)["max_len"]
    if data.max_len != max_len:
        raise SystemExit(f"{data_dir}: processed with max_len={data.max_len}, params say {max_len}")
    settings = {"a": parse_overrides(args.a) if args.a is not None else dict(NAIVE_PATH), "b": parse_overrides(args.b)}
    results: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    seconds = {"a": 0.0, "b": 0.0}
    for seed in args.seeds:
        for name, setting in settings.items():
            cfg = run_config(params, args.dataset, args.variant, {**common, **setting, "seed": seed})
            start = time.perf_counter()
            results[name].append(run_seed(cfg, data, args.out / name / f"seed-{seed}"))
            seconds[name] += time.perf_counter() - start
            print(f"[{name} seed {seed}] NDCG@10 {results[name][-1]['NDCG@10']:.4f}", file=sys.stderr, flush=True)
    rows = compare(results["a"], results["b"], METRICS, args.alpha)
    print(render(args, settings, rows, seconds))
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "settings": settings,
              "runs": results, "comparison": rows, "seconds": seconds}
    if args.json:
        with atomic_open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=float)
    return report


if __name__ == "__main__":
    main()
