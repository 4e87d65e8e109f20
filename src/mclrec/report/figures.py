"""The paper's figures from our results (Figs. 3, 4, 6, 7, 8) and training curves; PNGs written atomically."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mclrec.io import atomic_path

Record = Mapping[str, Any]
ResultsIndex = Mapping[tuple[str, str], Record | None]
NO_RUNS = "no runs yet"
JOINT_VS_META = ("cl4srec", "duorec", "mclrec-j", "mclrec")


def _figure(n_panels: int = 1, width: float = 5.0, height: float = 3.6,
            ncols: int | None = None) -> tuple[Figure, list[Axes]]:
    """An Agg figure with `n_panels` axes in rows of `ncols` (default: one row); no pyplot global state."""
    ncols = min(ncols or n_panels, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols)).ravel())
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Render `fig` as PNG to a temp file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_no_runs(path: str | os.PathLike, title: str = "") -> None:
    """A placeholder PNG that says there are no runs yet."""
    fig, (ax,) = _figure()
    ax.text(0.5, 0.5, NO_RUNS, ha="center", va="center", fontsize=16, transform=ax.transAxes)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    save_png(fig, path)


def metric_of(record: Record | None, metric: str, split: str = "test") -> float:
    """A metric's mean from a run/aggregate document, nan when missing."""
    return float((record or {}).get("metrics", {}).get(split, {}).get(metric, math.nan))


def std_of(record: Record | None, metric: str, split: str = "test") -> float:
    """A metric's std over seeds (0 for a single run, nan when missing)."""
    if not record or math.isnan(metric_of(record, metric, split)):
        return math.nan
    return float(record.get("metrics_std", {}).get(split, {}).get(metric, 0.0))


