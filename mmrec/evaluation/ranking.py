"""Evaluating a model (or a baseline) on a split's cold items, on one or many processes.

Items are encoded in equal-sized shards per process and gathered once; users are sharded in
contiguous blocks and their per-user metrics gathered once, in rank order, so the result is the
single-process result whatever the number of processes. Every process makes the same number of
forward calls (shards are padded), which ZeRO-3's parameter gathering requires.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from mmrec.data.split import CSR
from mmrec.distributed import gather_nograd, rank_and_world
from mmrec.evaluation.evaluator import DotScorer, EvalResult, RankingEvaluator, ScoreFn


def _shard(values: np.ndarray, pad: bool) -> tuple[np.ndarray, int]:
    """This rank's contiguous block (padded with the last value to equal length if `pad`)."""
    rank, world = rank_and_world()
    n = len(values)
    per = math.ceil(n / world) if n else 0
    block = values[rank * per:(rank + 1) * per]
    real = len(block)
    if pad and real < per:
        filler = values[-1:] if n else values[:0]
        block = np.concatenate([block, np.repeat(filler, per - real)])
    return block, real


def _gather_rows(x: torch.Tensor, real: int, total: int, device) -> torch.Tensor:
    """Gather equal-length row blocks from every rank, drop the padding, keep rank order."""
    _, world = rank_and_world()
    if world == 1:
        return x[:real]
    out = gather_nograd(x.to(device)).cpu()
    return out[:total]


def move_to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def encode_items(model, prepared, items: np.ndarray, batch_size: int, device="cpu", autocast=None,
                 progress: bool = False) -> torch.Tensor:
    """Item vectors [N, D] (or [N, S, D] for segment inference), float32 on the CPU."""
    items = np.asarray(items, dtype=np.int64)
    block, real = _shard(items, pad=True)
    outs = []
    ctx = autocast or nullcontext
    steps = range(0, len(block), batch_size)
    for start in tqdm(steps, desc="encode items", disable=not progress, leave=False):
        content = move_to(prepared.collate(block[start:start + batch_size], "eval"), device)
        with ctx():
            outs.append(model.item_vectors(content).float().cpu())
    local = torch.cat(outs) if outs else torch.zeros(0)
    return _gather_rows(local, real, len(items), device)


@torch.no_grad()
def user_vectors(model, n_users: int, device="cpu") -> torch.Tensor:
    return model.user_vectors(torch.arange(n_users, device=device)).float().cpu()


def evaluate_ranking(score_fn: ScoreFn, users: np.ndarray, candidates: np.ndarray, truth: CSR,
                     evaluator: RankingEvaluator, exclude: CSR | None = None,
                     n_items: int | None = None, device="cpu") -> EvalResult:
    """Shard users over processes, evaluate, gather per-user metrics in user order."""
    users = np.asarray(users, dtype=np.int64)
    block, real = _shard(users, pad=False)
    res = evaluator.evaluate(score_fn, block, candidates, truth, exclude, n_items)
    _, world = rank_and_world()
    if world == 1:
        return res
    # Blocks are contiguous, so concatenating in rank order restores the user order.
    per = math.ceil(len(users) / world)
    keys = list(res.per_user)
    local = np.full((per, len(keys) + 1), np.nan)
    local[:len(res.users), 0] = res.users
    for j, k in enumerate(keys):
        local[:len(res.users), j + 1] = res.per_user[k]
    full = gather_nograd(torch.from_numpy(local).to(device)).cpu().numpy()
    full = full[~np.isnan(full[:, 0])]
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
