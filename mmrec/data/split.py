"""Implicit feedback and the cold-item split (KDD'24 Sec. 6.1).

Ratings >= threshold are positives; users with fewer than `min_user_ratings` ratings are dropped;
the items (not the ratings) are split into train / cold validation / cold test, so no val or test
item is ever seen in training. Users and items get contiguous indices here, and the split is
saved with the run so evaluation and export see the same indices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.data.tables import DataError, MultiModalDataset, id_codes, int_codes, isin, lookup_ok, pairs_in_order

PARTS = ("train", "val", "test")


@dataclass
class CSR:
    """Rows of sorted column indices (per-user item lists) without a dense matrix."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, n_rows: int) -> "CSR":
        if not pairs_in_order(rows, cols, strict=False):     # already in (row, column) order (GroupLens'): no sort
            key = rows.astype(np.int64)       # in place from here: one int64 column at the peak
            key *= int(cols.max()) + 1 if len(cols) else 1
            key += cols
            order = np.argsort(key, kind="stable")
            del key
            rows, cols = rows[order], cols[order]
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.bincount(rows, minlength=n_rows))
        return cls(indptr, cols.astype(np.int64, copy=False))

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.repeat(np.arange(self.n_rows), self.row_lengths())
        return rows, self.indices

    def take_rows(self, rows: np.ndarray) -> "CSR":
        lengths = self.row_lengths()[rows]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.concatenate([self.row(r) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        return CSR(indptr, idx.astype(np.int64))


@dataclass
class Split:
    user_ids: np.ndarray          # index -> original user id (str)
    item_ids: np.ndarray          # index -> original item id (str)
    item_part: np.ndarray         # index -> 0 train, 1 val, 2 test
    positives: dict[str, CSR]     # part -> users x items positives among that part's items
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def items_of(self, part: str) -> np.ndarray:
        return np.flatnonzero(self.item_part == PARTS.index(part))

    def eval_users(self, part: str) -> np.ndarray:
        """Users with at least one positive among the part's items: the ones evaluated."""
        return np.flatnonzero(self.positives[part].row_lengths() > 0)

    def train_pairs(self) -> np.ndarray:
        csr = self.positives["train"]
        pairs = np.empty((len(csr.indices), 2), dtype=np.int64)    # filled in place: no stacked copy
        pairs[:, 0] = np.repeat(np.arange(csr.n_rows), csr.row_lengths())
        pairs[:, 1] = csr.indices
        return pairs

    def save(self, path: str | Path) -> None:
        arrays = {"user_ids": self.user_ids.astype(str), "item_ids": self.item_ids.astype(str),
                  "item_part": self.item_part, "stats": np.array(json.dumps(self.stats))}
        for p, csr in self.positives.items():
            arrays[f"{p}_indptr"], arrays[f"{p}_indices"] = csr.indptr, csr.indices
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        z = np.load(path, allow_pickle=False)
        pos = {p: CSR(z[f"{p}_indptr"], z[f"{p}_indices"]) for p in PARTS if f"{p}_indptr" in z}
        stats = json.loads(str(z["stats"])) if "stats" in z else {}
        return cls(z["user_ids"], z["item_ids"], z["item_part"], pos, stats)


def _sorted_ids(ids: np.ndarray) -> np.ndarray:
    """Numeric ids in numeric order, others lexicographically, so indices are stable and readable."""
    uniq = pd.unique(ids)
    try:
        return uniq[np.argsort(uniq.astype(np.int64), kind="stable")].astype(str)
    except ValueError:
        return np.sort(uniq.astype(str))


def value_codes(ints: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Codes of integer ids for the split: (codes, code -> id string, whether the codes are the
    ids themselves). For small non-negative ids (MovieLens') the id is its own code: no
    lookup pass over the 25M rows, and codes in numeric order (code k is the string of k,
    whether or not a row has it); else `int_codes`."""
    if lookup_ok(ints, len(ints)):
        return ints, np.arange(int(ints.max()) + 1).astype(str), True
    return (*int_codes(ints), False)


def _bincount(codes: np.ndarray, n: int, keep: np.ndarray | None = None, block: int = 1 << 20) -> np.ndarray:
    """np.bincount(codes[keep], minlength=n), a block at a time: bincount converts its input to
    int64, so a 25M-row int32 column would be copied whole (and `codes[keep]` once more)."""
    counts = np.zeros(n, dtype=np.int64)
    for s in range(0, len(codes), block):
        c = codes[s:s + block]
        counts += np.bincount(c if keep is None else c[keep[s:s + block]], minlength=n)
    return counts


def part_sizes(n: int, ratios: list[float]) -> tuple[int, int, int]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(f"split.ratios must be three non-negative numbers, got {ratios}")
    total = float(sum(ratios))
    n_val = int(round(n * ratios[1] / total))
    n_test = int(round(n * ratios[2] / total))
    return n - n_val - n_test, n_val, n_test


def make_split(ds: MultiModalDataset, data_cfg: dict, split_cfg: dict,
               keep_items: np.ndarray | None = None) -> Split:
    """Build the cold-item split.

    `keep_items` (bool per row of ds.items) drops items without usable content; their ratings are
    dropped too and counted in `stats`.
    """
    items = ds.items
    inter = ds.interactions
    stats: dict = {"items_in": len(items), "interactions_in": len(inter)}
    # Every row-wise step works on integer codes of the ids, so a 25M-rating table is never
    # turned into Python strings nor hashed as strings: from the reader's integer ids where it
    # gave them (ml25m; `IntIds`), else factorised once from the strings.
    ints = ds.id_ints()
    if ints is not None:
        (ucode, uniq_users, by_value), (icode, uniq_items, _) = value_codes(ints.user), value_codes(ints.item)
    else:
        (ucode, uniq_users), (icode, uniq_items), by_value = id_codes(inter["user_id"]), id_codes(inter["item_id"]), False
    keep = None      # None: every row (no 25M-row mask until one is dropped)
    if keep_items is not None:
        dropped = items["item_id"][~keep_items]
        stats["items_dropped_no_content"] = int((~keep_items).sum())
        items = items[keep_items]
        gone_code = isin(uniq_items, dropped.astype(str))
        gone = gone_code[icode] if gone_code.any() else None
        stats["interactions_dropped_no_content"] = 0 if gone is None else int(gone.sum())
        keep = None if gone is None else ~gone
    counts = _bincount(ucode, len(uniq_users), keep)
    present = counts > 0
    enough = present & (counts >= int(data_cfg["min_user_ratings"]))
    stats["users_in"] = int(present.sum())
    stats["users_dropped_few_ratings"] = int((present & ~enough).sum())
    if stats["users_dropped_few_ratings"]:
        low = ~enough[ucode] if keep is None else keep & ~enough[ucode]
        stats["interactions_dropped_few_ratings"] = int(low.sum())
        keep = ~low if keep is None else keep & ~low
        del low
    else:
        stats["interactions_dropped_few_ratings"] = 0
    n_kept = len(inter) if keep is None else int(keep.sum())
    if n_kept == 0:
        raise DataError(f"no user has >= data.min_user_ratings={data_cfg['min_user_ratings']} ratings")

    item_ids = items["item_id"].astype(str).to_numpy()
    # code -> index in user_ids / item_ids (-1: not there)
    if by_value:   # codes are the integer ids themselves: their order is the numeric one
        user_ids = uniq_users[enough]
        user_index = np.full(len(uniq_users), -1, dtype=np.int32 if len(user_ids) < 2 ** 31 else np.int64)
        user_index[enough] = np.arange(len(user_ids))
    else:
        user_ids = _sorted_ids(uniq_users[enough])
        user_index = pd.Index(user_ids).get_indexer(uniq_users)
    item_index = pd.Index(item_ids).get_indexer(uniq_items)
    if len(item_ids) < 2 ** 31:     # the row-wise gathers below in int32: half the bytes moved
        item_index = item_index.astype(np.int32)
    n_items = len(item_ids)
    n_train, n_val, n_test = part_sizes(n_items, list(split_cfg["ratios"]))
    method = split_cfg["method"]
    if method == "random":
        order = np.random.default_rng(int(split_cfg["seed"])).permutation(n_items)
    elif method == "time":
        # Items enter the catalogue at their first rating; the newest are the cold ones.
        ts, ic = inter["timestamp"].to_numpy(), icode
        if keep is not None:
            ts, ic = ts[keep], ic[keep]
        first = pd.Series(ts).groupby(ic).min()
        del ts, ic
        t = np.full(n_items, np.inf)
        at = item_index[first.index.to_numpy()]
        t[at[at >= 0]] = first.to_numpy(dtype=np.float64)[at >= 0]
        order = np.argsort(t, kind="stable")
    else:
        raise DataError(f"split.method: unknown method '{method}' (random | time)")
    item_part = np.zeros(n_items, dtype=np.int8)
    item_part[order[n_train:n_train + n_val]] = 1
    item_part[order[n_train + n_val:]] = 2

    positive = inter["rating"].to_numpy() >= float(data_cfg["positive_threshold"])
    rows = np.flatnonzero(positive if keep is None else keep & positive)
    del positive
    u = user_index[ucode[rows]]
    i = item_index[icode[rows]]
    del ucode, icode, rows, keep
    assert (u >= 0).all() and (i >= 0).all()
    part_of = item_part[i]      # once, not per part
    positives = {}
    for k, part in enumerate(PARTS):
        m = part_of == k
        positives[part] = CSR.from_pairs(u[m], i[m], len(user_ids))
    del part_of
    stats.update({
        "users": len(user_ids), "items": n_items, "interactions": n_kept,
        "positives": int(len(u)),
        **{f"{p}_items": int((item_part == k).sum()) for k, p in enumerate(PARTS)},
        **{f"{p}_positives": int(len(positives[p].indices)) for p in PARTS},
        **{f"{p}_eval_users": int((positives[p].row_lengths() > 0).sum()) for p in PARTS},
    })
    return Split(user_ids, item_ids, item_part, positives, stats)
