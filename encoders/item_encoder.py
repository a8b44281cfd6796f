"""The item tower: each content field through its modality encoder, then the fusion layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from encoders import fusion as _fusion, text as _text, vision as _vision  # noqa: F401  (register the built-ins)
from encoders.base import EncoderOutput
from encoders.registry import build_encoder, build_fusion


@dataclass
class ItemOutput:
    """v: [B, D] item vectors, or [B, S, D] when a field was given S segments (video inference).
    z: per-field [B(, S), d] aggregate encodings before fusion (for the alignment loss).
    present: per-field [B] bool, False where the item lacks that field."""

    v: torch.Tensor
    z: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None   # adaptive fusion: [B(, S), C] per-field weights


def _expand_segments(x: torch.Tensor, segments: int, has_segments: bool) -> torch.Tensor:
    """[B, ...] -> [B*S, ...]: fields without segments are repeated for every segment."""
    if has_segments:
        return x.flatten(0, 1)
    return x.repeat_interleave(segments, dim=0)


class ItemEncoder(nn.Module):
    def __init__(self, fields: dict, encoders: dict, model_cfg: dict):
        super().__init__()
        if not fields:
            raise ValueError("config: no content fields (`fields` is empty)")
        d, D = int(model_cfg["token_dim"]), int(model_cfg["dim"])
        self.field_encoder = {}
        used = []
        for name, spec in fields.items():
            enc = spec.get("encoder")
            if enc not in encoders:
                raise ValueError(f"fields.{name}.encoder: no encoder named '{enc}' "
                                 f"(encoders: {', '.join(encoders) or 'none'})")
            self.field_encoder[name] = enc
            if enc not in used:
                used.append(enc)
        self.field_names = list(fields)
        self.encoders = nn.ModuleDict({e: build_encoder(encoders[e], d) for e in used})
        self.fusion = build_fusion(model_cfg["fusion"], self.field_names, d, D)

    def forward(self, content: dict[str, dict]) -> ItemOutput:
        token_fields = set(self.fusion.token_fields)
        outputs: dict[str, EncoderOutput] = {}
        present: dict[str, torch.Tensor] = {}
        segments = {}
        for name in self.field_names:
            inputs = content[name]
            outputs[name] = self.encoders[self.field_encoder[name]](inputs, need_tokens=name in token_fields)
            present[name] = inputs["present"].bool()
            if outputs[name].cls.dim() == 3:  # [B, S, d]
                segments[name] = outputs[name].cls.shape[1]
        z = {n: o.cls for n, o in outputs.items()}
        if not segments:
            v = self.fusion(outputs, present)
            return ItemOutput(v, z, present, self._weights(len(v)))
        S = max(segments.values())
        B = present[self.field_names[0]].shape[0]
        flat = {n: EncoderOutput(_expand_segments(o.cls, S, n in segments),
                                 None if o.tokens is None else _expand_segments(o.tokens, S, n in segments),
                                 None if o.mask is None else _expand_segments(o.mask, S, n in segments))
                for n, o in outputs.items()}
        flat_present = {n: p.repeat_interleave(S) for n, p in present.items()}
        v = self.fusion(flat, flat_present)
        w = self._weights(B * S)
        return ItemOutput(v.view(B, S, -1), z, present, None if w is None else w.view(B, S, -1))

    def _weights(self, n: int) -> torch.Tensor | None:
        w = self.fusion.last_weights
        return w if w is not None and len(w) == n else None
