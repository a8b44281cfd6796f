"""Full ranking of a split's candidate items for every evaluated user, chunked over users.

Only one [chunk, candidates] score matrix (and its relevance mask) exists at a time, so memory
is bounded by `user_chunk` whatever the catalogue size. Excluded items are masked with -inf,
never with a small constant, so they can not reach the top-K when scores are negative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mmrec.data.split import CSR
from mmrec.evaluation.metrics import ranking_metrics

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # user indices [c] -> scores [c, n_candidates]


def ragged_rows(csr: CSR, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `rows`, column) for every entry of the given CSR rows, without a Python loop."""
    starts = csr.indptr[rows]
    lens = csr.indptr[rows + 1] - starts
    total = int(lens.sum())
    row_pos = np.repeat(np.arange(len(rows)), lens)
    within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    return row_pos, csr.indices[np.repeat(starts, lens) + within]


@dataclass
class EvalResult:
    users: np.ndarray                 # evaluated user indices, in order
    per_user: dict[str, np.ndarray]   # metric -> [len(users)] float64

    def means(self) -> dict[str, float]:
        return {k: float(v.mean()) if len(v) else float("nan") for k, v in self.per_user.items()}


class DotScorer:
    """u . v scores; with per-segment item vectors [N, S, D] the score is max_s u . v_s (Eq. 4)."""

    def __init__(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor):
        self.users = user_vectors
        self.items = item_vectors

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        u = self.users[users.to(self.users.device)].float()
        v = self.items.float()
        if v.dim() == 2:
            return u @ v.T
        return torch.einsum("ud,nsd->uns", u, v).amax(dim=2)


class RankingEvaluator:
    def __init__(self, ks=(1, 5, 10, 20), user_chunk: int = 4096, device: str | torch.device = "cpu"):
        self.ks = tuple(int(k) for k in ks)
        self.kmax = max(self.ks)
        self.user_chunk = int(user_chunk)
        self.device = torch.device(device)

    def evaluate(self, score_fn: ScoreFn, users: np.ndarray, candidates: np.ndarray, truth: CSR,
                 exclude: CSR | None = None, n_items: int | None = None) -> EvalResult:
        """Rank `candidates` (global item indices) for each of `users`.

        truth / exclude: CSR over global item indices (rows = all users). Truth items outside the
        candidates are ignored; users with no relevant candidate are skipped (not counted).
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        n_items = int(n_items if n_items is not None else max(truth.indices.max(initial=-1),
                                                              candidates.max(initial=-1)) + 1)
        colmap = np.full(n_items, -1, dtype=np.int64)
        colmap[candidates] = np.arange(len(candidates))
        n_cand = len(candidates)
        k = min(self.kmax, n_cand)
        kept_users, chunks = [], []
        for start in range(0, len(users), self.user_chunk):
            uc = np.asarray(users[start:start + self.user_chunk], dtype=np.int64)
            rel = self._dense(truth, uc, colmap, n_cand)
            n_rel = rel.sum(1)
            ok = n_rel > 0
            if not ok.any():
                continue
            if not ok.all():
                uc, rel, n_rel = uc[ok.cpu().numpy()], rel[ok], n_rel[ok]
            scores = score_fn(torch.from_numpy(uc).to(self.device)).to(self.device)
            if scores.shape != (len(uc), n_cand):
                raise ValueError(f"score function returned {tuple(scores.shape)}, expected {(len(uc), n_cand)}")
            if exclude is not None:
                ex = self._dense(exclude, uc, colmap, n_cand)
                scores = scores.masked_fill(ex, float("-inf"))
            top = torch.topk(scores, k, dim=1, sorted=True).indices
            hits = rel.gather(1, top)
            if k < self.kmax:
                hits = torch.cat([hits, hits.new_zeros(len(uc), self.kmax - k)], dim=1)
            chunks.append({m: v.cpu().numpy() for m, v in ranking_metrics(hits, n_rel, self.ks).items()})
            kept_users.append(uc)
        keys = [f"{m}@{k}" for m in ("precision", "recall", "recall_capped", "ndcg") for k in self.ks]
        per_user = {m: np.concatenate([c[m] for c in chunks]) if chunks else np.zeros(0) for m in keys}
        return EvalResult(np.concatenate(kept_users) if kept_users else np.zeros(0, np.int64), per_user)

    def _dense(self, csr: CSR, users: np.ndarray, colmap: np.ndarray, n_cand: int) -> torch.Tensor:
        row_pos, items = ragged_rows(csr, users)
        cols = colmap[items]
        keep = cols >= 0
        dense = torch.zeros(len(users), n_cand, dtype=torch.bool, device=self.device)
        dense[torch.from_numpy(row_pos[keep]).to(self.device), torch.from_numpy(cols[keep]).to(self.device)] = True
        return dense
