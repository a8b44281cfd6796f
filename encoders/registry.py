"""Registries of modality encoders and fusion layers.

The defaults of each encoder type, the full spec of one `encoders.<name>` config entry, are the
YAML file configs/defaults/encoders/<type>.yaml; `register_encoder` gives the class them as
`DEFAULTS` (a plug-in class may declare its own `DEFAULTS` instead). The config loader
(mmrec/config.py) reads the same files without importing this package, and this module imports
nothing from `mmrec`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

import configs


class Registry:
    """Name -> object (timm-style): config strings name encoders, fusions, readers, content
    builders, heads and baselines (mmrec/registry.py re-exports it for mmrec's registries)."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """`@registry.register("name")` on a class or function, or `register("name", obj)`."""
        def deco(o):
            self._entries[name] = o
            return o
        return deco(obj) if obj is not None else deco

    def __getitem__(self, name: str):
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} '{name}' (known: {', '.join(self._entries) or 'none'})")
        return self._entries[name]

    def get(self, name: str, default=None):
        return self._entries.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


ENCODERS = Registry("encoder type")
FUSIONS = Registry("fusion")

ENCODER_DEFAULTS_DIR = Path(configs.__file__).resolve().parent / "defaults" / "encoders"


def shipped_defaults(name: str) -> dict | None:
    """configs/defaults/encoders/<name>.yaml, or None when mmrec ships no such type. (Plain
    YAML floats only there: tests/test_config_data_only.py checks that yaml.safe_load reads
    every defaults file as mmrec.config does.)"""
    path = ENCODER_DEFAULTS_DIR / f"{name}.yaml"
    if not path.is_file():
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def register_encoder(name: str):
    def deco(cls):
        defaults = cls.__dict__.get("DEFAULTS")        # the class's own (a plug-in's) ...
        if defaults is None:
            defaults = shipped_defaults(name)            # ... else the shipped YAML ...
        if defaults is None:
            defaults = getattr(cls, "DEFAULTS", {})      # ... else a parent class's
        cls.DEFAULTS = {"type": name, **{k: v for k, v in defaults.items() if k != "type"}}
        return ENCODERS.register(name, cls)
    return deco


def register_fusion(name: str):
    return FUSIONS.register(name)


def encoder_defaults(entry: dict) -> dict:
    if entry.get("type") is None:
        raise KeyError(f"needs a 'type' (one of: {', '.join(ENCODERS)})")
    return dict(ENCODERS[entry["type"]].DEFAULTS)


def build_encoder(spec: dict, token_dim: int):
    return ENCODERS[spec["type"]](spec, token_dim)


def build_fusion(fusion_cfg: dict, field_names: list[str], token_dim: int, dim: int):
    return FUSIONS[fusion_cfg["type"]](fusion_cfg, field_names, token_dim, dim)