def _bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]], errors: Mapping[str, Sequence[float]] | None = None) -> None:
    """Grouped bars: one group per label in `groups`, one bar per series (nan bars left empty)."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        heights = np.asarray(values, dtype=float)
        err = None if errors is None else np.nan_to_num(np.asarray(errors[name], dtype=float))
        label = f"{name} (no run)" if np.all(np.isnan(heights)) else name
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=err, label=label, capsize=2)
    ax.set_xticks(x, groups)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    if all(np.all(np.isnan(np.asarray(v, dtype=float))) for v in series.values()):
        _mark_empty(ax)
    ax.legend(fontsize=8)


def _mark_empty(ax: Axes) -> None:
    """Write the 'no runs yet' note in the middle of an empty panel."""
    ax.text(0.5, 0.5, NO_RUNS, ha="center", va="center", fontsize=12, color="grey", transform=ax.transAxes)


def loss_components(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Loss component names in first-seen order across the runs' epoch records."""
    return list(dict.fromkeys(k for records in runs for r in records for k in r.get("loss", {})))


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], title: str, path: str | os.PathLike,
                         metric: str = "MRR@10", best: Mapping[str, int | None] | None = None) -> None:
    """A panel per loss component plus validation `metric`, by epoch; a line per run (seed), best epochs dotted.

    best: each run's best epoch as its training chose it (summary.json; the official rule compares the metric at 4
    decimals, so a later epoch can be higher unrounded); a run without one is marked at the metric's maximum."""
    runs = {label: records for label, records in runs.items() if records}
    if not runs:
        plot_no_runs(path, title)
        return
    components = loss_components(list(runs.values()))
    fig, axes = _figure(len(components) + 1, width=4.2, height=3.2, ncols=3)
    for i, (label, records) in enumerate(runs.items()):
        epochs = [r["epoch"] for r in records]
        for ax, name in zip(axes, components):
            losses = [r.get("loss", {}).get(name, math.nan) for r in records]
            ax.plot(epochs, losses, marker=".", color=f"C{i}", label=label)
        valid = np.array([r.get("valid", {}).get(metric, math.nan) for r in records], dtype=float)
        axes[-1].plot(epochs, valid, marker=".", color=f"C{i}", label=label)
        chosen = (best or {}).get(label)
        if chosen is None and not np.all(np.isnan(valid)):
            chosen = epochs[int(np.nanargmax(valid))]
        if chosen is not None:
            axes[-1].axvline(chosen, color=f"C{i}", linestyle=":", alpha=0.7)
    for ax, name in zip(axes, components):
        ax.set(xlabel="epoch", ylabel="epoch mean", title=f"loss: {name}")
    axes[-1].set(xlabel="epoch", ylabel=metric, title=f"validation {metric} (dotted: best epoch)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)


def plot_joint_vs_meta(index: ResultsIndex, datasets: Sequence[str], path: str | os.PathLike,
                       variants: Sequence[str] = JOINT_VS_META, metrics: Sequence[str] = ("HR@20", "NDCG@20")) -> None:
    """Fig. 3: per dataset, grouped bars of HR@20 / NDCG@20 for MCLRec-J vs MCLRec (and CL4SRec, DuoRec)."""
    if all(index.get((d, v)) is None for d in datasets for v in variants):
        plot_no_runs(path, "joint (MCLRec-J) vs meta (MCLRec)")
        return
    fig, axes = _figure(len(datasets), width=4.5)
    for ax, dataset in zip(axes, datasets):
        series = {v: [metric_of(index.get((dataset, v)), m) for m in metrics] for v in variants}
        errors = {v: [std_of(index.get((dataset, v)), m) for m in metrics] for v in variants}
        _bars(ax, metrics, series, errors)
        ax.set_title(dataset)
    save_png(fig, path)


def plot_batch_sizes(index: ResultsIndex, datasets: Sequence[str], variants_by_batch: Mapping[str, Mapping[int, str]],
                     path: str | os.PathLike, metric: str = "NDCG@20") -> None:
    """Fig. 4: per dataset, `metric` vs batch size, one line per model ({label: {batch size: variant}})."""
    keys = [(d, v) for d in datasets for by_batch in variants_by_batch.values() for v in by_batch.values()]
    if all(index.get(k) is None for k in keys):
        plot_no_runs(path, f"{metric} vs batch size")
        return
    fig, axes = _figure(len(datasets), width=4.5)
    for ax, dataset in zip(axes, datasets):
        for label, by_batch in variants_by_batch.items():
            sizes = sorted(by_batch)
            values = [metric_of(index.get((dataset, by_batch[b])), metric) for b in sizes]
            ax.plot(sizes, values, marker="o", label=label if not np.all(np.isnan(values)) else f"{label} (no run)")
        if all(index.get((dataset, v)) is None for by_batch in variants_by_batch.values() for v in by_batch.values()):
            _mark_empty(ax)
        all_sizes = sorted({b for by_batch in variants_by_batch.values() for b in by_batch})
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_sizes, [str(b) for b in all_sizes])
        ax.set_xlim(all_sizes[0] / 1.4, all_sizes[-1] * 1.4)
        ax.set(title=dataset, xlabel="batch size", ylabel=metric)
        ax.legend(fontsize=8)
    save_png(fig, path)


def plot_grid(values: np.ndarray, lambdas: Sequence[float], betas: Sequence[float], path: str | os.PathLike,
              metric: str, title: str = "") -> None:
    """Fig. 6: heat map of `metric` over lambda (rows) x beta (columns), each cell annotated (nan = no run)."""
    grid = np.asarray(values, dtype=float)
    if grid.size == 0 or np.all(np.isnan(grid)):
        plot_no_runs(path, title or f"{metric} over lambda x beta")
        return
    if grid.shape != (len(lambdas), len(betas)):
        raise ValueError(f"grid shape {grid.shape} does not match {len(lambdas)} lambdas x {len(betas)} betas")
    fig, (ax,) = _figure(1, width=1.0 + 0.9 * len(betas), height=1.2 + 0.6 * len(lambdas))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    mid = np.nanmin(grid) + 0.5 * (np.nanmax(grid) - np.nanmin(grid))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            cell = grid[i, j]
            text, color = ("–", "black") if np.isnan(cell) else (f"{cell:.4f}", "black" if cell > mid else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(lambdas)), [f"{lam:g}" for lam in lambdas])
    ax.set(xlabel="beta (weight of L_cl2)", ylabel="lambda (weight of L_cl1)", title=title or metric)
    save_png(fig, path)


