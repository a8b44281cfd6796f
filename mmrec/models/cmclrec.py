"""CMCLRec (Xu et al., SIGIR'24, Sec. 3): cross-modal contrastive learning that gives cold users
a simulated behaviour sequence decoded from their features, fed to SASRec.

Modules (d = sasrec.hidden, L = sasrec.max_len, F = number of user features):
- data augmentation (Sec. 3.3): two views of every user's features and sequence with DISJOINT
  random masks (a masked field -> code 0; a masked item -> the [MASK] item). Psi_f: a field
  embedding per feature (one-hot x matrix) + a per-token MLP -> h_f [F, d]; Psi_s: the shared item
  embeddings + positions -> a causal Transformer encoder -> h_s [L, d]. InfoNCE with cosine
  similarity / tau between the views' pooled vectors (Eq. 3-4; mean over tokens for features,
  the last position for the causal sequence encoder).
- cross-modal module (Sec. 3.4): one single-head self-attention (M1, M2, M3; Eq. 5-7) over h_f
  and over h_s (causal for sequences) -> T_f, T_s; MLP autoencoders E_f/D_f over T_f [F*d] and
  E_s/D_s over T_s [L*d] (padding positions of T_s are zero); L_c2l = L_s + L_f + lambda L_cross
  (Eq. 8-11), L_cross = MMD^2(P_s, P_f) (Gaussian kernel) + ||D_s(p_f) - T_s||^2.
- sequential module (Sec. 3.5): SASRec's blocks R(.) over X = T_s for a warm user and over the
  simulated sequence T^_s' = D_s(E_f(T_f)) for a cold one (Eq. 13); cross-entropy over all items
  (Eq. 14).
- training (Algorithm 1): `cmclrec.pretrain_epochs` epochs of L_pre = alpha L_c^f + beta L_c^s +
  L_c2l (Eq. 15) on warm users (SASRec's blocks get no gradient), then L_fine = eta L_pre + L_rec
  (Eq. 16), where every training user counts twice in L_rec: as warm (flag 0: its own sequence,
  next item at every position) and as simulated cold (flag 1: its simulated sequence, whose last
  state must rank the window's items) — "remove the interactions of some users to simulate cold
  users" (Algorithm 1, line 1) applied to every user, weighted by `cmclrec.cold_weight`.

Choices where the paper is silent or inconsistent, made explicit:
- Eq. 9 prints ||T^_s - T_f||^2, which compares tensors of different shapes ([L, d] vs [F, d]);
  the text says the model learns "the mapping from p_f to T^_s", so the term is ||D_s(p_f) - T_s||^2.
- Eq. 9's MMD is the biased squared MMD, mean k(s,s) - 2 mean k(s,f) + mean k(f,f) (the first
  line of Eq. 9; the last line squares it again, which looks like a typo). sigma: `mmd_sigma`, or
  the median pairwise distance of the batch when null.
- Eq. 8's sums over the batch are means over the batch (so lambda does not depend on batch size),
  and by default (`recon_per_dim`) each user's squared error is also divided by its number of
  dimensions (L*d for sequences): with the raw squared norm the reconstruction terms outweigh the
  recommendation loss by orders of magnitude, and on the synthetic test world both the cold and
  the warm users' results collapsed (cold recall@20 0.31 vs 0.52, warm 0.36 vs 1.0).
- `detach_targets` (on by default; off is as printed) stops the gradient into the reconstruction
  targets T_s and T_f. Without it T_f shrinks towards a trivially reconstructed constant (its
  reconstruction error fell to ~0 on MovieLens-100k); with it, seed 0 gave cold recall@20 0.087
  vs 0.077.
- Psi_s and the sequence self-attention are causal, so that the states fed to SASRec at
  position t never see items after t (SASRec trains on every position's next item).
- Psi_s embeds items with SASRec's item table (input and output embeddings shared, as in SASRec).

Several processes (`accelerate launch`): the batch-level terms are over the GLOBAL batch, so N
processes x batch B compute the loss of one process with batch N*B (the `mmrec` head's rule):
InfoNCE scores this rank's anchors against the gathered views of every rank (labels offset by
rank, `mmrec.distributed.gather_with_grad`), the MMD (and its median kernel width) is computed on
the gathered p_s / p_f, and the next-item loss is normalised by the global number of positions.
The per-user means (reconstruction, simulated-cold next-item loss) need nothing: every rank has
B users. Only the augmentation masks (like dropout) are drawn per rank. SASRec's blocks get no
gradient while pre-training, hence `ddp_find_unused_parameters`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec.data.sequences import UserSplit
from mmrec.distributed import gather_with_grad, rank_and_world
from mmrec.models.base import register_head
from mmrec.models.sasrec import SASRecModel, attention_mask, next_item_loss


# ---------------------------------------------------------------------------------------------
# losses (tested against plain loops in tests/test_cmclrec.py)

def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, offset: int = 0) -> torch.Tensor:
    """Eq. 3/4: -1/N sum_k log( exp(s(a_k, b_k)/tau) / sum_t exp(s(a_k, b_t)/tau) ), s = cosine.
    b may hold more rows than a (the global batch): a_k's positive is b[offset + k]."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    return F.cross_entropy(sim, torch.arange(len(a), device=a.device) + offset)


