"""Paired tests on hand-made per-user rank arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mclrec.report.significance import paired_test, per_user


def test_identical_models_give_p_one():
    ranks = np.array([0, 3, 25, 7, 100])
    result = paired_test(ranks, ranks.copy())
    assert result["wilcoxon_p"] == 1.0 and result["ttest_p"] == 1.0
    assert result["mean_diff"] == 0.0 and result["n_users"] == 5 and result["metric"] == "NDCG@20"


def test_clearly_better_model_has_small_p():
    # a ranks every target in the top 6, b never in the top 20: six positive, distinct NDCG differences.
    # Exact Wilcoxon: only the all-positive sign pattern is as extreme, two-sided p = 2 / 2**6 = 0.03125.
    a, b = np.arange(6), np.full(6, 20)
    result = paired_test(a, b, k=20, metric="NDCG")
    assert result["wilcoxon_p"] == pytest.approx(0.03125)
    expected = np.mean([1 / math.log2(r + 2) for r in range(6)])
    assert result["mean_diff"] == pytest.approx(expected)
    assert result["mean_a"] == pytest.approx(expected) and result["mean_b"] == 0.0
    assert result["ttest_p"] < 0.01
    assert paired_test(b, a)["mean_diff"] == pytest.approx(-expected)


def test_hit_rate_t_test_by_hand():
    # HR@20 differences 1, 1, 1, 0: mean 0.75, sample std 0.5, t = 0.75 / (0.5 / 2) = 3 with 3 df -> p = 0.0577.
    # Wilcoxon drops the zero: three positive differences, p = 2 / 2**3 = 0.25.
    result = paired_test(np.array([0, 0, 0, 5]), np.array([25, 25, 25, 5]), k=20, metric="HR")
    assert result["ttest_p"] == pytest.approx(0.0577, abs=1e-4)
    assert result["wilcoxon_p"] == pytest.approx(0.25)
    assert result["mean_diff"] == 0.75 and result["metric"] == "HR@20"


def test_constant_nonzero_difference_has_zero_t_test_p():
    result = paired_test(np.array([0, 0, 0]), np.array([30, 30, 30]), k=20, metric="HR")
    assert result["ttest_p"] == 0.0 and result["wilcoxon_p"] == pytest.approx(0.25)


def test_seed_stacks_average_per_user_values():
    # user 0: NDCG@20 1 (rank 0) and 0.5 (rank 2), mean 0.75; user 1: rank 30 in both seeds, 0.
    assert per_user(np.array([[0, 30], [2, 30]]), 20, "NDCG").tolist() == [0.75, 0.0]


def test_different_users_are_rejected():
    with pytest.raises(ValueError):
        paired_test(np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        paired_test(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
