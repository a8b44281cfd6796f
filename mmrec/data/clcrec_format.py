"""The official CLCRec data layout (Wei et al., MM'21; github.com/weiyinwei/CLCRec), written from
an mmrec split and read back into one, so the official scripts and mmrec read the same files.

Users are numbered 0..U-1 and items after them, U..U+I-1, warm (training) items first, then the
cold validation items, then the cold test items (the official code takes the rows after the
warm ones of its feature matrix for cold items). Files:

  train.npy                      int64 [N, 2] rows (user, item): the training interactions
  val_full.npy, val_warm.npy, val_cold.npy, test_full.npy, test_warm.npy, test_cold.npy
                                 object arrays of rows [user, item, item, ...] (users with >= 1 item)
  user_item_dict.npy, user_item_all_dict.npy   {user: [all of the user's items]} (pickled dict)
  user_item_train_dict.npy       {user: [training items]}
  warm_set.npy, cold_set.npy     item numbers of the warm and of the cold items
  feat_t.npy, feat_v.npy, feat_a.npy   float32 [I, dim] in item-number order (those given)
  ids.json                       mmrec's side: user and item ids by number, part sizes, the
                                 mmrec split order (absent in the published data sets)

An mmrec split has no warm held-out interactions (its val/test items are all cold), so
`warm_holdout` > 0 moves that fraction of the training interactions to val_warm / test_warm
(half each) to give the warm and all-item protocols something to measure.

Reading: `read_official(folder)` gives an mmrec Split (train = train.npy; val / test = the cold
items of val_cold / test_cold), the feature matrices in split order, and the warm held-out
positives. The official evaluation is not reproduced: mmrec's evaluator masks with -inf (the
official code sets masked scores to 1e-15, which negative scores can still lose to) and ranks
each part's own cold items.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrec.data.split import CSR, PARTS, Split
from mmrec.data.tables import DataError

FEATURE_LETTERS = ("v", "a", "t")


def _rows(csr: CSR, item_number: np.ndarray) -> np.ndarray:
    out = [[int(u)] + [int(item_number[i]) for i in csr.row(u)] for u in range(csr.n_rows)
           if csr.row_lengths()[u] > 0]
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr


def _merge(a: CSR, b: CSR) -> CSR:
    ra, ca = a.pairs()
    rb, cb = b.pairs()
    return CSR.from_pairs(np.concatenate([ra, rb]), np.concatenate([ca, cb]), a.n_rows)


def _save_pickled(path: Path, obj) -> None:
    np.save(path, obj, allow_pickle=True)


def write_official(split: Split, folder: str | Path, features: dict[str, np.ndarray] | None = None,
                   warm_holdout: float = 0.0, seed: int = 0) -> dict:
    """Write `split` (and features [n_items, dim] in split order, keyed t/v/a) in the official layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    U, I = split.n_users, split.n_items
    order = np.concatenate([split.items_of(p) for p in PARTS])     # official position -> split item
    position = np.empty(I, dtype=np.int64)
    position[order] = np.arange(I)
    number = U + position                                          # split item -> official number

    tu, ti = split.positives["train"].pairs()
    held = np.zeros(len(tu), dtype=bool)
    to_val = np.zeros(len(tu), dtype=bool)
    if warm_holdout > 0:
        if not 0 < warm_holdout < 1:
            raise DataError(f"warm_holdout must be in [0, 1), got {warm_holdout}")
        rng = np.random.default_rng([int(seed), 7])
        held = rng.random(len(tu)) < warm_holdout
        to_val = held & (rng.random(len(tu)) < 0.5)
    train = CSR.from_pairs(tu[~held], ti[~held], U)
    val_warm = CSR.from_pairs(tu[to_val], ti[to_val], U)
    test_warm = CSR.from_pairs(tu[held & ~to_val], ti[held & ~to_val], U)
    tr_u, tr_i = train.pairs()
    np.save(folder / "train.npy", np.stack([tr_u, number[tr_i]], axis=1).astype(np.int64))
    parts = {"val_warm": val_warm, "val_cold": split.positives["val"],
             "test_warm": test_warm, "test_cold": split.positives["test"]}
    parts["val_full"] = _merge(val_warm, split.positives["val"])
    parts["test_full"] = _merge(test_warm, split.positives["test"])
    for name, csr in parts.items():
        _save_pickled(folder / f"{name}.npy", _rows(csr, number))
    every = _merge(_merge(split.positives["train"], split.positives["val"]), split.positives["test"])
    all_dict = {u: [int(number[i]) for i in every.row(u)] for u in range(U)}
    _save_pickled(folder / "user_item_dict.npy", all_dict)
    _save_pickled(folder / "user_item_all_dict.npy", all_dict)
    _save_pickled(folder / "user_item_train_dict.npy", {u: [int(number[i]) for i in train.row(u)]
                                                        for u in range(U)})
    np.save(folder / "warm_set.npy", number[split.items_of("train")].astype(np.int64))
    np.save(folder / "cold_set.npy", np.sort(number[np.concatenate([split.items_of("val"),
                                                                    split.items_of("test")])]).astype(np.int64))
    for letter, x in (features or {}).items():
        if letter not in FEATURE_LETTERS:
            raise DataError(f"official CLCRec features are feat_v, feat_a, feat_t; got '{letter}'")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] != I:
            raise DataError(f"feat_{letter}: {x.shape[0]} rows for {I} items")
        np.save(folder / f"feat_{letter}.npy", x[order])
    sizes = {p: int(len(split.items_of(p))) for p in PARTS}
    meta = {"format": "clcrec-official", "n_users": U, "n_items": I, "n_warm_items": sizes["train"],
            "n_val_items": sizes["val"], "n_test_items": sizes["test"],
            "user_ids": [str(u) for u in split.user_ids],
            "item_ids": [str(split.item_ids[i]) for i in order],
            "mmrec_order": position.tolist(),
            "warm_holdout": float(warm_holdout),
            "interactions": {"train": int(len(tr_u)), "val_warm": int(val_warm.indices.size),
                             "test_warm": int(test_warm.indices.size),
                             "val_cold": int(split.positives["val"].indices.size),
                             "test_cold": int(split.positives["test"].indices.size)}}
    (folder / "ids.json").write_text(json.dumps(meta))
    return {k: v for k, v in meta.items() if k not in ("user_ids", "item_ids", "mmrec_order")}


