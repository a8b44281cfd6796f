"""CLCRec (Wei et al., ACM MM'21, Sec. 2.3): contrastive learning for cold-start items on
precomputed features, as a head of the shared trainer (`head: clcrec`, section `clcrec:`).

- U-I CEN: user and item ID embeddings through a collaborative encoder, CEN_MF (the embeddings
  themselves) or CEN_GCN (LightGCN: mean over layers of symmetric-normalised propagation on the
  training graph); g(z_u, z_i) = exp(z_u.z_i / tau) (Eq. 10).
- R-E CEN: the feature encoder f_j = W2 phi(W1 x_j + b1) + b2 (Eq. 11; phi = leaky ReLU, hidden
  256, as the official code) over the concatenated `features` fields (each L2-normalised);
  h(z_i, f_j) = exp(cos(z_i, f_j) / tau) (Eq. 12).
- Both losses contrast the positive with K sampled negatives: items of the training catalogue the
  user has no positive with, drawn without replacement (official `random.sample`); the R-E pairs
  reuse the same K items (official code).
- L = lam L_RE + (1 - lam) L_UI + eta reg (Eq. 13). reg: `official` is the official code's
  (mean L2 norm of the batch's user ID embeddings + mean L2 norm of its item ID embeddings) / 2;
  `l2` is the squared-norm form the paper writes, on the same batch embeddings.
- Hybrid training: in L_UI each item's collaborative embedding is replaced by its feature
  representation f with probability rho (`hybrid_sampling: bernoulli`, per item and row, as the
  paper describes). `official` reproduces the official code: int(rho * n) row indices drawn with
  replacement, so a fraction 1 - exp(-rho) of rows is replaced (0.39 at rho = 0.5).
- Inference: users are z_u; cold items (every val/test item of a cold-item split) are f_j, score
  z_u . f_j. `collab_item_vectors` gives the warm items' z_i for warm / all-item evaluation
  (`evaluate_warm_cold_all`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec.data.batches import PairDataset
from mmrec.data.content import collate_items
from mmrec.data.split import CSR
from mmrec.data.tables import DataError
from mmrec.models.base import ItemColdStartHead, register_head


def feature_fields(cfg: dict) -> list[str]:
    names = [n for n, f in cfg["fields"].items() if f["modality"] == "features"]
    if not names:
        raise DataError("head clcrec: no field of modality 'features' in `fields` "
                        "(e.g. fields.text_feat: {modality: features, source: frozen_text})")
    return names


# ------------------------------------------------------------------------------------ losses
def contrastive_loss(anchor: torch.Tensor, candidates: torch.Tensor, temperature: float,
                     cosine: bool = False) -> torch.Tensor:
    """-mean log( exp(s_0) / sum_k exp(s_k) ), s_k = <anchor, candidates[:, k]> / tau (k = 0: the
    positive); with cosine=True both sides are L2-normalised first (Eq. 12). anchor [B, D],
    candidates [B, 1+K, D]."""
    if cosine:
        anchor, candidates = F.normalize(anchor, dim=-1), F.normalize(candidates, dim=-1)
    return nce(torch.einsum("bd,bkd->bk", anchor, candidates) / temperature)


def nce(logits: torch.Tensor) -> torch.Tensor:
    """-mean log softmax of column 0 (the positive) over the 1+K columns: both of CLCRec's losses."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def hybrid_mask(shape: tuple[int, ...], rho: float, mode: str = "bernoulli",
                device=None) -> torch.Tensor:
    """Which items' collaborative embeddings are replaced by their feature representation."""
    if mode == "bernoulli":
        return torch.rand(shape, device=device) < rho
    if mode == "official":   # torch.randint(n, (int(n * rho),)) rows of the flattened batch
        n = int(np.prod(shape))
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        mask[torch.randint(n, (int(n * rho),), device=device)] = True
        return mask.view(shape)
    raise ValueError(f"clcrec.hybrid_sampling: 'bernoulli' or 'official', got {mode!r}")