def global_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """info_nce of this rank's anchors against the views of every rank's batch (one process:
    info_nce itself); the data-parallel mean over ranks is the global batch's loss."""
    rank, _ = rank_and_world()
    return info_nce(a, gather_with_grad(b), tau, rank * len(a))


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Eq. 10: k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), for all pairs [len(x), len(y)]."""
    d2 = torch.cdist(x, y).pow(2)
    return torch.exp(-d2 / (2.0 * sigma ** 2))


def mmd(ps: torch.Tensor, pf: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Eq. 9 (first term): biased squared MMD between the batches P_s and P_f.
    sigma None: the median pairwise distance of the pooled batch (detached)."""
    if sigma is None:
        with torch.no_grad():
            both = torch.cat([ps, pf])
            d = torch.cdist(both, both)
            sigma = d[d > 0].median().clamp_min(1e-6) if (d > 0).any() else torch.tensor(1.0)
    return (gaussian_kernel(ps, ps, sigma).mean() - 2 * gaussian_kernel(ps, pf, sigma).mean()
            + gaussian_kernel(pf, pf, sigma).mean())


def reconstruction(x_hat: torch.Tensor, x: torch.Tensor, per_dim: bool = False) -> torch.Tensor:
    """Eq. 8: ||x^ - x||_2^2 per user (over all of its dimensions), averaged over the batch;
    per_dim: divided by the number of dimensions (a mean squared error)."""
    d = (x_hat - x).pow(2).flatten(1)
    return d.mean(1).mean() if per_dim else d.sum(1).mean()


