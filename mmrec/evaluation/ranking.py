"""Evaluating a model (or a baseline) on a split's cold items, on one or many processes.

Work is split in the same units a single process uses — batches of `item_batch_size` items,
chunks of `user_chunk` users — and each process takes a contiguous block of whole units. Every
item is therefore encoded in exactly the batch, and every user scored in exactly the chunk, it
would be in one process, so the gathered per-user metrics (and their means) are the
single-process ones exactly. Processes with fewer units repeat their last one, so all make the
same number of forward calls, which ZeRO-3's parameter gathering requires.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from mmrec.data.split import CSR
from mmrec.distributed import block_of_units, gather_varlen, rank_and_world
from mmrec.evaluation.evaluator import DotScorer, EvalResult, RankingEvaluator, ScoreFn
from preprocessing.progress import progress as progress_bar


def move_to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def encode_items(model, prepared, items: np.ndarray, batch_size: int, device="cpu", autocast=None,
                 progress: bool = False, collate=None, with_weights: bool = False):
    """Item vectors [N, D] (or [N, S, D] for segment inference), float32 on the CPU.

    `collate(items, mode)` builds model inputs (default: the prepared data's providers).
    `with_weights`: return (vectors, adaptive-fusion weights [N(, S), C] or None)."""
    items = np.asarray(items, dtype=np.int64)
    collate = collate or prepared.collate
    n_batches = -(-len(items) // batch_size)
    first, stop, per = block_of_units(n_batches)
    mine = list(range(first, stop))
    pad = per - len(mine)
    mine += [mine[-1] if mine else max(n_batches - 1, 0)] * pad if n_batches else []
    outs, wouts, tail = [], [], None
    ctx = autocast or nullcontext
    bar = progress_bar(len(mine), "encode items", enabled=progress, unit="batch", leave=False)
    for j, b in enumerate(mine):
        bar.update()
        content = move_to(collate(items[b * batch_size:(b + 1) * batch_size], "eval"), device)
        with ctx():
            if with_weights:
                v, w = model.item_vectors_and_weights(content)
            else:
                v, w = model.item_vectors(content), None
        v = v.float().cpu()
        tail = tuple(v.shape[1:])
        if j < len(mine) - pad:          # padding batches only keep the ranks in step
            outs.append(v)
            if w is not None:
                wouts.append(w.float().cpu())
    bar.close()
    local = torch.cat(outs) if outs else torch.zeros((0,) + (tail or ()))
    V = gather_varlen(local, device)
    if not with_weights:
        return V
    W = gather_varlen(torch.cat(wouts), device) if wouts and len(wouts) == len(outs) else None
    return V, W


@torch.no_grad()
def user_vectors(model, n_users: int, device="cpu") -> torch.Tensor:
    return model.user_vectors(torch.arange(n_users, device=device)).float().cpu()


def evaluate_ranking(score_fn: ScoreFn, users: np.ndarray, candidates: np.ndarray, truth: CSR,
                     evaluator: RankingEvaluator, exclude: CSR | None = None,
                     n_items: int | None = None, device="cpu") -> EvalResult:
    """Each process ranks a block of whole user chunks; per-user metrics are gathered once."""
    users = np.asarray(users, dtype=np.int64)
    chunk = evaluator.user_chunk
    first, stop, _ = block_of_units(-(-len(users) // chunk))
    res = evaluator.evaluate(score_fn, users[first * chunk:stop * chunk], candidates, truth,
                             exclude, n_items)
    if rank_and_world()[1] == 1:
        return res
    keys = list(res.per_user)
    local = np.zeros((len(res.users), len(keys) + 1))
    local[:, 0] = res.users
    for j, k in enumerate(keys):
        local[:, j + 1] = res.per_user[k]
    full = gather_varlen(torch.from_numpy(local), device).numpy()
    return EvalResult(full[:, 0].astype(np.int64), {k: full[:, j + 1] for j, k in enumerate(keys)})


def evaluate_model_part(model, prepared, part: str, eval_cfg: dict, device="cpu", autocast=None,
                        progress: bool = False) -> EvalResult:
    """Cold-item evaluation of the model on one part of the split ('val' or 'test')."""
    split = prepared.split
    candidates = split.items_of(part)
    items = encode_items(model, prepared, candidates, int(eval_cfg["item_batch_size"]), device,
                         autocast, progress)
    users = user_vectors(model, split.n_users, device)
    evaluator = RankingEvaluator(eval_cfg["ks"], eval_cfg["user_chunk"])
    return evaluate_ranking(DotScorer(users, items), split.eval_users(part), candidates,
                            split.positives[part], evaluator, n_items=split.n_items, device=device)