def normalized_adjacency(pairs: np.ndarray, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index [2, 2E], value [2E]) of D^-1/2 A D^-1/2 over the bipartite graph (users first)."""
    pairs = np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)
    u, i = pairs[:, 0], pairs[:, 1] + n_users
    rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
    deg = np.bincount(rows, minlength=n_users + n_items).astype(np.float64)
    val = 1.0 / np.sqrt(deg[rows] * deg[cols])
    return torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(val.astype(np.float32))


# ----------------------------------------------------------------------------------- batches
class NegativeSampler:
    """K items per (user, positive) pair, uniform without replacement over the training items the
    user has no positive with. The draws come from the batch's sample seeds, so a resumed run
    (same batches, same seeds) repeats them."""

    def __init__(self, train: CSR, warm_items: np.ndarray, k: int, n_items: int | None = None):
        self.train, self.warm, self.k = train, np.asarray(warm_items, dtype=np.int64), int(k)
        self.n_items = int(n_items or (max(self.warm.max(initial=0), train.indices.max(initial=0)) + 1))
        r, c = train.pairs()
        self.keys = np.sort(r * self.n_items + c)
        longest = int(train.row_lengths().max(initial=0))
        if len(self.warm) - longest < self.k:
            raise DataError(f"clcrec.num_neg={k}: a user has positives with {longest} of the "
                            f"{len(self.warm)} training items, leaving fewer than K negatives")

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        return self.keys[at] == keys if len(self.keys) else np.zeros(keys.shape, bool)

    def __call__(self, users: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """[B, K] negatives for the users [B]."""
        users = np.asarray(users, dtype=np.int64)
        rng = np.random.default_rng(np.asarray(seeds, dtype=np.uint64) % (2 ** 63))
        out = np.zeros((len(users), self.k), dtype=np.int64)
        todo = np.arange(len(users))
        width = 2 * self.k + 8
        while len(todo):
            draw = self.warm[rng.integers(0, len(self.warm), size=(len(todo), width))]
            ok = ~self._is_positive(users[todo, None], draw)
            order = np.argsort(draw, axis=1, kind="stable")        # drop repeats within a row
            srt = np.take_along_axis(draw, order, axis=1)
            dup = np.zeros_like(ok)
            dup_sorted = np.concatenate([np.zeros((len(todo), 1), bool), srt[:, 1:] == srt[:, :-1]], axis=1)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            ok &= ~dup
            enough = ok.sum(1) >= self.k
            for r in np.flatnonzero(enough):
                out[todo[r]] = draw[r][ok[r]][:self.k]
            todo = todo[~enough]
        return out


class CLCRecCollator:
    def __init__(self, content: dict, item_rows: np.ndarray, sampler: NegativeSampler):
        self.content, self.item_rows, self.sampler = content, item_rows, sampler

    def __call__(self, samples: list[tuple[int, int, int]]) -> dict:
        users = np.fromiter((s[0] for s in samples), np.int64, len(samples))
        pos = np.fromiter((s[1] for s in samples), np.int64, len(samples))
        seeds = np.fromiter((s[2] for s in samples), np.int64, len(samples))
        negs = self.sampler(users, seeds)
        items = np.concatenate([pos[:, None], negs], axis=1)
        unique, slot = np.unique(items, return_inverse=True)
        return {"user_idx": torch.from_numpy(users), "items": torch.from_numpy(items),
                "unique_items": torch.from_numpy(unique),
                "slot": torch.from_numpy(slot.reshape(items.shape)),
                "content": collate_items(self.content, self.item_rows[unique], "train")}


# ------------------------------------------------------------------------------------- model
class FeatureEncoder(nn.Module):
    """Eq. 11: Linear -> leaky ReLU -> Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(in_dim, hidden)
        self.layer2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.leaky_relu(self.layer1(x)))


