"""A tiny synthetic dataset whose genres decide who likes what, so that content features carry the
collaborative signal and a cold-start head can be checked for learning it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ["action", "comedy", "drama", "horror", "romance", "scifi"]


def make_genre_dataset(root: Path, n_items: int = 90, n_users: int = 60, seed: int = 0) -> Path:
    from mmrec.data.tables import MultiModalDataset
    rng = np.random.default_rng(seed)
    genres = [sorted(set(rng.choice(GENRES, size=rng.integers(1, 3), replace=False).tolist()))
              for _ in range(n_items)]
    items = pd.DataFrame({"item_id": [f"m{i}" for i in range(n_items)],
                          "title": [f"Movie {i}" for i in range(n_items)], "year": "1999",
                          "genres": genres})
    rows = []
    for u in range(n_users):
        fav = set(rng.choice(GENRES, size=2, replace=False).tolist())
        for i in range(n_items):
            liked = bool(fav & set(genres[i]))
            if liked and rng.random() < 0.7:
                rows.append((f"u{u}", f"m{i}", 5.0, i))
            elif not liked and rng.random() < 0.15:
                rows.append((f"u{u}", f"m{i}", 1.0, i))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    inter["rating"] = inter["rating"].astype(np.float32)
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    out = root / "genre_world"
    MultiModalDataset("genre_world", items, inter).save(out)
    return out


def tiny_overrides(data_dir: Path, cache_dir: str) -> list[str]:
    return ["data.source=processed", f"data.path={data_dir}", f"data.cache_dir={cache_dir}",
            "data.min_user_ratings=5", "split.ratios=[0.6,0.2,0.2]"]
