"""What every modality encoder returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """One field's encoding in the common token size d.

    cls:    [B, d] aggregate vector ([CLS] or mean), used by late fusion.
    tokens: [B, T, d] the whole output sequence, used by early fusion (None unless asked for).
    mask:   [B, T] True at real tokens (None when every token is real).
    """

    cls: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class ModalityEncoder(nn.Module):
    """Base of every encoder type: built as `cls(spec, token_dim)` from one `encoders.<name>` entry
    (`DEFAULTS`: the entry's defaults); `forward(inputs, need_tokens)` maps one field's collated
    batch to an `EncoderOutput` (tokens and mask only when `need_tokens`: early fusion)."""

    def forward(self, inputs: dict, need_tokens: bool = False) -> EncoderOutput:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass (`train.gradient_checkpointing`); an
        encoder with nothing worth recomputing keeps this no-op."""


class Fusion(nn.Module):
    """Base of every fusion layer: built as `cls(fusion_cfg, field_names, token_dim, dim)` from
    `model.fusion`; `forward(outputs, present)` maps the fields' `EncoderOutput`s and presence
    masks [B] to item vectors [B, D], for items that lack some fields too."""

    token_fields: tuple = ()                 # fields whose whole token sequence it reads
    last_weights: torch.Tensor | None = None  # per-field weights of the last forward, if it has any

    def forward(self, outputs: dict, present: dict) -> torch.Tensor:
        raise NotImplementedError
