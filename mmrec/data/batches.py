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
    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2 ** 62, size=self.n)
        return perm, seeds

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

    def __getitem__(self, key):
        idx, seed = key
        u, i = self.pairs[idx]
        return int(u), int(i), int(seed)


class PairCollator:
    """Stack pairs and fetch each distinct item's content once (duplicates share one encoding)."""

    def __init__(self, collate_items: Callable[[np.ndarray, str, np.ndarray], dict]):
        self.collate_items = collate_items

    def __call__(self, samples: list[tuple[int, int, int]]) -> dict:
        users = np.fromiter((s[0] for s in samples), np.int64, len(samples))
        items = np.fromiter((s[1] for s in samples), np.int64, len(samples))
        seeds = np.fromiter((s[2] for s in samples), np.int64, len(samples))
        unique, first, slot = np.unique(items, return_index=True, return_inverse=True)
        return {
            "user_idx": torch.from_numpy(users),
            "item_idx": torch.from_numpy(items),
            "item_slot": torch.from_numpy(slot.reshape(-1)),
            "content": self.collate_items(unique, "train", seeds[first]),
        }
