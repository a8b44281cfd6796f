"""SASRec (Kang & McAuley, ICDM'18) on the user cold-start split (`mmrec.data.sequences`).

Items are embedded (index 0 = padding, n_items + 1 = the [MASK] token augmentations use), a
learned position embedding is added, causal self-attention blocks (torch's TransformerEncoder,
pre-norm) encode the sequence, and position t scores every item by a dot product with the shared
item embeddings. Training: full-softmax cross-entropy of the next item at every position (as in
RecBole's SASRec with `loss_type: CE`), on one random window of each known user's sequence per
epoch. A cold user has no sequence: plain SASRec gives them an all-padding input, i.e. one and the
same ranking for every cold user; `cmclrec` replaces that input by a simulated sequence.

A user cold-start head (`mmrec.models.base.UserColdStartHead`): the family gives the data and
split, loading a run and re-evaluating it; this head adds `evaluate_part` (overall / cold / warm
metrics) and `baselines` (random and popularity on the same split).

A user's vector is the last position's state of its input sequence (`sequence_states`); an item's
is its row of the item embedding table (`item_table`); score = user . item. Evaluation and export
both score with exactly these (`StateScorer`).

Several processes (`accelerate launch`): every rank trains on its slice of the global batch; the
next-item loss is normalised by the global number of target positions, so N processes x batch B
give the gradient of one process with batch N*B. Evaluation and baselines rank whole chunks of
users per process and gather the per-user metrics (`mmrec.evaluation.ranking.evaluate_ranking`),
so every process gets the single-process numbers.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mmrec.data.sequences import PART_CODES, TRAIN, SequenceData, UserSplit
from mmrec.distributed import is_distributed
from mmrec.evaluation.evaluator import EvalResult, RankingEvaluator
from mmrec.evaluation.ranking import evaluate_ranking
from mmrec.models.base import UserColdStartHead, register_head

log = logging.getLogger("mmrec")

# user_part code -> name (users.csv of `mmrec export`)
PART_NAMES = {TRAIN: "train", **{code: f"{p}_{k}" for (p, k), code in PART_CODES.items()}}


def attention_mask(valid: torch.Tensor, heads: int, causal: bool = True) -> torch.Tensor:
    """Boolean mask (True = may NOT attend) [B * heads, L, L]: causal, padding keys hidden; every
    position may attend to itself, so all-padding rows stay finite (their outputs are unused)."""
    B, L = valid.shape
    allowed = valid[:, None, :].expand(B, L, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=valid.device)
    return (~allowed).repeat_interleave(heads, dim=0)


class SASRecEncoder(nn.Module):
    """R(.): embeddings of a sequence [B, L, d] -> contextual states [B, L, d]."""

    def __init__(self, n_items: int, cfg: dict):
        super().__init__()
        d, L = int(cfg["hidden"]), int(cfg["max_len"])
        self.n_items, self.dim, self.max_len, self.heads = n_items, d, L, int(cfg["heads"])
        self.item_embedding = nn.Embedding(n_items + 2, d, padding_idx=0)
        self.position_embedding = nn.Embedding(L, d)
        layer = nn.TransformerEncoderLayer(d, self.heads, dim_feedforward=d, dropout=float(cfg["dropout"]),
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, int(cfg["layers"]), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    @property
    def mask_token(self) -> int:
        return self.n_items + 1

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(ids)

    def encode(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        pos = self.position_embedding(torch.arange(L, device=x.device))[None]
        h = self.dropout(x + pos)
        h = self.blocks(h, mask=attention_mask(valid, self.heads))
        return self.norm(h)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(ids), ids > 0)

    def item_weights(self) -> torch.Tensor:
        """[n_items, d]: the output embeddings of items 0..n_items-1 (ids 1..n_items)."""
        return self.item_embedding.weight[1:self.n_items + 1]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_weights().T


# ---------------------------------------------------------------------------------------------
# training data

class SequenceWindows(Dataset):
    """One example per known user (training users, warm val/test users' earlier items): a random
    window of at most max_len + 1 consecutive items, as long as the sequence allows, drawn from
    the sample seed; input = window[:-1], target = window[1:], both left-padded to max_len."""

    def __init__(self, split: UserSplit, max_len: int):
        self.split, self.max_len = split, int(max_len)
        self.users = split.train_users()

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key):
        idx, seed = key
        u = int(self.users[idx])
        items = self.split.history(u) + 1          # ids: 1..n_items (0 = padding)
        n, L = len(items), self.max_len
        rng = np.random.default_rng(seed)
        end = int(rng.integers(min(n, L + 1), n + 1))
        w = items[max(0, end - (L + 1)):end]
        inp = np.zeros(L, np.int64)
        tgt = np.zeros(L, np.int64)
        inp[L - len(w) + 1:] = w[:-1]
        tgt[L - len(w) + 1:] = w[1:]
        return u, inp, tgt, self.split.features[u]


def collate_windows(samples) -> dict:
    return {"user": torch.tensor([s[0] for s in samples], dtype=torch.long),
            "input": torch.from_numpy(np.stack([s[1] for s in samples])),
            "target": torch.from_numpy(np.stack([s[2] for s in samples])),
            "features": torch.from_numpy(np.stack([s[3] for s in samples]).astype(np.int64))}


def left_padded(split: UserSplit, users: np.ndarray, max_len: int) -> np.ndarray:
    """[len(users), max_len] the last max_len known items (ids 1..n) of each user, left-padded."""
    out = np.zeros((len(users), max_len), np.int64)
    for r, u in enumerate(users):
        h = split.history(int(u))[-max_len:] + 1
        if len(h):
            out[r, max_len - len(h):] = h
    return out


def next_item_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 14 / SASRec-CE: cross-entropy over all items at every non-padding position.

    On several processes the mean is over the positions of the global batch: this rank's sum
    times the world size over the global count, so the data-parallel average of the gradients is
    the gradient of the global-batch mean (windows of different lengths give the ranks
    different numbers of positions)."""
    flat, t = logits.reshape(-1, logits.shape[-1]), target.reshape(-1) - 1
    if not is_distributed():
        return F.cross_entropy(flat, t, ignore_index=-1)
    import torch.distributed as dist
    count = (t >= 0).sum().to(torch.float64)
    dist.all_reduce(count)
    total = F.cross_entropy(flat, t, ignore_index=-1, reduction="sum")
    return total * dist.get_world_size() / count.clamp_min(1).to(total.dtype)


# ---------------------------------------------------------------------------------------------
# evaluation

def split_metrics(res: EvalResult, split: UserSplit) -> dict:
    """Means over all evaluated users (plain keys) and over the cold / warm ones (`cold/`, `warm/`)."""
    out = {k: float(v.mean()) if len(v) else float("nan") for k, v in res.per_user.items()}
    out["users"] = int(len(res.users))
    cold = split.is_cold(res.users)
    for name, m in (("cold", cold), ("warm", ~cold)):
        for k, v in res.per_user.items():
            out[f"{name}/{k}"] = float(v[m].mean()) if m.any() else float("nan")
        out[f"{name}/users"] = int(m.sum())
    return out


def evaluate_scores(score_fn, split: UserSplit, part: str, eval_cfg: dict, device="cpu") -> dict:
    """Full ranking over all items for the part's cold and warm users: targets = each user's
    held-out last items; each user's known items are excluded (masked with -inf). On several
    processes each ranks a block of whole user chunks; the per-user metrics are gathered."""
    users = split.users_of(part)
    evaluator = RankingEvaluator(eval_cfg["ks"], eval_cfg["user_chunk"])
    res = evaluate_ranking(score_fn, users, np.arange(split.n_items), split.targets(users), evaluator,
                           exclude=split.known(users), n_items=split.n_items, device=device)
    return split_metrics(res, split)


class StateScorer:
    """The sequential heads' score function: users [c] -> user . item for every item [c, n_items],
    the users' states computed on demand in batches of `batch` (so each process only encodes the
    users it ranks). Evaluation and export both use it."""

    def __init__(self, model: "SASRecModel", device="cpu", batch: int = 256):
        self.model, self.device, self.batch = model, device, int(batch)
        self.items = model.item_table()

    @torch.no_grad()
    def states(self, users: np.ndarray) -> torch.Tensor:
        users = np.asarray(users, dtype=np.int64)
        out = [self.model.user_states(users[s:s + self.batch], self.device).float().cpu()
               for s in range(0, len(users), self.batch)]
        return torch.cat(out) if out else torch.zeros(0, self.items.shape[1])

    def __call__(self, users: torch.Tensor) -> torch.Tensor:
        return self.states(users.cpu().numpy()) @ self.items.T


def popularity_scores(split: UserSplit) -> torch.Tensor:
    counts = np.zeros(split.n_items)
    for u in split.train_users():
        np.add.at(counts, split.history(int(u)), 1.0)
    return torch.from_numpy(counts).float()


def sequence_baselines(cfg: dict, split: UserSplit, parts=("val", "test"), device="cpu") -> dict:
    """random (seeded) and popularity (counts over the known items of known users)."""
    from mmrec.evaluation.baselines import RandomScorer
    pop = popularity_scores(split)
    out: dict = {}
    for name in cfg["eval"]["baselines"]:
        if name == "random":
            fn = RandomScorer(split.n_items, int(cfg["seed"]))
        elif name == "popularity":
            fn = lambda users, p=pop: p.expand(len(users), -1)   # noqa: E731
        else:
            out[name] = {"skipped": f"not available for head '{cfg['head']}' (random | popularity)"}
            continue
        out[name] = {part: evaluate_scores(fn, split, part, cfg["eval"], device) for part in parts}
    return out


# ---------------------------------------------------------------------------------------------

@register_head("sasrec")
class SASRecModel(UserColdStartHead):
    uses_features = False                 # plain SASRec: a cold user's input is all padding
    ddp_find_unused_parameters = False    # every parameter takes part in every step

    def __init__(self, cfg: dict, split: UserSplit):
        super().__init__()
        self.cfg = cfg
        self.split = split
        self.max_len = int(cfg["sasrec"]["max_len"])
        self.rec = SASRecEncoder(split.n_items, cfg["sasrec"])
        self.epoch = 0

    # head interface -----------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: dict, prepared: SequenceData):
        if not isinstance(prepared, SequenceData):
            raise TypeError(f"head '{cfg['head']}' needs the user cold-start data (prepare_data)")
        return cls(cfg, prepared.split)

    @classmethod
    def for_weights(cls, cfg: dict, split: UserSplit, state: dict):
        return cls(cfg, split)

    def train_data(self, prepared: SequenceData):
        return SequenceWindows(prepared.split, self.max_len), collate_windows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @torch.no_grad()
    def evaluate_part(self, prepared: SequenceData, part: str, eval_cfg: dict, device="cpu", autocast=None,
                      progress: bool = False) -> dict:
        return evaluate_scores(StateScorer(self, device), prepared.split, part, eval_cfg, device)

    def baselines(self, cfg: dict, prepared: SequenceData, device="cpu") -> dict:
        return sequence_baselines(cfg, prepared.split, device=device)

    # model --------------------------------------------------------------------------------
    def item_table(self) -> torch.Tensor:
        """[n_items, d] float32 on the CPU: what every item is scored with (the rows of the
        item embedding table, SASRec's shared input/output embeddings), in split.item_ids order."""
        return self.rec.item_weights().detach().float().cpu()

    def user_states(self, users: np.ndarray, device="cpu") -> torch.Tensor:
        """[len(users), d] of the split's users: their last max_len known items (none for cold
        users), their feature codes and whether they are cold (`sequence_states`)."""
        users = np.asarray(users, dtype=np.int64)
        return self.sequence_states(left_padded(self.split, users, self.max_len),
                                    self.split.features[users], self.split.is_cold(users), device)

    def sequence_states(self, ids: np.ndarray, codes: np.ndarray, cold: np.ndarray,
                        device="cpu") -> torch.Tensor:
        """[B, d]: the last position's state of left-padded item ids [B, max_len] (1..n_items);
        a cold user has an all-padding input. `codes` / `cold` are unused here (cmclrec: a cold
        user's state comes from its feature codes)."""
        return self.rec(torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device))[:, -1]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        h = self.rec(batch["input"])
        loss = next_item_loss(self.rec.logits(h), batch["target"])
        return {"loss": loss, "loss_rec": loss.detach()}
