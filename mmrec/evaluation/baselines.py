"""Reference points reported by the same evaluator on the same split.

random:          uniform random scores (seeded per chunk of users).
knn_frozen_text: a frozen pretrained BERT embeds every item's text fields (the mean over the
                 fields an item has); a user is the mean of the normalised embeddings of the
                 items they liked in training; score = cosine similarity.
oracle:          synthetic worlds only (a dataset with `oracle.npz`): the true user x item
                 affinities the ratings were drawn from, i.e. the best any model can rank.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrec import assets
from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
from mmrec.evaluation.ranking import evaluate_ranking


class RandomScorer:
    def __init__(self, n_candidates: int, seed: int):
        self.n, self.seed = n_candidates, int(seed)

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(users[0]))
        return torch.rand(len(users), self.n, generator=g).to(users.device)


class CosineScorer:
    def __init__(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor):
        self.users = F.normalize(user_vectors.float(), dim=-1)
        self.items = F.normalize(item_vectors.float(), dim=-1)

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        return self.users[users.cpu()] @ self.items.T


def text_field_names(cfg: dict) -> list[str]:
    return [n for n, f in cfg["fields"].items() if f["modality"] == "text"]


def frozen_text_item_vectors(cfg: dict, prepared, batch_size: int = 256) -> torch.Tensor | None:
    """[n_items, H] frozen-BERT item embeddings, or None without text fields."""
    from encoders.text import frozen_text_embeddings
    names = text_field_names(cfg)
    if not names:
        return None
    n = prepared.split.n_items
    total, count = None, torch.zeros(n, 1)
    for name in names:
        enc = cfg["encoders"][cfg["fields"][name]["encoder"]]
        ckpt = assets.resolve_checkpoint(enc.get("checkpoint") or "minilm")
        items = np.arange(n)
        batches = (prepared.collate(items[s:s + batch_size])[name] for s in range(0, n, batch_size))
        emb = F.normalize(frozen_text_embeddings(ckpt, batches, cfg["eval"]["knn_pooling"]), dim=-1)
        present = torch.from_numpy(prepared.field_present(name)).float().unsqueeze(1)
        total = emb * present if total is None else total + emb * present
        count += present
    return total / count.clamp_min(1.0)


def knn_user_vectors(item_vectors: torch.Tensor, prepared) -> torch.Tensor:
    train = prepared.split.positives["train"]
    users, items = train.pairs()
    normed = F.normalize(item_vectors, dim=-1)
    out = torch.zeros(prepared.split.n_users, item_vectors.shape[1])
    out.index_add_(0, torch.from_numpy(users), normed[torch.from_numpy(items)])
    counts = torch.from_numpy(train.row_lengths()).float().clamp_min(1.0).unsqueeze(1)
    return out / counts


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


def evaluate_baselines(cfg: dict, prepared, parts=("val", "test"), device="cpu") -> dict:
    """{baseline: {part: {metric: mean}}} for the configured baselines."""
    split = prepared.split
    evaluator = RankingEvaluator(cfg["eval"]["ks"], cfg["eval"]["user_chunk"])
    out: dict = {}
    wanted = list(cfg["eval"]["baselines"] or [])
    unknown = set(wanted) - {"random", "knn_frozen_text", "oracle"}
    if unknown:
        raise ValueError(f"eval.baselines: unknown baseline(s) {sorted(unknown)} (random | knn_frozen_text | oracle)")
    oracle = oracle_factors(prepared) if "oracle" in wanted else None
    knn_items = frozen_text_item_vectors(cfg, prepared) if "knn_frozen_text" in wanted else None
    knn_users = knn_user_vectors(knn_items, prepared) if knn_items is not None else None
    for name in wanted:
        if name == "knn_frozen_text" and knn_items is None:
            out[name] = {"skipped": "no text field"}
            continue
        if name == "oracle" and oracle is None:
            out[name] = {"skipped": "the dataset has no oracle.npz (only synthetic worlds do)"}
            continue
        out[name] = {}
        for part in parts:
            cands = split.items_of(part)
            if name == "random":
                scorer = RandomScorer(len(cands), cfg["seed"])
            elif name == "oracle":
                scorer = DotScorer(oracle[0], oracle[1][torch.from_numpy(cands)])
            else:
                scorer = CosineScorer(knn_users, knn_items[torch.from_numpy(cands)])
            res = evaluate_ranking(scorer, split.eval_users(part), cands, split.positives[part],
                                   evaluator, n_items=split.n_items, device=device)
            out[name][part] = res.means()
    return out
