"""Registries of modality encoders and fusion layers.

Each encoder class declares `DEFAULTS`, the full spec of one `encoders.<name>` config entry;
the config loader checks user entries against them.
"""
from __future__ import annotations

from mmrec.config import register_entry_defaults
from mmrec.registry import Registry

ENCODERS = Registry("encoder type")
FUSIONS = Registry("fusion")


def register_encoder(name: str):
    def deco(cls):
        cls.DEFAULTS = {"type": name, **getattr(cls, "DEFAULTS", {})}
        return ENCODERS.register(name, cls)
    return deco


def register_fusion(name: str):
    return FUSIONS.register(name)


def encoder_defaults(entry: dict) -> dict:
    if entry.get("type") is None:
        raise KeyError(f"needs a 'type' (one of: {', '.join(ENCODERS)})")
    return dict(ENCODERS[entry["type"]].DEFAULTS)


register_entry_defaults("encoders", encoder_defaults)


def build_encoder(spec: dict, token_dim: int):
    return ENCODERS[spec["type"]](spec, token_dim)


def build_fusion(fusion_cfg: dict, field_names: list[str], token_dim: int, dim: int):
    return FUSIONS[fusion_cfg["type"]](fusion_cfg, field_names, token_dim, dim)
