"""Plug-ins: modules that add readers, modalities, encoders, fusions, heads or baselines to the
registries, the way a user's own code would (docs/extending.md).

A plug-in is any importable module that calls the `register_*` functions when imported. It is
loaded by name from the `mmrec.plugins` entry-point group of every installed distribution (this
project's own research test-bed, `mmrec.synthetic`, is one) and from the `plugins` list of a
config (imported by `mmrec.config.load_config` before the config is checked, so a plug-in's
modality, encoder type or head is known to the checks). The registries the core looks names up
in (readers, baselines, dataset hooks) call `load_plugins()` first, so the core never imports a
plug-in itself.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points as _entry_points

ENTRY_POINT_GROUP = "mmrec.plugins"

_loaded: set[str] = set()
_entry_point_names: list[str] | None = None   # read from the installed metadata once per process


def load_plugins(modules: list[str] | tuple[str, ...] = (), entry_points: bool = True) -> None:
    """Import every entry-point plug-in once (unless entry_points=False), then `modules`."""
    global _entry_point_names
    if entry_points and _entry_point_names is None:
        _entry_point_names = [ep.value for ep in _entry_points(group=ENTRY_POINT_GROUP)]
    names = (list(_entry_point_names) if entry_points else []) + list(modules)
    for name in names:
        if name not in _loaded:
            _loaded.add(name)
            try:
                importlib.import_module(name)
            except Exception:
                _loaded.discard(name)
                raise
