"""What every modality encoder returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
