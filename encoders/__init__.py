"""Modality encoders and fusion layers, built by name from config entries (a small timm-style registry).

An encoder maps one field's model-ready input to `EncoderOutput` in the common token size d;
a fusion layer maps the fields' outputs to one item vector in R^D.

Importing the package is cheap: the torch modules (and the registration of the built-in
encoders and fusions) load on first use of a name below, so the pure-data parts
(`encoders.presets`, `encoders.registry`, `encoders.pretrained`) stay free of torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"ENCODERS": "encoders.registry", "FUSIONS": "encoders.registry", "build_encoder": "encoders.registry",
            "build_fusion": "encoders.registry", "encoder_defaults": "encoders.registry",
            "register_encoder": "encoders.registry", "register_fusion": "encoders.registry",
            "EncoderOutput": "encoders.base", "ItemEncoder": "encoders.item_encoder"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'encoders' has no attribute '{name}'")
    importlib.import_module("encoders.item_encoder")   # registers the built-in encoders and fusions
    return getattr(importlib.import_module(_EXPORTS[name]), name)