@dataclass
class OfficialData:
    split: Split
    features: dict[str, np.ndarray]               # letter -> [n_items, dim] in split order
    warm: dict[str, CSR] = field(default_factory=dict)   # 'val' / 'test' -> held-out warm positives


def _load_rows(path: Path, U: int, I: int) -> list[tuple[int, np.ndarray]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        data = np.load(path, allow_pickle=True)
    except Exception as e:   # noqa: BLE001
        raise DataError(f"{path}: cannot read as .npy ({e})") from None
    out = []
    for r, row in enumerate(data):
        row = list(row) if not np.isscalar(row) else [row]
        if len(row) < 1:
            raise DataError(f"{path} row {r}: empty (expected [user, item, item, ...])")
        try:
            vals = np.asarray(row, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path} row {r}: not integers: {row[:5]}") from None
        u, items = int(vals[0]), vals[1:] - U
        if not 0 <= u < U:
            raise DataError(f"{path} row {r}: user {u} outside 0..{U - 1}")
        if len(items) and (items.min() < 0 or items.max() >= I):
            bad = int(vals[1:][(items < 0) | (items >= I)][0])
            raise DataError(f"{path} row {r}: item {bad} outside the item numbers {U}..{U + I - 1} "
                            f"(items are numbered after the {U} users)")
        out.append((u, items))
    return out


def _csr(rows: list[tuple[int, np.ndarray]], U: int) -> CSR:
    us = np.concatenate([np.full(len(i), u) for u, i in rows]) if rows else np.zeros(0, np.int64)
    its = np.concatenate([i for _, i in rows]) if rows else np.zeros(0, np.int64)
    return CSR.from_pairs(us.astype(np.int64), its.astype(np.int64), U)


def read_official(folder: str | Path) -> OfficialData:
    """Read an official CLCRec folder (ours or a published one) into an mmrec Split."""
    folder = Path(folder)
    if not (folder / "train.npy").exists():
        raise DataError(f"{folder}: no train.npy; not an official CLCRec data folder")
    train = np.load(folder / "train.npy", allow_pickle=True)
    try:
        train = np.asarray(train.tolist(), dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise DataError(f"{folder / 'train.npy'}: expected rows (user, item)") from None
    meta = json.loads((folder / "ids.json").read_text()) if (folder / "ids.json").exists() else None
    feats = {k: np.load(folder / f"feat_{k}.npy") for k in FEATURE_LETTERS if (folder / f"feat_{k}.npy").exists()}
    warm_set = np.load(folder / "warm_set.npy") if (folder / "warm_set.npy").exists() else None
    cold_set = np.load(folder / "cold_set.npy") if (folder / "cold_set.npy").exists() else None
    if meta:
        U, I = int(meta["n_users"]), int(meta["n_items"])
    else:
        numbers = [a for a in (warm_set, cold_set) if a is not None]
        U = int(min(int(a.min()) for a in numbers if len(a))) if numbers else int(train[:, 0].max()) + 1
        I = max([len(x) for x in feats.values()] +
                [int(a.max()) - U + 1 for a in numbers if len(a)] + [int(train[:, 1].max()) - U + 1])
    for k, x in feats.items():
        if x.ndim != 2 or len(x) != I:
            raise DataError(f"{folder / f'feat_{k}.npy'}: shape {x.shape}, expected [{I}, dim] (one row per item)")
    if train.size and (train[:, 0].min() < 0 or train[:, 0].max() >= U or train[:, 1].min() < U
                       or train[:, 1].max() >= U + I):
        raise DataError(f"{folder / 'train.npy'}: users must be 0..{U - 1} and items {U}..{U + I - 1}")
    rows = {n: _load_rows(folder / f"{n}.npy", U, I) for n in ("val_cold", "test_cold")}
    warm_rows = {n: _load_rows(folder / f"{n}.npy", U, I) if (folder / f"{n}.npy").exists() else []
                 for n in ("val_warm", "test_warm")}
    part = np.zeros(I, dtype=np.int8)                       # by official position
    if meta:
        nw, nv = int(meta["n_warm_items"]), int(meta["n_val_items"])
        part[nw:nw + nv], part[nw + nv:] = 1, 2
    else:
        cold = np.zeros(I, dtype=bool)
        if cold_set is not None:
            cold[cold_set - U] = True
        val_items = np.unique(np.concatenate([i for _, i in rows["val_cold"]] or [np.zeros(0, np.int64)]))
        test_items = np.unique(np.concatenate([i for _, i in rows["test_cold"]] or [np.zeros(0, np.int64)]))
        cold[val_items] = cold[test_items] = True
        part[cold] = 2                      # cold items in neither file's rows: ranked with the test items
        part[val_items] = 1
    for n, want in (("val_cold", 1), ("test_cold", 2)):
        for u, items in rows[n]:
            if len(items) and (part[items] != want).any():
                bad = int(items[part[items] != want][0]) + U
                raise DataError(f"{folder / (n + '.npy')}: item {bad} of user {u} is not a "
                                f"{'validation' if want == 1 else 'test'} cold item")
    if (part[train[:, 1] - U] != 0).any():
        raise DataError(f"{folder / 'train.npy'}: trains on cold items "
                        f"(e.g. {int(train[part[train[:, 1] - U] != 0][0, 1])})")
    # split item index of each official position: the mmrec order if recorded, else the same
    position = np.asarray(meta["mmrec_order"], dtype=np.int64) if meta else np.arange(I)
    index_of = np.empty(I, dtype=np.int64)                 # official position -> split index
    index_of[position] = np.arange(I)

    def remap(csr: CSR) -> CSR:
        r, c = csr.pairs()
        return CSR.from_pairs(r, index_of[c], U)

    item_ids = np.asarray(meta["item_ids"] if meta else [str(U + p) for p in range(I)], dtype=str)[position]
    user_ids = np.asarray(meta["user_ids"] if meta else [str(u) for u in range(U)], dtype=str)
    item_part = part[position]
    positives = {"train": remap(CSR.from_pairs(train[:, 0], train[:, 1] - U, U)),
                 "val": remap(_csr(rows["val_cold"], U)), "test": remap(_csr(rows["test_cold"], U))}
    stats = {"source": str(folder), "users": U, "items": I,
             **{f"{p}_items": int((item_part == k).sum()) for k, p in enumerate(PARTS)},
             **{f"{p}_positives": int(positives[p].indices.size) for p in PARTS},
             **{f"{p}_eval_users": int((positives[p].row_lengths() > 0).sum()) for p in PARTS}}
    split = Split(user_ids, item_ids, item_part, positives, stats)
    warm = {p: remap(_csr(warm_rows[f"{p}_warm"], U)) for p in ("val", "test")}
    return OfficialData(split, {k: x[position] for k, x in feats.items()}, warm)