def disjoint_masks(shape, p: float, valid: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two masks (True = masked) with no position masked in both (Eq. 1: phi_f1 != phi_f2):
    each position is masked in view 1 with probability p, else in view 2 with probability
    p / (1 - p), so both views mask a fraction p of the positions."""
    r = torch.rand(shape, generator=generator)
    m1 = r < p
    m2 = (r >= p) & (r < 2 * p)
    if valid is not None:
        m1, m2 = m1 & valid.cpu(), m2 & valid.cpu()
    return m1, m2


class MLP(nn.Sequential):
    def __init__(self, dims: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers += [nn.GELU(), nn.Dropout(dropout)]
        super().__init__(*layers)


class SelfAttention(nn.Module):
    """Eq. 5-7: sigma_1,2,3 = M_1,2,3 a_i; alpha_ij = softmax_j(sigma_1^i . sigma_2^j / sqrt(d));
    b_i = sum_j alpha_ij sigma_3^j (single head, no residual, no output projection)."""

    def __init__(self, d: int):
        super().__init__()
        self.m1, self.m2, self.m3 = (nn.Linear(d, d, bias=False) for _ in range(3))

    def forward(self, a: torch.Tensor, blocked: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.m1(a), self.m2(a), self.m3(a)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if blocked is None else ~blocked)


class FeatureEncoder(nn.Module):
    """Psi_f: one embedding table per feature field (a one-hot times a matrix) plus a field
    embedding, then a per-token MLP -> [B, F, d]."""

    def __init__(self, sizes: list[int], d: int, dropout: float):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        self.field = nn.Parameter(torch.zeros(len(sizes), d))
        self.mlp = MLP([d, 2 * d, d], dropout)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.02)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = torch.stack([t(codes[:, j]) for j, t in enumerate(self.tables)], dim=1) + self.field
        return self.mlp(x)


class SequenceEncoder(nn.Module):
    """Psi_s: item embeddings (SASRec's table) + positions -> causal Transformer -> [B, L, d]."""

    def __init__(self, L: int, d: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.position = nn.Embedding(L, d)
        nn.init.normal_(self.position.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=d, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = x + self.position(torch.arange(x.shape[1], device=x.device))[None]
        h = self.blocks(h, mask=attention_mask(valid, self.heads))
        return self.norm(h)


@register_head("cmclrec")
class CMCLRecModel(SASRecModel):
    uses_features = True                  # a cold user's state is decoded from its features
    ddp_find_unused_parameters = True     # stage 1 (pre-training) leaves SASRec's blocks unused

    def __init__(self, cfg: dict, split: UserSplit):
        super().__init__(cfg, split)
        c, d, L = cfg["cmclrec"], self.rec.dim, self.max_len
        self.c = c
        nF = len(split.feature_sizes)
        if nF == 0:
            raise ValueError("cmclrec: user_split.features is empty; cold users need features")
        drop = float(c["dropout"])
        self.psi_f = FeatureEncoder(split.feature_sizes, d, drop)
        self.psi_s = SequenceEncoder(L, d, int(c["seq_layers"]), int(cfg["sasrec"]["heads"]), drop)
        self.attn_f = SelfAttention(d)
        self.attn_s = SelfAttention(d)
        z, hid = int(c["latent_dim"]), int(c["ae_hidden"])
        self.E_s, self.D_s = MLP([L * d, hid, z], drop), MLP([z, hid, L * d], drop)
        self.E_f, self.D_f = MLP([nF * d, hid, z], drop), MLP([z, hid, nF * d], drop)
        self.n_fields = nF

    # representations ------------------------------------------------------------------------
    def seq_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_s, T_s) of item-id sequences [B, L]; T_s is zero at padding positions."""
        valid = ids > 0
        h = self.psi_s(self.rec.embed(ids), valid)
        blocked = attention_mask(valid, 1).view(len(ids), ids.shape[1], ids.shape[1])
        T = self.attn_s(h, blocked) * valid[..., None]
        return h, T

    def feature_states(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.psi_f(codes)
        return h, self.attn_f(h)

    def simulate(self, T_f: torch.Tensor) -> torch.Tensor:
        """The simulated behaviour sequence T^_s' = D_s(E_f(T_f)), [B, L, d]."""
        return self.D_s(self.E_f(T_f.flatten(1))).view(len(T_f), self.max_len, self.rec.dim)

    # losses ---------------------------------------------------------------------------------
    def pre_losses(self, ids: torch.Tensor, codes: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Eq. 15's parts for a batch of warm users; also returns T_s and T_f."""
        c = self.c
        tau = float(c["tau"])
        valid = ids > 0
        fm1, fm2 = disjoint_masks(codes.shape, float(c["feature_mask"]))
        sm1, sm2 = disjoint_masks(ids.shape, float(c["item_mask"]), valid)
        f1 = codes.masked_fill(fm1.to(codes.device), 0)
        f2 = codes.masked_fill(fm2.to(codes.device), 0)
        s1 = ids.masked_fill(sm1.to(ids.device), self.rec.mask_token)
        s2 = ids.masked_fill(sm2.to(ids.device), self.rec.mask_token)
        lc_f = global_info_nce(self.psi_f(f1).mean(1), self.psi_f(f2).mean(1), tau)
        lc_s = global_info_nce(self.psi_s(self.rec.embed(s1), valid)[:, -1],
                               self.psi_s(self.rec.embed(s2), valid)[:, -1], tau)
        _, T_s = self.seq_states(ids)
        _, T_f = self.feature_states(codes)
        p_s, p_f = self.E_s(T_s.flatten(1)), self.E_f(T_f.flatten(1))
        # Reconstruction targets; detached (`detach_targets`), they can not be shrunk towards
        # whatever is easiest to reconstruct, which otherwise collapses T_s, the warm users' input.
        tgt_s, tgt_f = T_s.flatten(1), T_f.flatten(1)
        if c["detach_targets"]:
            tgt_s, tgt_f = tgt_s.detach(), tgt_f.detach()
        per_dim = bool(c["recon_per_dim"])
        l_s = reconstruction(self.D_s(p_s), tgt_s, per_dim)
        l_f = reconstruction(self.D_f(p_f), tgt_f, per_dim)
        sim = self.D_s(p_f)
        # Global batch: every rank computes the same MMD over the gathered codes; the gathers'
        # backward sums the ranks' gradients, and the data-parallel mean divides them again.
        l_mmd = mmd(gather_with_grad(p_s), gather_with_grad(p_f), c["mmd_sigma"])
        l_xrec = reconstruction(sim, tgt_s, per_dim)
        l_cross = l_mmd + l_xrec
        l_c2l = l_s + l_f + float(c["lambda_cross"]) * l_cross
        parts = {"lc_f": lc_f, "lc_s": lc_s, "l_s": l_s, "l_f": l_f, "l_mmd": l_mmd, "l_xrec": l_xrec,
                 "pre": float(c["alpha"]) * lc_f + float(c["beta"]) * lc_s + l_c2l}
        return parts, T_s, sim.view(len(ids), self.max_len, self.rec.dim)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        ids, codes, target = batch["input"], batch["features"], batch["target"]
        parts, T_s, sim = self.pre_losses(ids, codes)
        out = {f"loss_{k}": v.detach() for k, v in parts.items()}
        if self.epoch < int(self.c["pretrain_epochs"]):          # Algorithm 1, stage 1
            out["loss"] = parts["pre"]
            return out
        valid = ids > 0                                         # stage 2: Eq. 13-14, 16
        warm = next_item_loss(self.rec.logits(self.rec.encode(T_s, valid)), target)
        g = self.rec.encode(sim, torch.ones_like(valid))[:, -1]
        logp = F.log_softmax(self.rec.logits(g), dim=-1)
        t = target - 1
        has = t >= 0
        cold = -(logp.gather(1, t.clamp_min(0)) * has).sum(1) / has.sum(1).clamp_min(1)
        cold = cold.mean()
        rec = warm + float(self.c["cold_weight"]) * cold
        out.update({"loss_rec_warm": warm.detach(), "loss_rec_cold": cold.detach()})
        out["loss"] = float(self.c["eta"]) * parts["pre"] + rec
        return out

    # evaluation -----------------------------------------------------------------------------
    def sequence_states(self, ids: np.ndarray, codes: np.ndarray, cold: np.ndarray,
                        device="cpu") -> torch.Tensor:
        """Warm users: R(T_s) of their known sequence; cold users (and brand-new users known only
        by their features): R(simulated sequence D_s(E_f(T_f))) of their feature codes."""
        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
        codes = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(device)
        _, T_s = self.seq_states(ids)
        warm = self.rec.encode(T_s, ids > 0)[:, -1]
        _, T_f = self.feature_states(codes)
        cold_states = self.rec.encode(self.simulate(T_f), torch.ones_like(ids, dtype=torch.bool))[:, -1]
        is_cold = torch.from_numpy(np.asarray(cold, dtype=bool)).to(device)
        return torch.where(is_cold[:, None], cold_states, warm)
