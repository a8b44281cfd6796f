"""Item content providers: item indices -> one field's model-ready batch.

Each provider knows one field of every item (in split index order). `collate` is called inside
DataLoader workers; providers that read files (trailer frame stores) must open them lazily there,
never before the workers fork. `mode` is 'train' (e.g. one random clip, drawn from the sample
seeds) or 'eval' (deterministic, e.g. S evenly spaced segments).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mmrec.registry import Registry
from preprocessing.text import RaggedTokens


class FieldContent:
    """Base of every field's content provider (one per field, indexed by dataset row).

    A provider sets `name` and `present` ([n_items] bool) and implements `collate`. It may set:
    `absent_reasons` (per item: None if present, else why not, e.g. "empty text", "missing";
    None: the preprocess report says "absent"), `failures` (one record per content file that
    could not be used: item_id, field, source_id, path, reason, detail) and `report` (what
    building it found, shown in data and export reports)."""
    name: str
    present: np.ndarray
    absent_reasons: list | None = None
    failures: list | tuple = ()
    report: dict | None = None

    def collate(self, items: np.ndarray, mode: str, seeds: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


EMPTY_TEXT = "empty text"   # a text field whose template columns are all empty for the item


class TextContent(FieldContent):
    """Token ids of one text field. With a frozen-bottom cache attached (`use_frozen_cache`,
    mmrec/data/text_cache.py), batches also carry `frozen_hidden`: the cached hidden states
    [B, T, H] float32, cut to the batch's longest text like the ids, which a `cache_frozen` BERT
    continues from instead of running its frozen layers. The ids stay in the batch for anything
    that runs its own BERT on them (the kNN baseline, an encoder without the cache).

    The cache is a memory-mapped .npy, opened lazily by the process that first collates (each
    DataLoader worker opens its own): a provider is pickled into workers, a memmap must not be."""

    def __init__(self, name: str, tokens: RaggedTokens, present: np.ndarray, pad_id: int = 0):
        self.name = name
        self.tokens = tokens
        self.present = np.asarray(present, dtype=bool)
        self.pad_id = int(pad_id)
        self.failures: list[dict] = []
        self.frozen_cache: tuple[str, tuple[int, ...]] | None = None   # (path, shape)
        self._frozen = None            # the open memmap, in the process that opened it
        self._frozen_pid = None

    @property
    def absent_reasons(self) -> list[str | None]:
        return [None if p else EMPTY_TEXT for p in self.present]

    def use_frozen_cache(self, path: str | Path | None, shape: tuple[int, ...] | None = None) -> None:
        """Serve `frozen_hidden` from the .npy at `path` ([n_rows, max_len, H] float32, rows in
        dataset order, each padded to max_len); None detaches it (batches as without a cache)."""
        self._frozen, self._frozen_pid = None, None
        if path is None:
            self.frozen_cache = None
            return
        shape = tuple(int(x) for x in shape)
        lengths = self.tokens.lengths()
        if len(shape) != 3 or shape[0] != len(lengths) or (len(lengths) and shape[1] < lengths.max()):
            raise ValueError(f"{self.name}: a frozen cache of shape {shape} does not fit {len(lengths)} texts "
                             f"of up to {int(lengths.max()) if len(lengths) else 0} tokens")
        self.frozen_cache = (str(path), shape)

    def _frozen_rows(self) -> np.ndarray:
        if self._frozen is None or self._frozen_pid != os.getpid():
            path, shape = self.frozen_cache
            mm = np.load(path, mmap_mode="r")
            if mm.shape != shape or mm.dtype != np.float32:
                raise ValueError(f"{path}: frozen cache of shape {mm.shape} {mm.dtype}, expected {shape} float32")
            self._frozen, self._frozen_pid = mm, os.getpid()
        return self._frozen

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_frozen"], state["_frozen_pid"] = None, None   # reopened by path where unpickled
        return state

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        items = np.asarray(items, dtype=np.int64)
        seqs = [self.tokens.get(int(i)) for i in items]
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
               "present": torch.from_numpy(self.present[items])}
        if self.frozen_cache is not None:
            order = np.argsort(items, kind="stable")   # ascending rows: sequential reads of the file
            hidden = np.empty((len(items), T, self.frozen_cache[1][2]), dtype=np.float32)
            hidden[order] = self._frozen_rows()[items[order], :T]
            out["frozen_hidden"] = torch.from_numpy(hidden)
        return out


# modality -> builder(field_name, field_spec, dataset, cfg) -> FieldContent
CONTENT_BUILDERS = Registry("content modality")


def register_content(modality: str):
    return CONTENT_BUILDERS.register(modality)


def collate_items(content: dict[str, FieldContent], items: np.ndarray, mode: str,
                  seeds: np.ndarray | None = None) -> dict[str, dict]:
    if seeds is None:
        seeds = np.zeros(len(items), dtype=np.int64)
    return {name: c.collate(items, mode, seeds) for name, c in content.items()}
