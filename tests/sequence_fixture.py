"""A tiny SYNTHETIC user cold-start dataset: a user's occupation (its group) decides which items
it watches, so features can place a cold user (tests of the sequential heads)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mmrec.data.tables import MultiModalDataset


def synthetic_world(path, n_users=240, n_groups=4, per_group=40, length=30, seed=0):
    """SYNTHETIC: group g watches only items of block g, walking the block in a cycle from a
    random start; a cold user's features (occupation = group) therefore determine its items."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_groups * per_group)]})
    rows, users = [], []
    for u in range(n_users):
        g = u % n_groups
        start = int(rng.integers(per_group))
        for t in range(length):
            rows.append((str(u), str(g * per_group + (start + t) % per_group), 4.0, 1000 + t))
        users.append((str(u), f"job{g}", str(int(rng.integers(10, 70)))))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    users = pd.DataFrame(users, columns=["user_id", "occupation", "age"])
    MultiModalDataset("synthetic-groups", items, inter, users).save(path)
    return path