def noise_value(record: Record | None, ratio: float, metric: str) -> float:
    """`metric` at test-time noise `ratio` (0 = the clean test metrics); nan when missing."""
    if not record:
        return math.nan
    if ratio == 0:
        return metric_of(record, metric)
    by_ratio = {float(k): v for k, v in record.get("noise", {}).items()}
    return float(by_ratio.get(float(f"{ratio:g}"), {}).get(metric, math.nan))


def plot_noise(records_by_variant: Mapping[str, Record | None], ratios: Sequence[float], path: str | os.PathLike,
               metric: str = "NDCG@20", title: str = "") -> None:
    """Fig. 7: `metric` vs test-time noise ratio, one line per variant."""
    curves = {v: [noise_value(r, x, metric) for x in ratios] for v, r in records_by_variant.items()}
    if not curves or all(np.all(np.isnan(c)) for c in curves.values()):
        plot_no_runs(path, title or f"{metric} vs noise ratio")
        return
    fig, (ax,) = _figure()
    for variant, values in curves.items():
        ax.plot([100 * x for x in ratios], values, marker="o", label=variant)
    ax.set(xlabel="noise ratio (%)", ylabel=metric, title=title or f"{metric} vs test-time noise")
    ax.legend(fontsize=8)
    save_png(fig, path)


def group_names(records: Sequence[Record | None]) -> list[str]:
    """Length-group names in first-seen order across records."""
    return list(dict.fromkeys(g for r in records if r for g in r.get("groups", {})))


def plot_groups(records_by_variant: Mapping[str, Record | None], path: str | os.PathLike,
                metric: str = "NDCG@20", title: str = "") -> None:
    """Fig. 8: grouped bars of `metric` per user group (sequence length), one bar per variant."""
    groups = group_names(list(records_by_variant.values()))
    if not groups:
        plot_no_runs(path, title or f"{metric} by user group")
        return
    series = {v: [float((r or {}).get("groups", {}).get(g, {}).get(metric, math.nan)) for g in groups]
              for v, r in records_by_variant.items()}
    users = {g: next((r["groups"][g].get("n_users") for r in records_by_variant.values()
                      if r and g in r.get("groups", {})), None) for g in groups}
    fig, (ax,) = _figure()
    _bars(ax, [f"{g}\n({users[g]} users)" if users[g] is not None else g for g in groups], series)
    ax.set(xlabel="sequence length group", ylabel=metric, title=title or f"{metric} by user group")
    save_png(fig, path)


def plot_groups_trained(index: ResultsIndex, groups_by_parent: Mapping[str, Sequence[str]], variants: Sequence[str],
                        path: str | os.PathLike, metric: str = "NDCG@20") -> None:
    """Fig. 8 as the paper ran it: one panel per parent dataset, grouped bars of `metric` per length-group dataset
    (each model trained and evaluated on that group alone), one bar per variant, seed std as error bars."""
    if not groups_by_parent:
        plot_no_runs(path, f"{metric} by user group (models trained per group)")
        return
    fig, axes = _figure(len(groups_by_parent))
    for ax, (parent, groups) in zip(axes, groups_by_parent.items()):
        series = {v: [metric_of(index.get((g, v)), metric) for g in groups] for v in variants}
        errors = {v: [std_of(index.get((g, v)), metric) for g in groups] for v in variants}
        _bars(ax, list(groups), series, errors)
        ax.set(xlabel="user group (trained and evaluated alone)", ylabel=metric, title=parent)
    save_png(fig, path)


def grid_values(records: Sequence[Record], lambdas: Sequence[float], betas: Sequence[float], metric: str,
                split: str = "test") -> np.ndarray:
    """[lambdas x betas] array of `metric`, each record placed by its config's lambda_cl1 and beta (nan = no run)."""
    grid = np.full((len(lambdas), len(betas)), math.nan)
    for record in records:
        cfg = record.get("config", {})
        rows = [i for i, lam in enumerate(lambdas) if math.isclose(lam, cfg.get("lambda_cl1", math.nan), abs_tol=1e-12)]
        cols = [j for j, b in enumerate(betas) if math.isclose(b, cfg.get("beta", math.nan), abs_tol=1e-12)]
        if rows and cols:
            grid[rows[0], cols[0]] = metric_of(record, metric, split)
    return grid
