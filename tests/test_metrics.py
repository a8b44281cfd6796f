"""Ranking metrics and the chunked evaluator against hand-computed rankings and a plain loop."""
import math

import numpy as np
import pytest
import torch

from mmrec.data.split import CSR
from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator


def table_scorer(scores):
    table = torch.tensor(scores, dtype=torch.float32)
    return lambda users: table[users]


def csr(rows):
    r = np.concatenate([[i] * len(x) for i, x in enumerate(rows)]).astype(np.int64)
    c = np.concatenate([x for x in rows]).astype(np.int64)
    return CSR.from_pairs(r, c, len(rows))


def test_hand_computed_single_user():
    # Candidates 0..4 scored [.9, .1, .8, .3, .5] -> ranking 0, 2, 4, 3, 1. Relevant: {2, 3},
    # found at ranks 2 and 4.
    ev = RankingEvaluator(ks=(1, 2, 5), user_chunk=8)
    res = ev.evaluate(table_scorer([[0.9, 0.1, 0.8, 0.3, 0.5]]), np.array([0]), np.arange(5),
                      csr([[2, 3]]))
    m = res.means()
    l2 = math.log2
    assert m["precision@1"] == 0 and m["recall@1"] == 0 and m["ndcg@1"] == 0
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["recall@2"] == pytest.approx(1 / 2)
    assert m["recall_capped@2"] == pytest.approx(1 / 2)
    assert m["ndcg@2"] == pytest.approx((1 / l2(3)) / (1 + 1 / l2(3)))
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 / l2(3) + 1 / l2(5)) / (1 + 1 / l2(3)))


def test_recall_variants_differ_when_many_relevant():
    # 3 relevant of 4 candidates, top-1 is relevant: recall@1 = 1/3, capped recall@1 = 1/min(1,3) = 1.
    ev = RankingEvaluator(ks=(1,), user_chunk=8)
    m = ev.evaluate(table_scorer([[4.0, 3.0, 2.0, 1.0]]), np.array([0]), np.arange(4),
                    csr([[0, 1, 3]])).means()
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall_capped@1"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1.0)


def test_exclusion_uses_minus_inf_even_with_negative_scores():
    # All scores negative. Item 0 is excluded: a small-constant mask (1e-15, as in the official
    # CLCRec code) would push it to the top; with -inf it must never appear. Relevant: item 1.
    scores = [[-0.1, -0.2, -5.0, -6.0]]
    ev = RankingEvaluator(ks=(1,), user_chunk=8)
    m = ev.evaluate(table_scorer(scores), np.array([0]), np.arange(4), csr([[1]]),
                    exclude=csr([[0]])).means()
    assert m["precision@1"] == 1.0      # item 1 is first once item 0 is gone
    m0 = ev.evaluate(table_scorer(scores), np.array([0]), np.arange(4), csr([[1]])).means()
    assert m0["precision@1"] == 0.0


def test_candidates_subset_and_users_without_relevant_are_skipped():
    # Global items 0..5; candidates are {3, 5}. User 0's relevant item 1 is not a candidate, so
    # user 0 is not evaluated; user 1 likes 5.
    scores = [[0.0, 0.0], [0.2, 0.9]]   # columns follow the candidate order [3, 5]
    ev = RankingEvaluator(ks=(1,), user_chunk=8)
    res = ev.evaluate(table_scorer(scores), np.array([0, 1]), np.array([3, 5]),
                      csr([[1], [5]]), n_items=6)
    assert res.users.tolist() == [1]
    assert res.means()["precision@1"] == 1.0


def reference_metrics(scores, truth_rows, ks):
    """Per-user loop, as in the official CLCRec Metric.py (with -inf-free data)."""
    out = {f"{m}@{k}": [] for m in ("precision", "recall", "recall_capped", "ndcg") for k in ks}
    for s, truth in zip(scores, truth_rows):
        if not truth:
            continue
        order = list(np.argsort(-np.asarray(s), kind="stable"))
        for k in ks:
            top = order[:k]
            hits = [1.0 if j in truth else 0.0 for j in top]
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(truth))))
            out[f"precision@{k}"].append(sum(hits) / k)
            out[f"recall@{k}"].append(sum(hits) / len(truth))
            out[f"recall_capped@{k}"].append(sum(hits) / min(k, len(truth)))
            out[f"ndcg@{k}"].append(dcg / idcg)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_matches_plain_loop_on_random_data_for_any_chunk(chunk):
    rng = np.random.default_rng(0)
    n_users, n_items, D = 60, 40, 8
    U, V = torch.randn(n_users, D), torch.randn(n_items, D)
    truth_rows = [sorted(rng.choice(n_items, size=rng.integers(0, 12), replace=False).tolist())
                  for _ in range(n_users)]
    ev = RankingEvaluator(ks=(1, 5, 10, 20), user_chunk=chunk)
    got = ev.evaluate(DotScorer(U, V), np.arange(n_users), np.arange(n_items),
                      csr(truth_rows), n_items=n_items).means()
    want = reference_metrics((U @ V.T).numpy(), truth_rows, (1, 5, 10, 20))
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def test_segment_max_scores():
    # Eq. 4: an item's score is the max over its segments.
    U = torch.tensor([[1.0, 0.0]])
    V = torch.tensor([[[0.2, 0.0], [0.9, 0.0]], [[0.5, 0.0], [0.4, 0.0]]])   # [N=2, S=2, D=2]
    assert DotScorer(U, V)(torch.tensor([0])).tolist() == [[pytest.approx(0.9), pytest.approx(0.5)]]
