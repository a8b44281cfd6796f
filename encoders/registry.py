"""Name -> class registries for modality encoders and fusion layers.

Each encoder class declares `DEFAULTS`, the full spec of one `encoders.<name>` config entry;
the config loader checks user entries against them.
"""
from __future__ import annotations

from mmrec.config import register_entry_defaults

ENCODERS: dict[str, type] = {}
FUSIONS: dict[str, type] = {}


def register_encoder(name: str):
    def deco(cls):
        ENCODERS[name] = cls
        cls.DEFAULTS = {"type": name, **getattr(cls, "DEFAULTS", {})}
        return cls
    return deco


def register_fusion(name: str):
    def deco(cls):
        FUSIONS[name] = cls
        return cls
    return deco


def encoder_defaults(entry: dict) -> dict:
    kind = entry.get("type")
    if kind is None:
        raise KeyError(f"needs a 'type' (one of: {', '.join(ENCODERS)})")
    if kind not in ENCODERS:
        raise KeyError(f"unknown encoder type '{kind}' (known: {', '.join(ENCODERS)})")
    return dict(ENCODERS[kind].DEFAULTS)


register_entry_defaults("encoders", encoder_defaults)


def build_encoder(spec: dict, token_dim: int):
    return ENCODERS[spec["type"]](spec, token_dim)


def build_fusion(fusion_cfg: dict, field_names: list[str], token_dim: int, dim: int):
    kind = fusion_cfg["type"]
    if kind not in FUSIONS:
        raise ValueError(f"model.fusion.type: unknown fusion '{kind}' (known: {', '.join(FUSIONS)})")
    return FUSIONS[kind](fusion_cfg, field_names, token_dim, dim)
