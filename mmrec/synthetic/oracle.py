"""The `oracle` baseline: a synthetic world's true user x item affinities (its oracle.npz), the
ranking the ratings were drawn from, i.e. the best any model can do."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmrec.evaluation.baselines import register_baseline
from mmrec.evaluation.evaluator import DotScorer


def oracle_factors(prepared) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(user factors, item factors) in split index order from the dataset's oracle.npz, if any."""
    root = prepared.dataset.root
    path = None if root is None else Path(root) / "oracle.npz"
    if path is None or not path.exists():
        return None
    z = np.load(path, allow_pickle=False)
    split = prepared.split
    out = []
    for ids, key in ((split.user_ids, "user"), (split.item_ids, "item")):
        pos = {str(x): i for i, x in enumerate(z[f"{key}_ids"])}
        missing = [str(x) for x in ids if str(x) not in pos]
        if missing:
            raise ValueError(f"{path}: {len(missing)} {key}s of the split have no oracle factors, e.g. {missing[:3]}")
        out.append(torch.from_numpy(z[f"{key}_factors"][[pos[str(x)] for x in ids]]).float())
    return out[0], out[1]




@register_baseline("oracle")
def oracle_baseline(cfg: dict, prepared):
    factors = oracle_factors(prepared)
    if factors is None:
        return "the dataset has no oracle.npz (only synthetic worlds do)"
    users, items = factors
    return lambda cands: DotScorer(users, items[torch.from_numpy(cands)])
