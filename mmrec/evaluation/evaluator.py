"""Full ranking of a split's candidate items for every evaluated user, chunked over users.

Only one [chunk, candidates] score matrix exists at a time, so memory is bounded by
`user_chunk` whatever the catalogue size; relevance is looked up by key, never made dense. Excluded items are masked with -inf,
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
        self._flat: torch.Tensor | None = None   # the reusable hit buffer (_buffer)

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
            rows, cols = self._entries(truth, uc, colmap)
            n_rel = np.bincount(rows, minlength=len(uc))
            ok = n_rel > 0
            if not ok.any():
                continue
            if not ok.all():
                uc = uc[ok]
                rows, cols = self._entries(truth, uc, colmap)
                n_rel = n_rel[ok]
            scores = score_fn(torch.from_numpy(uc).to(self.device)).to(self.device)
            if scores.shape != (len(uc), n_cand):
                raise ValueError(f"score function returned {tuple(scores.shape)}, expected {(len(uc), n_cand)}")
            if exclude is not None:
                er, ec = self._entries(exclude, uc, colmap)
                scores = scores.index_put((torch.from_numpy(er).to(self.device), torch.from_numpy(ec).to(self.device)),
                                          torch.tensor(float("-inf"), device=self.device, dtype=scores.dtype))
            top = torch.topk(scores, k, dim=1, sorted=True).indices
            # Hits: mark the chunk's truth entries in a flat reusable buffer, read the top-k
            # positions, unmark. All O(positives); no dense matrix is allocated or cleared.
            flat = self._buffer(len(uc) * n_cand)
            keys = torch.from_numpy(rows * n_cand + cols).to(self.device)
            flat[keys] = True
            hits = flat[torch.arange(len(uc), device=self.device).unsqueeze(1) * n_cand + top]
            flat[keys] = False
            if k < self.kmax:
                hits = torch.cat([hits, hits.new_zeros(len(uc), self.kmax - k)], dim=1)
            n_rel_t = torch.from_numpy(n_rel).to(self.device)
            chunks.append({m: v.cpu().numpy() for m, v in ranking_metrics(hits, n_rel_t, self.ks).items()})
            kept_users.append(uc)
        keys = [f"{m}@{k}" for m in ("precision", "recall", "recall_capped", "ndcg") for k in self.ks]
        per_user = {m: np.concatenate([c[m] for c in chunks]) if chunks else np.zeros(0) for m in keys}
        return EvalResult(np.concatenate(kept_users) if kept_users else np.zeros(0, np.int64), per_user)

    def _buffer(self, size: int) -> torch.Tensor:
        buf = self._flat
        if buf is None or buf.numel() < size or buf.device != self.device:
            self._flat = buf = torch.zeros(size, dtype=torch.bool, device=self.device)
        return buf

    @staticmethod
    def _entries(csr: CSR, users: np.ndarray, colmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, candidate column) of the CSR entries that are candidates."""
        row_pos, items = ragged_rows(csr, users)
        cols = colmap[items]
        keep = cols >= 0
        return row_pos[keep], cols[keep]
