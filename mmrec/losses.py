"""Training objectives of KDD'24 Sec. 5.3, over the global (all-rank) batch.

Each rank scores its local pairs against the gathered batch of every rank (local-vs-global
logits, labels offset by rank), as open_clip's ClipLoss does; see `mmrec.distributed`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec.distributed import gather_nograd, gather_with_grad, rank_and_world


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax statistics in fp32 under bf16/fp16 autocast; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class PositiveLookup:
    """Membership test for known (user, item) positives, as sorted int64 keys user * n_items + item.

    Deliberately not a module buffer: data-parallel wrappers broadcast buffers every step, and
    on MovieLens-25M these keys are ~100 MB. They move to the inputs' device on first use."""

    def __init__(self, pairs: np.ndarray | None, n_items: int):
        self.n_items = int(n_items)
        keys = np.zeros(0, np.int64) if pairs is None else np.unique(pairs[:, 0].astype(np.int64) * self.n_items + pairs[:, 1])
        self.keys = torch.from_numpy(keys)

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[len(users), len(items)] bool: does users[a] like items[b]?"""
        if self.keys.device != users.device:
            self.keys = self.keys.to(users.device)
        q = users.long().unsqueeze(1) * self.n_items + items.long().unsqueeze(0)
        pos = torch.searchsorted(self.keys, q).clamp_(max=max(len(self.keys) - 1, 0))
        return (self.keys[pos] == q) if len(self.keys) else torch.zeros_like(q, dtype=torch.bool)


class SamplingFrequencies:
    """log q of Yi et al. (RecSys'19): how often a user or item is drawn into the logits.

    A pair enters a batch with probability 1 / n_pairs per slot, so the expected number of
    in-batch columns holding item j is N * count_j / n_pairs, for a global batch of N pairs,
    whatever `train.pairs_per_item` (runs of k pairs of one item change which items meet,
    not how often each is drawn). Mixed negatives add M / n_train_items columns per item
    (M uniform draws over the training items). Subtracting the log of that expectation
    from every column's logit, the positive's included, turns the sampled softmax into a
    consistent estimate of the full one. The counts come from all training pairs, so every
    rank corrects with the same global frequencies. Deliberately not module buffers (see
    PositiveLookup)."""

    def __init__(self, pairs: np.ndarray, n_users: int, n_items: int, negative_pool: np.ndarray | None = None):
        pairs = np.asarray(pairs, dtype=np.int64)
        self.n_pairs = len(pairs)
        self.user_counts = torch.from_numpy(np.bincount(pairs[:, 0], minlength=n_users).astype(np.float64))
        self.item_counts = torch.from_numpy(np.bincount(pairs[:, 1], minlength=n_items).astype(np.float64))
        self.pool = torch.zeros(n_items, dtype=torch.float64)
        if negative_pool is not None and len(negative_pool):
            self.pool[torch.from_numpy(np.asarray(negative_pool, dtype=np.int64))] = 1.0 / len(negative_pool)

    def _to(self, device):
        if self.item_counts.device != device:
            self.user_counts, self.item_counts, self.pool = (t.to(device) for t in
                                                              (self.user_counts, self.item_counts, self.pool))

    def log_items(self, items: torch.Tensor, n_batch: int, n_negatives: int = 0) -> torch.Tensor:
        """log E[#columns holding each of `items`] among n_batch in-batch + n_negatives uniform ones."""
        self._to(items.device)
        expected = n_batch * self.item_counts[items] / self.n_pairs + n_negatives * self.pool[items]
        return expected.log()

    def log_users(self, users: torch.Tensor, n_batch: int) -> torch.Tensor:
        self._to(users.device)
        return (n_batch * self.user_counts[users] / self.n_pairs).log()


class RatingRankingLoss(nn.Module):
    """Eq. 1: for each (user i, item j) pair, softmax over the batch's items for the user plus
    softmax over the batch's users for the item.

    Options: a temperature; masking in-batch duplicates of the positive (same item or same user,
    whose logits would otherwise count as negatives); false-negative filtering, which also drops
    in-batch items the user is known to like (and users known to like the item); the sampling-
    bias (logQ) correction (`SamplingFrequencies`); mixed negatives (Yang et al., WWW'20): items
    drawn uniformly from the training items that join the user -> item denominator only. A
    negative equal to the row's positive is always dropped; with false-negative filtering, so
    are negatives the user is known to like.

    Two switches give CLCRec's form of the loss: `in_batch_negatives=False` leaves the batch's
    other items out of the user -> item denominator (the positive against the uniform draws
    alone, which carry no popularity bias, so no logQ shift there), and `item_to_user=False`
    drops the item -> users softmax.
    """

    def __init__(self, temperature: float = 1.0, mask_duplicates: bool = True,
                 false_negative_filter: bool = False, positives: PositiveLookup | None = None,
                 frequencies: SamplingFrequencies | None = None, in_batch_negatives: bool = True,
                 item_to_user: bool = True):
        super().__init__()
        self.temperature = float(temperature)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.item_to_user = bool(item_to_user)
        self.mask_duplicates = bool(mask_duplicates)
        self.false_negative_filter = bool(false_negative_filter)
        if self.false_negative_filter and positives is None:
            raise ValueError("false_negative_filter needs the known positives")
        self.positives = positives
        self.frequencies = frequencies

    def masks(self, u_local, i_local, u_all, i_all, offset):
        """Bool masks of logits to drop: rows [B, N] (user -> items), cols [B, N] (item -> users)."""
        B, N = len(u_local), len(u_all)
        row = torch.zeros(B, N, dtype=torch.bool, device=u_local.device)
        col = torch.zeros_like(row)
        if self.mask_duplicates:
            dup = (u_local[:, None] == u_all[None, :]) | (i_local[:, None] == i_all[None, :])
            row |= dup
            col |= dup
        if self.false_negative_filter:
            row |= self.positives(u_local, i_all)          # user i likes in-batch item j'
            col |= self.positives(u_all, i_local).T        # in-batch user i' likes item j
        diag = torch.arange(B, device=row.device)
        row[diag, diag + offset] = False
        col[diag, diag + offset] = False
        return row, col

    def negative_mask(self, u_local, i_local, n_all):
        """[B, M] bool: uniform negatives to drop from each row (its positive, known positives)."""
        drop = i_local[:, None] == n_all[None, :]
        if self.false_negative_filter:
            drop |= self.positives(u_local, n_all)
        return drop

    def forward(self, users: torch.Tensor, items: torch.Tensor, user_idx: torch.Tensor,
                item_idx: torch.Tensor, negatives: torch.Tensor | None = None,
                negative_idx: torch.Tensor | None = None) -> torch.Tensor:
        """users, items: [B, D] of the local pairs; negatives: [M, D] this rank's uniform draws
        (every rank draws as many), negative_idx their item indices."""
        rank, _ = rank_and_world()
        B = users.shape[0]
        users_all, items_all = gather_with_grad(users), gather_with_grad(items)
        offset = rank * B
        labels = torch.arange(B, device=users.device) + offset
        # fp32 softmax statistics from here on (exact: a bf16/fp16 value casts to fp32 unchanged)
        row_logits = _at_least_fp32(users @ items_all.T / self.temperature)   # [B, N]: user -> all items
        col_logits = _at_least_fp32(items @ users_all.T / self.temperature)   # [B, N]: item -> all users
        need_ids = self.mask_duplicates or self.false_negative_filter or self.frequencies is not None
        if need_ids:
            u_all, i_all = gather_nograd(user_idx), gather_nograd(item_idx)
        if self.mask_duplicates or self.false_negative_filter:
            row_mask, col_mask = self.masks(user_idx, item_idx, u_all, i_all, offset)
            row_logits = row_logits.masked_fill(row_mask, float("-inf"))
            col_logits = col_logits.masked_fill(col_mask, float("-inf"))
        M = 0
        if negatives is not None and negatives.shape[0]:
            negs_all, n_all = gather_with_grad(negatives), gather_nograd(negative_idx)
            M = len(n_all)
            neg_logits = _at_least_fp32(users @ negs_all.T / self.temperature).masked_fill(
                self.negative_mask(user_idx, item_idx, n_all), float("-inf"))
        if self.frequencies is not None:
            N = len(u_all)
            if self.in_batch_negatives:
                row_logits = row_logits - self.frequencies.log_items(i_all, N, M).to(row_logits.dtype)[None, :]
                if M:
                    neg_logits = neg_logits - self.frequencies.log_items(n_all, N, M).to(neg_logits.dtype)[None, :]
            col_logits = col_logits - self.frequencies.log_users(u_all, N).to(col_logits.dtype)[None, :]
        if not self.in_batch_negatives:   # the positive alone, then the uniform draws
            row_logits = row_logits.gather(1, labels[:, None])
            labels_row = torch.zeros_like(labels)
        else:
            labels_row = labels
        if M:
            row_logits = torch.cat([row_logits, neg_logits], dim=1)
        loss = F.cross_entropy(row_logits, labels_row, reduction="none")
        if self.item_to_user:
            loss = loss + F.cross_entropy(col_logits, labels, reduction="none")
        return loss.mean()


class DistillationLoss(nn.Module):
    """Collaborative distillation (CLCRec's L_RE inside the end-to-end model; beyond KDD'24):
    each pair's content vector is contrasted with its item's ID embedding against the ID
    embeddings of the global batch's other items, and back (symmetric InfoNCE over dot
    products / temperature, the geometry items are scored in). Pairs of the same item are not
    each other's negatives.

    cosine=True contrasts cosine similarities instead, as CLCRec does: over dot products both
    vectors can simply grow until the term is ~0 (seen on ML-100k, docs/notes/issue16-default.md),
    while unit vectors at a temperature keep a margin to learn."""

    def __init__(self, temperature: float = 1.0, cosine: bool = False):
        super().__init__()
        self.temperature = float(temperature)
        self.cosine = bool(cosine)

    def forward(self, content: torch.Tensor, ids: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        rank, _ = rank_and_world()
        B = content.shape[0]
        content_all, ids_all, i_all = gather_with_grad(content), gather_with_grad(ids), gather_nograd(item_idx)
        labels = torch.arange(B, device=content.device) + rank * B
        same = item_idx[:, None] == i_all[None, :]
        same[torch.arange(B), labels] = False
        if self.cosine:
            content, ids = F.normalize(_at_least_fp32(content), dim=-1), F.normalize(_at_least_fp32(ids), dim=-1)
            content_all, ids_all = F.normalize(_at_least_fp32(content_all), dim=-1), F.normalize(_at_least_fp32(ids_all), dim=-1)
        c2e = (_at_least_fp32(content) @ _at_least_fp32(ids_all).T / self.temperature).masked_fill(same, float("-inf"))
        e2c = (_at_least_fp32(ids) @ _at_least_fp32(content_all).T / self.temperature).masked_fill(same, float("-inf"))
        return (F.cross_entropy(c2e, labels) + F.cross_entropy(e2c, labels)) / 2


class AlignmentLoss(nn.Module):
    """Eq. 2: contrast the per-field embeddings z_j^(c) of the batch's items; fields of the same
    item are positives. For item j: -log( sum_{c<c'} e^{z_j^c . z_j^c'} / Z_j ),
    Z_j = sum_{j' in B} sum_{c, c'} e^{z_j^c . z_j'^c'}.

    Missing fields (present=False) take no part; other in-batch copies of item j are dropped from
    Z_j (they would be exact duplicates of the positives).
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, z: torch.Tensor, present: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """z: [B, C, d]; present: [B, C] bool; item_idx: [B]. Items with < 2 fields are skipped."""
        rank, _ = rank_and_world()
        B, C, _ = z.shape
        z_all = gather_with_grad(z)
        p_all = gather_nograd(present)
        i_all = gather_nograd(item_idx)
        N = z_all.shape[0]
        # logits[b, c, j', c'] = z_b^c . z_j'^c'
        logits = torch.einsum("bcd,jed->bcje", _at_least_fp32(z), _at_least_fp32(z_all)) / self.temperature
        valid = present[:, :, None, None] & p_all[None, None, :, :]
        same = torch.arange(N, device=z.device)[None, :] == (torch.arange(B, device=z.device) + rank * B)[:, None]
        dup = (item_idx[:, None] == i_all[None, :]) & ~same
        valid = valid & ~dup[:, None, :, None]
        denom = torch.logsumexp(logits.masked_fill(~valid, float("-inf")).flatten(1), dim=1)
        own = logits[torch.arange(B), :, torch.arange(B) + rank * B, :]        # [B, C, C]
        upper = torch.triu(torch.ones(C, C, dtype=torch.bool, device=z.device), diagonal=1)
        pos_valid = upper[None] & present[:, :, None] & present[:, None, :]
        numer = torch.logsumexp(own.masked_fill(~pos_valid, float("-inf")).flatten(1), dim=1)
        has_pair = pos_valid.flatten(1).any(1)
        if not has_pair.any():
            return z.sum() * 0.0
        return (denom - numer)[has_pair].mean()
