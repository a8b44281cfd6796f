"""Item content providers: item indices -> one field's model-ready batch.

Each provider knows one field of every item (in split index order). `collate` is called inside
DataLoader workers; providers that read files (trailer frame stores) must open them lazily there,
never before the workers fork. `mode` is 'train' (e.g. one random clip, drawn from the sample
seeds) or 'eval' (deterministic, e.g. S evenly spaced segments).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from mmrec.registry import Registry
from preprocessing.text import RaggedTokens


class FieldContent(Protocol):
    """Providers may also have `absent_reasons` (per item: None if present, else why not, e.g.
    "empty text", "missing") and `failures` (one record per content file that could not be
    used: item_id, field, source_id, path, reason, detail); the preprocess report reads both."""
    name: str
    present: np.ndarray   # [n_items] bool

    def collate(self, items: np.ndarray, mode: str, seeds: np.ndarray) -> dict[str, torch.Tensor]: ...


EMPTY_TEXT = "empty text"   # a text field whose template columns are all empty for the item


class TextContent:
    def __init__(self, name: str, tokens: RaggedTokens, present: np.ndarray, pad_id: int = 0):
        self.name = name
        self.tokens = tokens
        self.present = np.asarray(present, dtype=bool)
        self.pad_id = int(pad_id)
        self.failures: list[dict] = []

    @property
    def absent_reasons(self) -> list[str | None]:
        return [None if p else EMPTY_TEXT for p in self.present]

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        seqs = [self.tokens.get(int(i)) for i in items]
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "present": torch.from_numpy(self.present[np.asarray(items, dtype=np.int64)])}


# modality -> builder(field_name, field_spec, dataset, cfg) -> FieldContent
CONTENT_BUILDERS = Registry("content modality")


def register_content(modality: str):
    return CONTENT_BUILDERS.register(modality)


def collate_items(content: dict[str, FieldContent], items: np.ndarray, mode: str,
                  seeds: np.ndarray | None = None) -> dict[str, dict]:
    if seeds is None:
        seeds = np.zeros(len(items), dtype=np.int64)
    return {name: c.collate(items, mode, seeds) for name, c in content.items()}
