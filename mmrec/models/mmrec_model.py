"""The end-to-end model of KDD'24: a user table and a content item tower, scored by u.v."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from encoders.item_encoder import ItemEncoder
from mmrec.data.batches import PairCollator, PairDataset
from mmrec.losses import AlignmentLoss, PositiveLookup, RatingRankingLoss
from mmrec.models import register_head


@register_head("mmrec")
class MMRecModel(nn.Module):
    def __init__(self, cfg: dict, n_users: int, n_items: int, train_pairs: np.ndarray | None):
        super().__init__()
        D = int(cfg["model"]["dim"])
        self.user_embedding = nn.Embedding(n_users, D)
        nn.init.normal_(self.user_embedding.weight, std=float(cfg["model"]["user_init_std"]))
        self.item_encoder = ItemEncoder(cfg["fields"], cfg["encoders"], cfg["model"])
        if cfg["train"]["gradient_checkpointing"]:
            for encoder in self.item_encoder.encoders.values():
                if hasattr(encoder, "set_grad_checkpointing"):
                    encoder.set_grad_checkpointing(True)
        loss = cfg["loss"]
        lookup = PositiveLookup(train_pairs, n_items) if loss["false_negative_filter"] else None
        self.ranking_loss = RatingRankingLoss(loss["temperature"], loss["mask_duplicates"],
                                              loss["false_negative_filter"], lookup)
        self.alignment_weight = float(loss["alignment_weight"])
        self.alignment_loss = AlignmentLoss()

    @classmethod
    def build(cls, cfg: dict, prepared) -> "MMRecModel":
        s = prepared.split
        return cls(cfg, s.n_users, s.n_items, s.train_pairs())

    @staticmethod
    def train_data(prepared):
        return PairDataset(prepared.split.train_pairs()), PairCollator(prepared.collate)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.item_encoder(batch["content"])
        slot = batch["item_slot"]
        items = out.v[slot]
        users = self.user_embedding(batch["user_idx"])
        loss_r = self.ranking_loss(users, items, batch["user_idx"], batch["item_idx"])
        losses = {"loss_rating": loss_r.detach()}
        loss = loss_r
        names = self.item_encoder.field_names
        if self.alignment_weight > 0 and len(names) > 1:
            z = torch.stack([out.z[n] for n in names], dim=1)[slot]
            present = torch.stack([out.present[n] for n in names], dim=1)[slot]
            loss_m = self.alignment_loss(z, present, batch["item_idx"])
            losses["loss_align"] = loss_m.detach()
            loss = loss + self.alignment_weight * loss_m
        if out.weights is not None:   # adaptive fusion: which field mattered, logged per step
            mean_w = out.weights[slot].float().mean(0)
            for c, n in enumerate(names):
                losses[f"fusion_weight/{n}"] = mean_w[c].detach()
        losses["loss"] = loss
        return losses

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users)

    def item_vectors(self, content: dict) -> torch.Tensor:
        return self.item_encoder(content).v

    def item_vectors_and_weights(self, content: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item vectors and, for adaptive fusion, the per-field weights [N(, S), C]."""
        out = self.item_encoder(content)
        return out.v, out.weights
