"""Plain-data presets of the encoders: named architecture sizes and the defaults the models fall
back on. No torch here (and nothing from `mmrec`): the config checks (`mmrec/config_checks.py`)
read these tables to check a config before any model is built, and the torch modules
(`encoders/vision.py`, `encoders/text.py`) read the same tables to build the model.
"""
from __future__ import annotations

from pathlib import Path

import yaml

import configs

# The tables are plain data in configs/defaults/encoder_presets.yaml, which the config checks
# (mmrec/config_checks.py) read through this module before any model is built.
_TABLES = yaml.safe_load((Path(configs.__file__).resolve().parent / "defaults" / "encoder_presets.yaml").read_text())

# Named ViT / ViViT sizes (timm-style): `arch: paper` (224 px, P=16, d=192, L=4 spatial and L=4
# temporal) for GPU users, `arch: tiny` for CPU tests and demos.
VISION_ARCHS: dict[str, dict] = _TABLES["vision_archs"]
VISION_SIZE_KEYS = tuple(VISION_ARCHS["paper"])
VISION_STEMS = tuple(_TABLES["vision_stems"])
VIVIT_TEMPORAL = tuple(_TABLES["vivit_temporal"])
ENCODER_MODALITY: dict[str, str] = _TABLES["encoder_modality"]   # encoder type -> the fields' modality
# `transformers.BertConfig()`'s own defaults for the keys a from-scratch BERT is checked on
BERT_CONFIG_DEFAULTS: dict[str, int] = _TABLES["bert_config_defaults"]
BERT_POOLING = tuple(_TABLES["bert_pooling"])


def resolve_vision_arch(spec: dict) -> dict:
    """The named architecture's sizes, with every size key the spec sets explicitly on top."""
    arch = spec.get("arch") or "paper"
    if arch not in VISION_ARCHS:
        raise ValueError(f"encoders: unknown vision arch '{arch}' (known: {', '.join(VISION_ARCHS)})")
    sizes = dict(VISION_ARCHS[arch])
    sizes.update({k: spec[k] for k in VISION_SIZE_KEYS if spec.get(k) is not None})
    return sizes
