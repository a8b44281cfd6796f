"""Feature fusion layers (KDD'24 Sec. 5.2): per-field encodings -> one item vector v in R^D."""
from __future__ import annotations

import torch
from torch import nn

from encoders.base import EncoderOutput
from encoders.registry import register_fusion


def mlp(in_dim: int, out_dim: int, layers: int, hidden: int, dropout: float) -> nn.Module:
    """0, 1 or 2 fully connected layers; 0 keeps the concatenation as the item vector."""
    if layers == 0:
        if in_dim != out_dim:
            raise ValueError(f"model.fusion.fc_layers=0 needs model.dim == fields x token_dim "
                             f"({out_dim} != {in_dim})")
        return nn.Identity()
    if layers == 1:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if layers == 2:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden, out_dim))
    raise ValueError(f"model.fusion.fc_layers must be 0, 1 or 2, got {layers}")


@register_fusion("late")
class LateFusion(nn.Module):
    """[CLS] per field, concatenated, then an MLP. A missing field is replaced by a learned
    per-field placeholder, so items lacking a trailer or a synopsis still get a vector."""

    needs_tokens = False

    def __init__(self, cfg: dict, field_names: list[str], token_dim: int, dim: int):
        super().__init__()
        self.field_names = list(field_names)
        self.missing = nn.Parameter(torch.zeros(len(field_names), token_dim))
        self.head = mlp(len(field_names) * token_dim, dim, int(cfg["fc_layers"]),
                        int(cfg.get("hidden_dim") or dim), float(cfg.get("dropout", 0.0)))

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        zs = []
        for c, name in enumerate(self.field_names):
            z = outputs[name].cls
            keep = present[name].unsqueeze(-1)
            zs.append(torch.where(keep, z, self.missing[c].to(z.dtype)))
        return self.head(torch.cat(zs, dim=-1))
