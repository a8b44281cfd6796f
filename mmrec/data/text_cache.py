"""Cached output of the frozen bottom of pretrained text encoders (issue 16, item 4)."""
from __future__ import annotations


def attach_text_caches(item_encoder, prepared, cfg: dict) -> dict:
    """No cache yet: every text encoder runs whole (the cache lands in the next commit)."""
    return {}
