"""The end-to-end model of KDD'24: a user table and a content item tower, scored by u.v."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from encoders.item_encoder import ItemEncoder
from mmrec.data.batches import PairCollator, PairDataset
from mmrec.data.text_cache import attach_text_caches
from mmrec.losses import (AlignmentLoss, DistillationLoss, PositiveLookup, RatingRankingLoss,
                          SamplingFrequencies)
from mmrec.models.base import ItemColdStartHead, register_head


@register_head("mmrec")
class MMRecModel(ItemColdStartHead):
    def __init__(self, cfg: dict, n_users: int, n_items: int, train_pairs: np.ndarray | None):
        super().__init__()
        D = int(cfg["model"]["dim"])
        self.user_embedding = nn.Embedding(n_users, D)
        nn.init.normal_(self.user_embedding.weight, std=float(cfg["model"]["user_init_std"]))
        self.item_encoder = ItemEncoder(cfg["fields"], cfg["encoders"], cfg["model"])
        if cfg["train"]["gradient_checkpointing"]:
            for encoder in self.item_encoder.encoders.values():
                encoder.set_grad_checkpointing(True)
        loss = cfg["loss"]
        lookup = PositiveLookup(train_pairs, n_items) if loss["false_negative_filter"] else None
        self.mixed_negatives = int(loss["mixed_negatives"])
        # The uniform negatives' pool: every item with a training pair. (None when built to be
        # loaded, e.g. by export: only training needs the pool and the frequencies.)
        self.negative_pool = None if train_pairs is None else np.unique(np.asarray(train_pairs)[:, 1])
        freq = (SamplingFrequencies(train_pairs, n_users, n_items, self.negative_pool)
                if loss["logq_correction"] and train_pairs is not None else None)
        self.ranking_loss = RatingRankingLoss(loss["temperature"], loss["mask_duplicates"],
                                              loss["false_negative_filter"], lookup, freq,
                                              loss["in_batch_negatives"], loss["item_to_user"])
        # Collaborative distillation: an ID embedding per item, read only by the training loss.
        # Cold items have no trained row; every scoring path (item_vectors) is content-only.
        dc = cfg["distill"]
        self.distill = bool(dc["id_embedding"])
        if self.distill:
            self.item_id_embedding = nn.Embedding(n_items, D)
            nn.init.normal_(self.item_id_embedding.weight, std=float(cfg["model"]["user_init_std"]))
            self.distill_rho, self.distill_weight = float(dc["rho"]), float(dc["weight"])
            self.distill_loss = DistillationLoss(dc["temperature"], dc["cosine"])
        self.alignment_weight = float(loss["alignment_weight"])
        self.alignment_loss = AlignmentLoss()

    @classmethod
    def build(cls, cfg: dict, prepared) -> "MMRecModel":
        s = prepared.split
        model = cls(cfg, s.n_users, s.n_items, s.train_pairs())
        # frozen bottoms of pretrained text encoders, computed once per run (encoders.*.cache_frozen)
        model.text_caches = attach_text_caches(model.item_encoder, prepared, cfg)
        return model

    def use_data(self, cfg: dict, prepared) -> None:
        # A loaded run's weights already hold any transferred tower, so the cache is keyed by
        # them and nothing is re-read from a transfer source (which may be gone by now).
        self.text_caches = attach_text_caches(self.item_encoder, prepared, {**cfg, "transfer": {}})

    def train_data(self, prepared):
        return (PairDataset(prepared.split.train_pairs()),
                PairCollator(prepared.collate, self.mixed_negatives, self.negative_pool))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.item_encoder(batch["content"])
        slot = batch["item_slot"]
        neg_slot = batch.get("neg_slot")
        encoded = out.v
        losses = {}
        if self.distill:
            # the encoded items' indices, then CLCRec's hybrid: the ID embedding scores each item
            # in the rating loss, the content vector standing in with probability rho
            ids = torch.zeros(len(encoded), dtype=torch.long, device=encoded.device)
            ids[slot] = batch["item_idx"]
            if neg_slot is not None:
                ids[neg_slot] = batch["neg_idx"]
            id_vectors = self.item_id_embedding(ids)
            stand_in = torch.rand(len(encoded), device=encoded.device) < self.distill_rho
            encoded = torch.where(stand_in[:, None], out.v, id_vectors)
        items = encoded[slot]
        users = self.user_embedding(batch["user_idx"])
        negatives = None if neg_slot is None else encoded[neg_slot]
        loss_r = self.ranking_loss(users, items, batch["user_idx"], batch["item_idx"],
                                   negatives, batch.get("neg_idx"))
        losses["loss_rating"] = loss_r.detach()
        loss = loss_r
        if self.distill and self.distill_weight > 0:
            loss_d = self.distill_loss(out.v[slot], id_vectors[slot], batch["item_idx"])
            losses["loss_distill"] = loss_d.detach()
            loss = loss + self.distill_weight * loss_d
        # items encoded this step (this process): the positives' distinct items, and the extra
        # ones the uniform negatives brought
        n_pos = len(torch.unique(slot))
        losses["items_encoded"] = torch.tensor(float(len(encoded)), device=encoded.device)
        losses["extra_items_encoded"] = torch.tensor(float(len(encoded) - n_pos), device=encoded.device)
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

    def item_tower(self) -> nn.Module:
        return self.item_encoder

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users)

    def item_vectors(self, content: dict) -> torch.Tensor:
        return self.item_encoder(content).v

    def item_vectors_and_weights(self, content: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Item vectors and, for adaptive fusion, the per-field weights [N(, S), C]."""
        out = self.item_encoder(content)
        return out.v, out.weights
