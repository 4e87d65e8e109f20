"""Full-ranking ranks and HR / NDCG / MRR on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mclrec.evaluation.metrics import metrics_from_ranks, per_user_metrics, target_ranks


def test_ranks_count_strictly_higher_scores():
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.3],  # target item 1 (column 0): best -> rank 0
        [0.9, 0.1, 0.5, 0.3],  # target item 4 (column 3): 0.9, 0.5 higher -> rank 2
        [0.5, 0.5, 0.5, 0.1],  # target item 2: tied with two others -> ties favour the target, rank 0
        [0.2, 0.7, 0.7, 0.9],  # target item 3: only 0.9 strictly higher -> rank 1
    ])
    targets = torch.tensor([1, 4, 2, 3])
    assert target_ranks(scores, targets).tolist() == [0, 2, 0, 1]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):  # bfloat16 counts the plain way: not exact as floats
        ranks = target_ranks(scores.to(dtype), targets, overwrite=True)
        assert ranks.dtype == torch.int64 and ranks.tolist() == [0, 2, 0, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_overwriting_ranks_equal_the_plain_count(dtype):
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(-20, 20, (64, 700), generator=g).to(dtype)  # many ties, which favour the target
    scores[0, 5] = float("nan")  # a NaN score beats no target
    scores[1, :] = float("inf")
    targets = torch.randint(1, 701, (64,), generator=g)
    plain = target_ranks(scores, targets)
    assert torch.equal(target_ranks(scores.clone(), targets, overwrite=True), plain)
    assert plain[1] == 0 and plain.max() > 300


def test_metrics_from_hand_computed_ranks():
    ranks = torch.tensor([0, 2, 7, 30])
    m = metrics_from_ranks(ranks, ks=(1, 5, 10, 50))
    assert m["HR@1"] == 0.25
    assert m["HR@5"] == 0.5
    assert m["HR@10"] == 0.75
    assert m["HR@50"] == 1.0
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(9)) / 4)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["MRR@50"] == pytest.approx((1 + 1 / 3 + 1 / 8 + 1 / 31) / 4)
    assert set(m) == {f"{name}@{k}" for name in ("HR", "NDCG", "MRR") for k in (1, 5, 10, 50)}


def test_default_cutoffs_and_k_larger_than_item_count():
    scores = torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    ranks = target_ranks(scores, torch.tensor([3, 3]))
    assert ranks.tolist() == [2, 0]
    m = metrics_from_ranks(ranks)
    assert sorted(m) == sorted(f"{n}@{k}" for n in ("HR", "NDCG", "MRR") for k in (5, 10, 20, 50))
    assert m["HR@50"] == 1.0 and m["HR@5"] == 1.0
    assert m["NDCG@50"] == pytest.approx((1 / math.log2(4) + 1) / 2)


def test_target_outside_top_k_scores_zero():
    m = metrics_from_ranks(np.array([5, 10]), ks=(5,))
    assert m == {"HR@5": 0.0, "NDCG@5": 0.0, "MRR@5": 0.0}


def test_per_user_metrics_arrays():
    per_user = per_user_metrics(torch.tensor([0, 1, 4, 5]), 5)
    assert isinstance(per_user["HR@5"], np.ndarray)
    np.testing.assert_allclose(per_user["HR@5"], [1, 1, 1, 0])
    np.testing.assert_allclose(per_user["NDCG@5"], [1, 1 / math.log2(3), 1 / math.log2(6), 0])
    np.testing.assert_allclose(per_user["MRR@5"], [1, 0.5, 0.2, 0])


def test_metrics_agree_with_ir_measures_on_random_ranks():
    """HR/NDCG/MRR@k against an independent implementation (ir-measures over pytrec_eval), one relevant item per user."""
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import RR, Success, nDCG

    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 60, size=300)
    qrels, run = [], []
    for user, rank in enumerate(ranks):  # test-only construction of a ranked list with the target at `rank`
        qid = f"u{user}"
        qrels.append(ir_measures.Qrel(qid, "target", 1))
        run.append(ir_measures.ScoredDoc(qid, "target", 1000.0 - rank))
        run += [ir_measures.ScoredDoc(qid, f"other{j}", 1000.0 - j - (j >= rank)) for j in range(60)]
    for k in (5, 10, 20, 50):
        theirs = ir_measures.calc_aggregate([Success @ k, nDCG @ k, RR @ k], qrels, run)
        ours = metrics_from_ranks(ranks, (k,))
        assert ours[f"HR@{k}"] == pytest.approx(theirs[Success @ k], abs=1e-12)
        assert ours[f"NDCG@{k}"] == pytest.approx(theirs[nDCG @ k], abs=1e-9)
        assert ours[f"MRR@{k}"] == pytest.approx(theirs[RR @ k], abs=1e-9)
