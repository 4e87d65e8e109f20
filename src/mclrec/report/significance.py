"""Paired significance tests between two models on per-user test metrics (same users, same order)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from mclrec.evaluation.metrics import per_user_metrics


def per_user(ranks: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Per-user `metric`@k from ranks [users], or its mean over seeds from ranks [seeds, users]."""
    ranks = np.asarray(ranks)
    if ranks.ndim not in (1, 2):
        raise ValueError(f"ranks must be [users] or [seeds, users], got shape {ranks.shape}")
    values = per_user_metrics(ranks.reshape(-1), k)[f"{metric}@{k}"].reshape(ranks.shape)
    return values if values.ndim == 1 else values.mean(axis=0)


def _ttest_p(diff: np.ndarray) -> float:
    """Two-sided one-sample t-test p of non-zero diffs; 0 for a constant diff (infinite t), NaN for one user."""
    if diff.size < 2:
        return float("nan")
    if np.all(diff == diff[0]):
        return 0.0
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def paired_test(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int = 20, metric: str = "NDCG") -> dict[str, Any]:
    """Wilcoxon signed-rank (zeros dropped) and paired t-test p-values of per-user metric a vs b; diff = a - b."""
    a, b = per_user(ranks_a, k, metric), per_user(ranks_b, k, metric)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_test needs the same non-empty users for both models, got {a.size} and {b.size}")
    diff = a - b
    if not diff.any():
        p_wilcoxon, p_ttest = 1.0, 1.0
    else:
        p_wilcoxon = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
        p_ttest = _ttest_p(diff)
    return {
        "metric": f"{metric}@{k}",
        "n_users": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
        "wilcoxon_p": p_wilcoxon,
        "ttest_p": p_ttest,
    }