@register_head("clcrec")
class CLCRecModel(ItemColdStartHead):
    def __init__(self, cfg: dict, n_users: int, n_items: int, train_pairs: np.ndarray | None,
                 feature_dim: int = 1):
        super().__init__()
        c = cfg["clcrec"]
        D = int(cfg["model"]["dim"])
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.fields = feature_fields(cfg)
        self.lam, self.rho, self.tau = float(c["lam"]), float(c["rho"]), float(c["temperature"])
        self.reg_weight, self.reg = float(c["reg_weight"]), c["reg"]
        self.hybrid_sampling = c["hybrid_sampling"]
        self.cf = c["encoder"]
        if self.cf not in ("mf", "gcn"):
            raise DataError(f"clcrec.encoder: 'mf' (CEN_MF) or 'gcn' (CEN_GCN, LightGCN), got {self.cf!r}")
        if self.reg not in ("official", "l2"):
            raise DataError(f"clcrec.reg: 'official' or 'l2', got {self.reg!r}")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.rho <= 1.0:
            raise DataError(f"clcrec.lam and clcrec.rho must be in [0, 1] (got {self.lam}, {self.rho})")
        self.layers = int(c["gcn_layers"])
        self.num_neg = int(c["num_neg"])
        # One xavier-normal table for users and items in the official code: std sqrt(2 / (N + D)).
        std = math.sqrt(2.0 / (n_users + n_items + D))
        self.user_embedding = nn.Embedding(n_users, D)
        self.item_embedding = nn.Embedding(n_items, D)
        nn.init.normal_(self.user_embedding.weight, std=std)
        nn.init.normal_(self.item_embedding.weight, std=std)
        self.feature_encoder = FeatureEncoder(feature_dim, int(c["hidden_dim"]), D)
        if self.cf == "gcn":
            index, value = normalized_adjacency(train_pairs, n_users, n_items)
            self.register_buffer("graph_index", index)
            self.register_buffer("graph_value", value)

    @classmethod
    def build(cls, cfg: dict, prepared) -> "CLCRecModel":
        s = prepared.split
        dim = sum(prepared.content[n].dim for n in feature_fields(cfg))
        return cls(cfg, s.n_users, s.n_items, s.train_pairs(), feature_dim=dim)

    @classmethod
    def for_weights(cls, cfg: dict, split, state: dict) -> "CLCRecModel":
        """The feature width is the saved encoder's; the graph is rebuilt from the split's
        training pairs (the saved buffers then load over equal values)."""
        return cls(cfg, split.n_users, split.n_items, split.train_pairs(),
                   feature_dim=int(state["feature_encoder.layer1.weight"].shape[1]))

    def train_data(self, prepared):
        """(user, positive) pairs; the collator adds K negatives and the items' features."""
        content = {n: prepared.content[n] for n in self.fields}
        split = prepared.split
        sampler = NegativeSampler(split.positives["train"], split.items_of("train"), self.num_neg,
                                  split.n_items)
        return PairDataset(split.train_pairs()), CLCRecCollator(content, prepared.item_rows, sampler)

    @classmethod
    def load_data(cls, cfg: dict, split=None, accelerator=None):
        """The usual cold-item split of `data.source`, or, with `data.source: clcrec` and
        `data.path`, an official CLCRec folder as it is (its split, its feat_t/feat_v/feat_a, its
        warm held-out interactions for the warm and all-item metrics)."""
        if cfg["data"]["source"] != "clcrec":
            return super().load_data(cfg, split, accelerator)
        prepared = official_prepared(cfg, cfg["data"]["path"])
        if split is not None and not np.array_equal(split.item_ids.astype(str), prepared.split.item_ids.astype(str)):
            raise DataError(f"{cfg['data']['path']}: the folder no longer matches the run's split.npz")
        return prepared

    def evaluate_part(self, prepared, part: str, eval_cfg: dict, device="cpu", autocast=None,
                      progress: bool = False) -> dict:
        """Cold metrics at the top level (what the trainer selects on); `warm` and `all` too
        where the data has warm held-out interactions (official folders)."""
        warm = prepared.warm.get(part)
        res = evaluate_warm_cold_all(self, prepared, part, warm, eval_cfg, device)
        out = dict(res["cold"])
        out.update({k: v for k, v in res.items() if k != "cold"})
        return out

    # ---------------------------------------------------------------------------------
    def collab(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_u for all users, z_i for all items): the ID embeddings (MF) or LightGCN's output."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        if self.cf == "gcn" and self.layers > 0:
            n = self.n_users + self.n_items
            adj = torch.sparse_coo_tensor(self.graph_index, self.graph_value, (n, n)).coalesce()
            out, h = ego, ego
            for _ in range(self.layers):
                h = torch.sparse.mm(adj, h)
                out = out + h
            ego = out / (self.layers + 1)
        return ego[:self.n_users], ego[self.n_users:]

    def encode_features(self, content: dict) -> torch.Tensor:
        x = torch.cat([content[n]["x"].float() for n in self.fields], dim=1)
        return self.feature_encoder(x)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """One step of Eq. 13. Scores are computed against the batch's distinct items once and
        gathered per (row, candidate), which equals scoring every candidate row by row (the
        tests check it against a plain loop) at a fraction of the memory traffic."""
        users, slot, uniq = batch["user_idx"], batch["slot"], batch["unique_items"]   # [B], [B, 1+K], [n]
        z_users, z_items = self.collab()
        zu, zq = z_users[users], z_items[uniq]                    # [B, D], [n, D]
        f = self.encode_features(batch["content"])                # [n, D]
        pos = slot[:, 0]
        # R-E: h(z_i, f_j) = exp(cos(z_i, f_j) / tau) for the positive i and its 1+K items j
        cos = F.normalize(zq[pos], dim=-1) @ F.normalize(f, dim=-1).T          # [B, n]
        loss_re = nce(cos.gather(1, slot) / self.tau)
        # U-I with hybrid training: g(z_u, f_j) where the mask says so, else g(z_u, z_j)
        mask = hybrid_mask(tuple(slot.shape), self.rho, self.hybrid_sampling, slot.device)
        s_f, s_z = (zu @ f.T).gather(1, slot), (zu @ zq.T).gather(1, slot)   # [B, 1+K]
        loss_ui = nce(torch.where(mask, s_f, s_z) / self.tau)
        eu, eq = self.user_embedding(users), self.item_embedding(uniq)
        if self.reg == "official":
            reg = (eu.norm(dim=-1).mean() + eq.norm(dim=-1)[slot].mean()) / 2
        else:
            reg = (eu.pow(2).sum(-1).mean() + eq.pow(2).sum(-1)[slot].sum(-1).mean()) / 2
        loss = self.lam * loss_re + (1 - self.lam) * loss_ui + self.reg_weight * reg
        return {"loss": loss, "loss_re": loss_re.detach(), "loss_ui": loss_ui.detach(),
                "loss_reg": reg.detach()}

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        if self.cf == "mf":
            return self.user_embedding(users)
        return self.collab()[0][users]

    def item_vectors(self, content: dict) -> torch.Tensor:
        """Content-only item vectors f_j: what every cold item is scored with."""
        return self.encode_features(content)

    def collab_item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Collaborative z_i of (warm) items."""
        return self.collab()[1][items]


# ------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_warm_cold_all(model: CLCRecModel, prepared, part: str, warm: CSR | None, eval_cfg: dict,
                           device="cpu") -> dict[str, dict]:
    """Official CLCRec protocols with the shared evaluator (masking with -inf, never 1e-15):
    cold: the part's cold items, content vectors f; warm: the training items, z_i, held-out warm
    positives, training positives masked; all: both candidate sets together."""
    from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
    from mmrec.evaluation.ranking import encode_items, evaluate_ranking, user_vectors
    split = prepared.split
    evaluator = RankingEvaluator(eval_cfg["ks"], eval_cfg["user_chunk"])
    cold_items, warm_items = split.items_of(part), split.items_of("train")
    U = user_vectors(model, split.n_users, device)
    Vc = encode_items(model, prepared, cold_items, int(eval_cfg["item_batch_size"]), device)
    Vw = model.collab_item_vectors(torch.from_numpy(warm_items).to(device)).float().cpu()
    train = split.positives["train"]
    out = {}

    def run(cands, vecs, truth):
        users = np.flatnonzero(np.isin(np.arange(split.n_users), truth.pairs()[0]))
        res = evaluate_ranking(DotScorer(U, vecs), users, cands, truth, evaluator, exclude=train,
                               n_items=split.n_items, device=device)
        return {**res.means(), "users": int(len(res.users))}

    out["cold"] = run(cold_items, Vc, split.positives[part])
    if warm is not None and warm.indices.size:
        out["warm"] = run(warm_items, Vw, warm)
        r1, c1 = warm.pairs()
        r2, c2 = split.positives[part].pairs()
        both = CSR.from_pairs(np.concatenate([r1, r2]), np.concatenate([c1, c2]), split.n_users)
        out["all"] = run(np.concatenate([warm_items, cold_items]), torch.cat([Vw, Vc]), both)
    return out


def official_prepared(cfg: dict, folder):
    """PreparedData over an official CLCRec folder: every `features` field names one of its
    feature files (`name: feat_t`, or the field's own name), L2-normalised if the field says so."""
    import pandas as pd
    from mmrec.data.clcrec_format import read_official
    from mmrec.data.pipeline import PreparedData
    from mmrec.data.tables import MultiModalDataset
    from mmrec.features import FeatureContent
    if not folder:
        raise DataError("data.path: data.source=clcrec needs the official CLCRec data folder")
    data = read_official(folder)
    split = data.split
    content = {}
    for name, spec in cfg["fields"].items():
        if spec["modality"] != "features":
            raise DataError(f"fields.{name}: an official CLCRec folder only has feature files "
                            f"(feat_t/feat_v/feat_a); modality '{spec['modality']}' cannot be read from it")
        key = str(spec.get("name") or name)
        letter = key[-1] if key.startswith("feat_") else key
        if letter not in data.features:
            raise DataError(f"fields.{name}.name: {folder}/feat_{letter}.npy not found "
                            f"(there: {['feat_' + k for k in data.features] or 'none'})")
        x = data.features[letter].astype(np.float32)
        if spec["normalize"]:
            n = np.linalg.norm(x, axis=1, keepdims=True)
            x = np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)
        content[name] = FeatureContent(name, x, np.ones(len(x), dtype=bool),
                                       {"source": f"{folder}/feat_{letter}.npy", "dim": int(x.shape[1])})
    rows = []
    for part, csr in split.positives.items():
        u, i = csr.pairs()
        rows.append(pd.DataFrame({"user_id": split.user_ids[u], "item_id": split.item_ids[i]}))
    inter = pd.concat(rows, ignore_index=True)
    inter["rating"], inter["timestamp"] = np.float32(1.0), np.int64(0)
    ds = MultiModalDataset(f"clcrec:{folder}", pd.DataFrame({"item_id": split.item_ids.astype(str)}),
                           inter[["user_id", "item_id", "rating", "timestamp"]])
    report = {"dataset": [f"official CLCRec folder {folder}: {split.n_users} users, {split.n_items} items, "
                          f"{len(inter)} positives (+ warm held-out: val {data.warm['val'].indices.size}, "
                          f"test {data.warm['test'].indices.size})"],
              "fields_present": {n: int(c.present.sum()) for n, c in content.items()},
              "split": split.stats}
    return PreparedData(ds, split, content, np.arange(split.n_items), report, warm=data.warm)
