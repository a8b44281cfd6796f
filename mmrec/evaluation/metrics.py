"""Ranking metrics computed on whole chunks of users at once (RecBole-style), from top-K hits.

For a user with top-K hit flags h_1..h_K and n relevant candidates:
  precision@K      = sum(h) / K
  recall@K         = sum(h) / n                    (CLCRec, RecBole)
  recall_capped@K  = sum(h) / min(K, n)            (the KDD'24 first author's fork)
  ndcg@K           = sum_r h_r / log2(r + 1)  /  sum_{r <= min(K, n)} 1 / log2(r + 1)
"""
from __future__ import annotations

import torch

METRIC_NAMES = ("precision", "recall", "recall_capped", "ndcg")


def metric_keys(ks) -> list[str]:
    return [f"{m}@{k}" for m in METRIC_NAMES for k in ks]


def ranking_metrics(hits: torch.Tensor, n_relevant: torch.Tensor, ks) -> dict[str, torch.Tensor]:
    """hits: [U, Kmax] bool/float, ranks 1..Kmax; n_relevant: [U] > 0. Returns per-user values."""
    hits = hits.double()
    U, kmax = hits.shape
    n = n_relevant.double()
    ranks = torch.arange(1, kmax + 1, dtype=torch.float64, device=hits.device)
    discounts = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    cum_dcg = (hits * discounts).cumsum(1)
    ideal = discounts.cumsum(0)                                   # ideal DCG with r relevant in the top r
    out = {}
    for k in ks:
        kk = min(k, kmax)
        h = cum_hits[:, kk - 1]
        out[f"precision@{k}"] = h / k
        out[f"recall@{k}"] = h / n
        capped = torch.clamp(n, max=k)
        out[f"recall_capped@{k}"] = h / capped
        idcg = ideal[(torch.clamp(n, max=kk) - 1).long()]
        out[f"ndcg@{k}"] = cum_dcg[:, kk - 1] / idcg
    return out
