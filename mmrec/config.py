"""Layered YAML configuration: defaults -> config file(s) -> command-line overrides.

Like RecBole, every run resolves one nested dict from layers; like mmcv, a config file may name
parents with ``_base_`` (a path relative to the file, or a bare name under ``configs/``). The
defaults in ``configs/base.yaml`` list every key a layer may set. Sections whose entries are
named by the user (``fields``, ``encoders``) are checked entry by entry against the defaults of
the entry's ``type`` or ``modality``, registered in code next to the module that reads them.

Every layer is validated on its own before merging, so an unknown key is reported with the file
(or the command line) it came from and the nearest known key.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Callable

import re

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
DEFAULT_CONFIG = CONFIG_DIR / "ml100k.yaml"

# Sections whose keys are user-chosen names. Each maps to a function giving the defaults for one
# entry (from its own dict), registered by the modules that build those entries.
_ENTRY_DEFAULTS: dict[str, Callable[[dict], dict]] = {}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def yaml_load(text):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config problem, worded for the person who wrote the config."""


def register_entry_defaults(section: str, fn: Callable[[dict], dict]) -> None:
    _ENTRY_DEFAULTS[section] = fn


def _entry_defaults(section: str, entry: dict, where: str) -> dict:
    _ensure_registries_loaded()
    fn = _ENTRY_DEFAULTS.get(section)
    if fn is None:
        return {}
    try:
        return fn(entry)
    except KeyError as e:  # unknown type/modality name
        raise ConfigError(f"{where}: {e.args[0]}") from None


def _ensure_registries_loaded() -> None:
    # Importing these modules registers the per-entry defaults of `fields` and `encoders`.
    import encoders  # noqa: F401
    import mmrec.data.fields  # noqa: F401
    import mmrec.data.visual  # noqa: F401  (video and image modalities)
    import mmrec.features  # noqa: F401  (precomputed `features` modality)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}{_yaml_where(e)}: not valid YAML: {_yaml_problem(e)}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text (UTF-8) file: byte {e.start} cannot be decoded") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    parts = [getattr(e, "problem", None), getattr(e, "context", None)]
    text = ", ".join(p for p in parts if p) or str(e)
    return " ".join(text.split())


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config path as given, relative to a parent file, or a bare name under configs/."""
    p = Path(name)
    candidates = [p]
    if relative_to is not None:
        candidates.append(relative_to.parent / p)
    candidates += [CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"config file not found: {name} (looked in {', '.join(str(c) for c in candidates)})")


def _file_layers(path: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The layers a file stands for: its `_base_` parents first, then itself."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `_base_` cycle through {' -> '.join(map(str, seen))}")
    data = load_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    layers: list[tuple[str, dict]] = []
    for b in bases:
        layers += _file_layers(resolve_config_path(b, path), seen + (path,))
    layers.append((str(path), data))
    return layers


class RawValue(str):
    """An override's text before typing: parsed as YAML unless the key expects a string."""


def parse_overrides(items: list[str], typed: bool = True) -> dict:
    """`a.b.c=value` strings to a nested dict; values are parsed as YAML (1e-4, [1,2], null).

    With typed=False the values stay `RawValue`s; `load_config` types them by the key's default,
    so `fields.x.template={synopsis}` stays a string instead of becoming a YAML mapping.
    """
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: override '{item}' has an empty key")
        value = _parse_value(raw) if typed else RawValue(raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: '{key}' sets a key below a value")
        node[parts[-1]] = value
    return out


def _parse_value(raw: str):
    if raw == "":
        return ""
    try:
        return yaml_load(raw)
    except yaml.YAMLError:
        return raw


def _type_raw(layer: dict, schema: dict, current: dict | None, top: bool = True) -> dict:
    """Parse the RawValues of a command-line layer, keeping text where a string is expected."""
    out = {}
    for key, value in layer.items():
        default = schema.get(key) if isinstance(schema, dict) else None
        if top and key in _ENTRY_DEFAULTS and isinstance(value, dict):
            before = (current or {}).get(key) or {}
            entries = {}
            for name, entry in value.items():
                if isinstance(entry, dict):
                    typed_probe = _type_raw(entry, {}, None, top=False)   # to learn type/modality
                    merged = deep_merge(before.get(name) or {}, typed_probe)
                    try:
                        entry_schema = _entry_defaults(key, merged, f"command line: '{key}.{name}'")
                    except ConfigError:
                        entry_schema = {}
                    entries[name] = _type_raw(entry, entry_schema, None, top=False)
                else:
                    entries[name] = _parse_value(entry) if isinstance(entry, RawValue) else entry
            out[key] = entries
        elif isinstance(value, dict):
            out[key] = _type_raw(value, default if isinstance(default, dict) else {}, None, top=False)
        elif isinstance(value, RawValue):
            out[key] = str(value) if isinstance(default, str) else _parse_value(value)
        else:
            out[key] = value
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a.b': value} for every leaf; non-scalar leaves as strings (for trackers and diffs)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _check(layer: dict, schema: dict, where: str, current: dict | None = None,
           prefix: str = "") -> None:
    """Validate one layer against the schema; `current` is the config merged so far (top level)."""
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            known = ", ".join(sorted(map(str, schema)))
            raise ConfigError(f"{where}: unknown config key '{dotted}'{hint} (known here: {known})")
        default = schema[key]
        if prefix == "" and key in _ENTRY_DEFAULTS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{dotted}' must be a mapping of names to entries")
            before = (current or {}).get(key) or {}
            for name, entry in value.items():
                if entry is None:  # `fields.title: null` removes an inherited entry
                    continue
                if not isinstance(entry, dict):
                    raise ConfigError(f"{where}: '{dotted}.{name}' must be a mapping")
                merged = deep_merge(before.get(name) or {}, entry)
                entry_schema = _entry_defaults(key, merged, f"{where}: '{dotted}.{name}'")
                _check(entry, entry_schema, where, None, f"{dotted}.{name}.")
            continue
        if not _type_ok(default, value):
            raise ConfigError(
                f"{where}: config key '{dotted}' expects {type(default).__name__} "
                f"(default {default!r}), got {value!r}")
        if isinstance(default, dict) and default and isinstance(value, dict):
            _check(value, default, where, None, f"{dotted}.")


def _fill_entries(cfg: dict) -> dict:
    """Complete every `fields`/`encoders` entry with the defaults of its type; drop null entries."""
    for section in _ENTRY_DEFAULTS:
        entries = cfg.get(section) or {}
        full = {}
        for name, entry in entries.items():
            if entry is None:
                continue
            full[name] = deep_merge(_entry_defaults(section, entry, f"'{section}.{name}'"), entry)
        cfg[section] = full
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Resolve the run config: base defaults, then `path` (with its `_base_` chain), then overrides."""
    _ensure_registries_loaded()
    schema = load_yaml(BASE_CONFIG)
    layers = []
    if path is not None:
        layers += _file_layers(resolve_config_path(path))
    if overrides:
        over = parse_overrides(overrides, typed=False) if isinstance(overrides, list) else overrides
        layers.append(("command line", over))
    cfg = copy.deepcopy(schema)
    for where, layer in layers:
        layer = _type_raw(layer, schema, cfg)
        _check(layer, schema, where, cfg)
        cfg = deep_merge(cfg, layer)
    cfg = _fill_entries(cfg)
    from mmrec.config_checks import check_config   # torch-free: what the config alone can tell
    check_config(cfg)
    return cfg


def dump_config(cfg: dict, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
