"""Modality encoders and fusion layers, built by name from config entries (a small timm-style registry).

An encoder maps one field's model-ready input to `EncoderOutput` in the common token size d;
a fusion layer maps the fields' outputs to one item vector in R^D.
"""
from encoders.registry import (ENCODERS, FUSIONS, build_encoder, build_fusion, encoder_defaults,
                               register_encoder, register_fusion)
from encoders.base import EncoderOutput
from encoders import text as _text  # noqa: F401  (registers 'bert')
from encoders import vision as _vision  # noqa: F401  (registers 'vit', 'vivit')
from encoders import fusion as _fusion  # noqa: F401  (registers 'late')

__all__ = ["ENCODERS", "FUSIONS", "EncoderOutput", "build_encoder", "build_fusion",
           "encoder_defaults", "register_encoder", "register_fusion"]
