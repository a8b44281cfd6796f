"""Implicit feedback, user filtering and the cold-item split: nothing cold leaks into training."""
import numpy as np
import pandas as pd
import pytest

from mmrec.data.split import PARTS, make_split
from mmrec.data.tables import MultiModalDataset

DATA_CFG = {"positive_threshold": 3.5, "min_user_ratings": 20}


def test_ml100k_split_has_no_cold_leakage(tiny_prepared):
    s = tiny_prepared.split
    parts = {p: set(s.items_of(p).tolist()) for p in PARTS}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) \
        and not (parts["val"] & parts["test"])
    assert sum(len(v) for v in parts.values()) == s.n_items
    pairs = s.train_pairs()
    assert set(pairs[:, 1].tolist()) <= parts["train"]           # training never sees a cold item
    for p in ("val", "test"):
        assert set(s.positives[p].indices.tolist()) <= parts[p]
    # The training batches built from those pairs only carry train items, mixed negatives too.
    from mmrec.data.batches import PairCollator, PairDataset
    ds = PairDataset(pairs)
    collate = PairCollator(tiny_prepared.collate, negatives=64, pool=np.unique(pairs[:, 1]))
    batch = collate([ds[(i, i)] for i in range(0, len(ds), 97)])
    assert set(batch["item_idx"].tolist()) <= parts["train"]
    assert len(batch["neg_idx"]) == 64 and set(batch["neg_idx"].tolist()) <= parts["train"]


def test_ml100k_reference_split_sizes(tiny_prepared):
    # the issue-16 reference for seed 0: 845 users evaluated on 126 cold-test items.
    st = tiny_prepared.split.stats
    assert (st["train_items"], st["val_items"], st["test_items"]) == (1430, 126, 126)
    assert st["test_eval_users"] == 845
    # ML-100k positives are ratings 4 and 5 (threshold 3.5 on integer ratings).
    inter = tiny_prepared.dataset.interactions
    assert st["positives"] == int((inter["rating"] >= 4).sum())


def synthetic_dataset(n_users=30, n_items=40, seed=0):
    """Synthetic (clearly labelled) tables with known per-user rating counts."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = 5 + u                     # user u has 5 + u ratings: users 0..14 have < 20
        for i in rng.choice(n_items, size=min(k, n_items), replace=False):
            rows.append((f"u{u}", f"i{i}", float(rng.integers(1, 6)), int(1000 + 10 * i + u)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"t{i}" for i in range(n_items)]})
    return MultiModalDataset("synthetic", items, inter)


def test_min_ratings_threshold_and_ratios():
    ds = synthetic_dataset()
    s = make_split(ds, DATA_CFG, {"method": "random", "ratios": [0.5, 0.25, 0.25], "seed": 3})
    kept = set(s.user_ids.tolist())
    assert kept == {f"u{u}" for u in range(15, 30)}           # >= 20 ratings
    assert s.stats["users_dropped_few_ratings"] == 15
    assert (s.stats["train_items"], s.stats["val_items"], s.stats["test_items"]) == (20, 10, 10)
    n_pos = sum(len(s.positives[p].indices) for p in PARTS)
    want = ((ds.interactions["rating"] >= 3.5) & ds.interactions["user_id"].isin(kept)).sum()
    assert n_pos == want


def test_random_split_depends_only_on_seed():
    ds = synthetic_dataset()
    a = make_split(ds, DATA_CFG, {"method": "random", "ratios": [0.5, 0.25, 0.25], "seed": 1})
    b = make_split(ds, DATA_CFG, {"method": "random", "ratios": [0.5, 0.25, 0.25], "seed": 1})
    c = make_split(ds, DATA_CFG, {"method": "random", "ratios": [0.5, 0.25, 0.25], "seed": 2})
    assert np.array_equal(a.item_part, b.item_part)
    assert not np.array_equal(a.item_part, c.item_part)


def test_time_split_puts_newest_items_in_test():
    ds = synthetic_dataset()   # item i's first rating is at 1000 + 10 i + (first user)
    s = make_split(ds, DATA_CFG, {"method": "time", "ratios": [0.5, 0.25, 0.25], "seed": 0})
    first = ds.interactions.groupby("item_id")["timestamp"].min()
    t = {p: first[s.item_ids[s.items_of(p)]] for p in PARTS}
    assert t["train"].max() < t["val"].min() and t["val"].max() < t["test"].min()


def test_save_and_load_round_trip(tmp_path):
    ds = synthetic_dataset()
    s = make_split(ds, DATA_CFG, {"method": "random", "ratios": [0.5, 0.25, 0.25], "seed": 0})
    s.save(tmp_path / "split.npz")
    from mmrec.data.split import Split
    t = Split.load(tmp_path / "split.npz")
    assert np.array_equal(s.item_part, t.item_part) and list(s.user_ids) == list(t.user_ids)
    for p in PARTS:
        assert np.array_equal(s.positives[p].indices, t.positives[p].indices)


def test_bad_ratios_are_rejected():
    from mmrec.data.tables import DataError
    with pytest.raises(DataError, match="split.ratios"):
        make_split(synthetic_dataset(), DATA_CFG, {"method": "random", "ratios": [0.5, 0.5], "seed": 0})
