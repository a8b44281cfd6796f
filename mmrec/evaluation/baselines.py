"""Reference points reported by the same evaluator on the same split.

random:          uniform random scores (seeded per chunk of users).
knn_frozen_text: a frozen pretrained BERT embeds every item's text fields (the mean over the
                 fields an item has); a user is the mean of the normalised embeddings of the
                 items they liked in training; score = cosine similarity.
Plug-ins register more with `register_baseline` (`mmrec.synthetic` adds `oracle`: a synthetic
world's true affinities, the best any model can rank).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from mmrec import assets
from mmrec.evaluation.evaluator import RankingEvaluator
from mmrec.evaluation.ranking import evaluate_ranking
from mmrec.plugins import load_plugins
from mmrec.registry import Registry


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


# A baseline: factory(cfg, prepared) -> either make_scorer(candidate items) -> ScoreFn, or a str
# saying why it cannot run on this data (reported as {"skipped": reason}). Plug-ins (e.g.
# mmrec.synthetic's `oracle`) register their own.
BASELINES = Registry("baseline")


def register_baseline(name: str):
    return BASELINES.register(name)


@register_baseline("random")
def random_baseline(cfg: dict, prepared):
    return lambda cands: RandomScorer(len(cands), cfg["seed"])


@register_baseline("knn_frozen_text")
def knn_frozen_text_baseline(cfg: dict, prepared):
    items = frozen_text_item_vectors(cfg, prepared)
    if items is None:
        return "no text field"
    users = knn_user_vectors(items, prepared)
    return lambda cands: CosineScorer(users, items[torch.from_numpy(cands)])


def evaluate_baselines(cfg: dict, prepared, parts=("val", "test"), device="cpu") -> dict:
    """{baseline: {part: {metric: mean}}} for the configured baselines (`eval.baselines`)."""
    split = prepared.split
    evaluator = RankingEvaluator(cfg["eval"]["ks"], cfg["eval"]["user_chunk"])
    wanted = list(cfg["eval"]["baselines"] or [])
    if any(n not in BASELINES for n in wanted):   # a plug-in's (e.g. mmrec.synthetic's oracle)
        load_plugins()
    unknown = [n for n in wanted if n not in BASELINES]
    if unknown:
        raise ValueError(f"eval.baselines: unknown baseline(s) {sorted(unknown)} ({' | '.join(BASELINES)})")
    factories = {name: BASELINES[name](cfg, prepared) for name in wanted}
    out: dict = {}
    for name, make in factories.items():
        if isinstance(make, str):
            out[name] = {"skipped": make}
            continue
        out[name] = {}
        for part in parts:
            cands = split.items_of(part)
            res = evaluate_ranking(make(cands), split.eval_users(part), cands, split.positives[part],
                                   evaluator, n_items=split.n_items, device=device)
            out[name][part] = res.means()
    return out
