"""Feature fusion layers (KDD'24 Sec. 5.2): per-field encodings -> one item vector v in R^D.

Every fusion takes the fields' `EncoderOutput`s and a per-field presence mask, so an item that
lacks a field (no trailer, empty synopsis) still gets a vector: late-style fusions put a learned
per-field placeholder in the missing field's slot, early fusion masks the field's tokens and
attends to one learned placeholder token instead.

    late      [CLS] per field -> concatenation -> 0/1/2 FC layers -> D
    early     all tokens of all fields (+ field-type embeddings) -> fusion Transformer ->
              [CLS] or mean -> optional FC (D != d)
    mixture   the fields in `early_fields` fused early into one vector, the rest late
    adaptive  input-dependent softmax weights over the fields' [CLS] vectors (additive
              attention), weighted concatenation -> FC layers; the weights are kept in
              `last_weights` for logging and export
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from encoders.base import EncoderOutput, Fusion
from encoders.registry import register_fusion


def mlp(in_dim: int, out_dim: int, layers: int, hidden: int, dropout: float) -> nn.Module:
    """0, 1 or 2 fully connected layers; 0 keeps the input as the item vector."""
    if layers == 0:
        if in_dim != out_dim:
            raise ValueError(f"model.fusion.fc_layers=0 needs model.dim equal to the fused width "
                             f"({out_dim} != {in_dim})")
        return nn.Identity()
    if layers == 1:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if layers == 2:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden, out_dim))
    raise ValueError(f"model.fusion.fc_layers must be 0, 1 or 2, got {layers}")


def _head(cfg: dict, in_dim: int, dim: int) -> nn.Module:
    return mlp(in_dim, dim, int(cfg["fc_layers"]), int(cfg.get("hidden_dim") or dim),
               float(cfg.get("dropout", 0.0)))


def placeholder_cls(field_names, outputs, present, missing: torch.Tensor) -> torch.Tensor:
    """[B, C, d] field [CLS] vectors, with the learned placeholder missing[c] where the item
    lacks field c."""
    zs = []
    for c, name in enumerate(field_names):
        z = outputs[name].cls
        zs.append(torch.where(present[name].unsqueeze(-1), z, missing[c].to(z.dtype)))
    return torch.stack(zs, dim=1)


@register_fusion("late")
class LateFusion(Fusion):
    """[CLS] per field, concatenated, then an MLP."""

    token_fields: tuple = ()

    def __init__(self, cfg: dict, field_names: list[str], token_dim: int, dim: int):
        super().__init__()
        self.field_names = list(field_names)
        self.missing = nn.Parameter(torch.zeros(len(field_names), token_dim))
        self.head = _head(cfg, len(field_names) * token_dim, dim)

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(placeholder_cls(self.field_names, outputs, present, self.missing).flatten(1))


class FusionTransformer(nn.Module):
    """The fusion Transformer of early fusion: every token of the given fields plus a learned
    field-type embedding, masked where a token is padding or its field is absent, through
    pre-norm timm `Block`s (fused SDPA), aggregated by [CLS] or the mean of the real tokens.
    An absent field contributes one learned placeholder token, so every item has real tokens."""

    def __init__(self, cfg: dict, field_names: list[str], token_dim: int):
        super().__init__()
        self.field_names = list(field_names)
        C, d = len(field_names), token_dim
        self.type_embed = nn.Parameter(torch.zeros(C, d))
        self.missing = nn.Parameter(torch.zeros(C, d))
        trunc_normal_(self.type_embed, std=0.02)
        self.aggregate = cfg.get("aggregate", "cls")
        if self.aggregate not in ("cls", "mean"):
            raise ValueError(f"model.fusion.aggregate must be 'cls' or 'mean', got {self.aggregate!r}")
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if self.aggregate == "cls" else None
        heads = int(cfg.get("heads") or 4)
        if d % heads:
            raise ValueError(f"model.fusion.heads={heads} must divide model.token_dim={d}")
        drop = float(cfg.get("dropout", 0.0))
        self.blocks = nn.ModuleList(Block(d, heads, float(cfg.get("mlp_ratio") or 4.0), qkv_bias=True,
                                          proj_drop=drop, attn_drop=drop)
                                    for _ in range(int(cfg.get("depth") or 1)))
        self.norm = nn.LayerNorm(d)

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        seqs, masks = [], []
        for c, name in enumerate(self.field_names):
            out = outputs[name]
            if out.tokens is None:
                raise ValueError(f"early fusion: the encoder of field '{name}' returned no tokens")
            tok = out.tokens
            B, T = tok.shape[:2]
            real = out.mask.bool() if out.mask is not None else torch.ones(B, T, dtype=torch.bool, device=tok.device)
            here = present[name].bool()
            real = real & here.unsqueeze(1)
            holder = self.missing[c].to(tok.dtype).expand(B, 1, -1)
            seqs.append(torch.cat([holder, tok], dim=1) + self.type_embed[c].to(tok.dtype))
            masks.append(torch.cat([~here.unsqueeze(1), real], dim=1))
        x, m = torch.cat(seqs, dim=1), torch.cat(masks, dim=1)
        if self.cls is not None:
            x = torch.cat([self.cls.to(x.dtype).expand(len(x), -1, -1), x], dim=1)
            m = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)
        attn = m[:, None, None, :]                     # [B, 1, 1, T]: True = may be attended to
        for blk in self.blocks:
            x = blk(x, attn_mask=attn)
        x = self.norm(x)
        if self.cls is not None:
            return x[:, 0]
        w = m.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


@register_fusion("early")
class EarlyFusion(Fusion):
    def __init__(self, cfg: dict, field_names: list[str], token_dim: int, dim: int):
        super().__init__()
        self.field_names = list(field_names)
        self.token_fields = tuple(field_names)
        self.transformer = FusionTransformer(cfg, field_names, token_dim)
        self.head = _head(cfg, token_dim, dim)

    def forward(self, outputs, present) -> torch.Tensor:
        return self.head(self.transformer(outputs, present))


@register_fusion("mixture")
class MixtureFusion(Fusion):
    """Fields named in `early_fields` go through the fusion Transformer (one vector); that vector
    and the other fields' [CLS] vectors are concatenated and fused late."""

    def __init__(self, cfg: dict, field_names: list[str], token_dim: int, dim: int):
        super().__init__()
        early = list(cfg.get("early_fields") or [])
        unknown = [f for f in early if f not in field_names]
        if len(early) < 1 or unknown:
            raise ValueError(f"model.fusion.early_fields={early}: name at least one of the fields "
                             f"{list(field_names)}" + (f" (unknown: {unknown})" if unknown else ""))
        self.token_fields = tuple(early)
        self.late_fields = [f for f in field_names if f not in early]
        self.transformer = FusionTransformer(cfg, early, token_dim)
        self.missing = nn.Parameter(torch.zeros(len(self.late_fields), token_dim))
        self.head = _head(cfg, (1 + len(self.late_fields)) * token_dim, dim)

    def forward(self, outputs, present) -> torch.Tensor:
        parts = [self.transformer(outputs, present)]
        if self.late_fields:
            parts.append(placeholder_cls(self.late_fields, outputs, present, self.missing).flatten(1))
        return self.head(torch.cat(parts, dim=-1))


