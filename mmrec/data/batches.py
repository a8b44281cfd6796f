"""Training pairs, their order, and batch assembly.

The sampler yields (pair index, sample seed). Both come from (seed, epoch) alone, so the data
order and every random choice inside a sample (e.g. which trailer clip) are the same after a
resume, with any number of DataLoader workers and processes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler):
    """A fresh permutation of the n training pairs every epoch.

    groups / group_size: with `groups` (the item of every pair) and group_size k > 1, the order is
    made of runs of up to k pairs that share an item (an item's pairs in random order, cut into
    runs of k; the runs shuffled). A batch of B pairs then holds about B/k distinct items, each
    encoded once (see `PairCollator`) and pulled by k of its users: k times the rating signal per
    encoded clip, which is what bounds training speed when the item tower is a video encoder.
    Every pair still appears exactly once per epoch.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, groups: np.ndarray | None = None,
                 group_size: int = 1):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0
        self.group_size = int(group_size)
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if self.group_size > 1:
            if groups is None or len(groups) != self.n:
                raise ValueError("group_size > 1 needs the group (item) of each of the n pairs")
            self.groups = np.asarray(groups, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:   # rng.permutation(n) bit for bit (the same draws), shuffled as int32:
            perm = np.arange(self.n, dtype=np.int32 if self.n < 2 ** 31 else np.int64)   # half the bytes
            rng.shuffle(perm)
            perm = perm.astype(np.int64)
        else:
            perm = np.arange(self.n)
        if self.group_size > 1:
            perm = self._grouped(perm, rng)
        seeds = rng.integers(0, 2 ** 62, size=self.n)
        return perm, seeds

    def _grouped(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """perm reordered into shuffled runs of <= group_size pairs of one item."""
        by_item = perm[np.argsort(self.groups[perm], kind="stable")]   # each item's pairs, in perm's order
        g = self.groups[by_item]
        new_item = np.r_[True, g[1:] != g[:-1]]
        item_start = np.maximum.accumulate(np.where(new_item, np.arange(self.n), 0))
        starts = np.flatnonzero(new_item | ((np.arange(self.n) - item_start) % self.group_size == 0))
        lengths = np.diff(np.r_[starts, self.n])
        if self.shuffle:
            runs = rng.permutation(len(starts))
            starts, lengths = starts[runs], lengths[runs]
        # positions of the runs laid end to end: start of its run + offset inside it
        offsets = np.arange(self.n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return by_item[np.repeat(starts, lengths) + offsets]

    def __iter__(self):
        perm, seeds = self.order()
        return iter(zip(perm.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.n


class PairDataset(Dataset):
    """(user, positive item) training pairs; indexed by (pair index, sample seed)."""

    def __init__(self, pairs: np.ndarray):
        self.pairs = np.asarray(pairs, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def group_keys(self) -> np.ndarray:
        """The item of every pair (for EpochSampler's item-grouped order)."""
        return self.pairs[:, 1]

    def __getitem__(self, key):
        idx, seed = key
        u, i = self.pairs[idx]
        return int(u), int(i), int(seed)


def negatives_per_pair(batch: int, k: int) -> np.ndarray:
    """How many uniform negatives each of a batch's `batch` pairs draws, K = `k` in all:
    floor((b+1)K/B) - floor(bK/B) for the pair at position b. The same pairs draw the same
    negatives whether they sit in one process's batch of N*B (with N*K) or in N batches of B
    (with K each): N x B == 1 x N*B holds for mixed negatives too."""
    b = np.arange(batch + 1, dtype=np.int64)
    return np.diff(b * int(k) // int(batch))


def draw_negatives(seeds: np.ndarray, counts: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform draws (with replacement) from `pool`, counts[b] of them from pair b's sample seed,
    and a sample seed for each draw (e.g. its trailer clip). Functions of the pairs' seeds alone,
    i.e. of (seed, epoch, position): exact on resume and across process counts."""
    items, sub = [], []
    for seed, c in zip(seeds.tolist(), counts.tolist()):
        if c:
            rng = np.random.default_rng([seed, 0x4E4547])   # a stream apart from the sample's own
            items.append(pool[rng.integers(0, len(pool), size=c)])
            sub.append(rng.integers(0, 2 ** 62, size=c))
    if not items:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(items).astype(np.int64), np.concatenate(sub).astype(np.int64)


class PairCollator:
    """Stack pairs and fetch each distinct item's content once (duplicates share one encoding).

    With `negatives` K > 0 and a `pool` of training items, every batch also carries K items
    drawn uniformly from the pool (`mixed negatives`; `draw_negatives`): `neg_idx` and
    `neg_slot`, their rows among the encoded items. An item that is both a positive and a
    negative is encoded once."""

    def __init__(self, collate_items: Callable[[np.ndarray, str, np.ndarray], dict],
                 negatives: int = 0, pool: np.ndarray | None = None):
        self.collate_items = collate_items
        self.negatives = int(negatives)
        if self.negatives and (pool is None or not len(pool)):
            raise ValueError("mixed negatives need a non-empty pool of training items")
        self.pool = None if pool is None else np.asarray(pool, dtype=np.int64)

    def __call__(self, samples: list[tuple[int, int, int]]) -> dict:
        users = np.fromiter((s[0] for s in samples), np.int64, len(samples))
        items = np.fromiter((s[1] for s in samples), np.int64, len(samples))
        seeds = np.fromiter((s[2] for s in samples), np.int64, len(samples))
        neg, neg_seeds = (draw_negatives(seeds, negatives_per_pair(len(samples), self.negatives), self.pool)
                          if self.negatives else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        unique, first, slot = np.unique(np.r_[items, neg], return_index=True, return_inverse=True)
        slot = slot.reshape(-1)
        batch = {
            "user_idx": torch.from_numpy(users),
            "item_idx": torch.from_numpy(items),
            "item_slot": torch.from_numpy(slot[:len(items)].copy()),
            "content": self.collate_items(unique, "train", np.r_[seeds, neg_seeds][first]),
        }
        if self.negatives:
            batch["neg_idx"] = torch.from_numpy(neg)
            batch["neg_slot"] = torch.from_numpy(slot[len(items):].copy())
        return batch
