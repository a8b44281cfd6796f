"""Content fields: which columns of the item table feed which encoder.

A field is one content signal X^(c) of the paper: a text rendered from item columns by a
template, a trailer, or a set of still images. The defaults of a field entry of each modality
are YAML (configs/defaults/modalities/<modality>.yaml), which the config loader checks a field
entry against key by key; `register_modality` adds a plug-in's.
"""
from __future__ import annotations

import math
import string

import pandas as pd

from mmrec.config import ConfigError, add_entry_defaults, entry_defaults
from mmrec.data.tables import DataError

# The defaults of each modality's field entry are YAML: configs/defaults/modalities/<modality>.yaml
# (text, video, image, features), read by the config loader without importing this module.


def register_modality(name: str, defaults: dict) -> None:
    """A plug-in modality's field defaults (mmrec's own are the YAML files above)."""
    add_entry_defaults("fields", name, {"modality": name, **defaults})


def field_defaults(entry: dict) -> dict:
    """The defaults of a field entry, by its modality; KeyError for none or an unknown one."""
    try:
        return entry_defaults("fields", entry)
    except ConfigError as e:
        raise KeyError(str(e)) from None


def template_columns(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if hasattr(value, "__len__"):
        return len(value) == 0
    return False


def _as_text(value) -> str:
    if _is_empty(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if hasattr(value, "__iter__"):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_texts(items: pd.DataFrame, field_name: str, template: str) -> tuple[list[str], list[bool]]:
    """Render one text field for every item.

    Returns the texts and a presence flag per item: a field is missing when every column its
    template names is empty (so ' ()' from an empty '{title} ({year})' is never fed to BERT).
    """
    cols = template_columns(template)
    if not cols:
        raise DataError(f"fields.{field_name}.template {template!r} names no item column")
    unknown = [c for c in cols if c not in items.columns]
    if unknown:
        raise DataError(f"fields.{field_name}.template names unknown item column(s) {unknown} "
                        f"(item columns: {list(items.columns)})")
    texts, present = [], []
    values = {c: items[c].tolist() for c in cols}
    for i in range(len(items)):
        row = {c: values[c][i] for c in cols}
        has = any(not _is_empty(v) for v in row.values())
        present.append(has)
        texts.append(template.format(**{c: _as_text(v) for c, v in row.items()}).strip() if has else "")
    return texts, present
