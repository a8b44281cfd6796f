"""Plain-data presets of the encoders: named architecture sizes and the defaults the models fall
back on. No torch here (and nothing from `mmrec`): the config checks (`mmrec/config_checks.py`)
read these tables to check a config before any model is built, and the torch modules
(`encoders/vision.py`, `encoders/text.py`) read the same tables to build the model.
"""
from __future__ import annotations

# Named ViT / ViViT sizes (timm-style): `arch: paper` (224 px, P=16, d=192, L=4 spatial and L=4
# temporal) for GPU users, `arch: tiny` for CPU tests and demos; any size key set explicitly in
# an encoder entry overrides the named one.
VISION_ARCHS = {
    "paper": {"img_size": 224, "patch_size": 16, "width": 192, "depth": 4, "heads": 3,
              "temporal_depth": 4, "temporal_heads": 3, "max_frames": 64, "tubelet": 1},
    "tiny": {"img_size": 32, "patch_size": 8, "width": 64, "depth": 2, "heads": 2,
             "temporal_depth": 2, "temporal_heads": 2, "max_frames": 64, "tubelet": 1},
}
VISION_SIZE_KEYS = tuple(VISION_ARCHS["paper"])
VISION_STEMS = ("patch", "conv")
VIVIT_TEMPORAL = ("transformer", "mean")

# What each encoder type reads: the modality of the fields it can encode.
ENCODER_MODALITY = {"bert": "text", "vit": "image", "vivit": "video"}

# `transformers.BertConfig()`'s own defaults for the keys a from-scratch BERT (`checkpoint: null`)
# is checked on when `bert_config` does not set them (tests/test_cli_errors.py compares them).
BERT_CONFIG_DEFAULTS = {"hidden_size": 768, "num_attention_heads": 12, "max_position_embeddings": 512}
BERT_POOLING = ("cls", "mean")


def resolve_vision_arch(spec: dict) -> dict:
    """The named architecture's sizes, with every size key the spec sets explicitly on top."""
    arch = spec.get("arch") or "paper"
    if arch not in VISION_ARCHS:
        raise ValueError(f"encoders: unknown vision arch '{arch}' (known: {', '.join(VISION_ARCHS)})")
    sizes = dict(VISION_ARCHS[arch])
    sizes.update({k: spec[k] for k in VISION_SIZE_KEYS if spec.get(k) is not None})
    return sizes