@register_fusion("adaptive")
class AdaptiveFusion(Fusion):
    """Attention-based adaptive feature fusion (cf. arXiv 2502.03664): field c of item j gets
    weight a_jc = softmax_c( q . tanh(W (z_jc + e_c)) ) over the fields the item has (e_c: a
    learned field-type embedding, so the score knows which field it looks at). The MLP sees the
    weighted concatenation [C a_j1 z_j1, ..., C a_jC z_jC]: with uniform weights this is late
    fusion, and a field the item lacks gets weight 0."""

    token_fields: tuple = ()

    def __init__(self, cfg: dict, field_names: list[str], token_dim: int, dim: int):
        super().__init__()
        self.field_names = list(field_names)
        C, d = len(field_names), token_dim
        self.missing = nn.Parameter(torch.zeros(C, d))
        self.type_embed = nn.Parameter(torch.zeros(C, d))
        trunc_normal_(self.type_embed, std=0.02)
        self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.head = _head(cfg, C * d, dim)
        self.last_weights: torch.Tensor | None = None

    def weights(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """z [B, C, d], present [B, C] -> [B, C], rows sum to 1 over present fields."""
        s = self.score(z + self.type_embed.to(z.dtype)).squeeze(-1).float()
        s = s.masked_fill(~present, float("-inf"))
        return torch.softmax(s, dim=-1).nan_to_num(0.0)   # an item with no field: all zeros

    def forward(self, outputs, present) -> torch.Tensor:
        z = placeholder_cls(self.field_names, outputs, present, self.missing)
        p = torch.stack([present[n].bool() for n in self.field_names], dim=1)
        a = self.weights(z, p)
        self.last_weights = a.detach()
        return self.head((z * (a * len(self.field_names)).unsqueeze(-1).to(z.dtype)).flatten(1))
