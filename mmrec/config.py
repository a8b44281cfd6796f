"""Layered YAML configuration: defaults -> config file(s) -> command-line overrides.

Like RecBole, every run resolves one nested dict from layers; like mmcv, a config file may name
parents with ``_base_`` (a path relative to the file, or a bare name under ``configs/``).

Every default is data, in YAML shipped in the ``configs`` package (found through
``configs.__file__``, so a wheel install reads the same files as a checkout). Resolving a config
reads those files and imports no model or data code (no torch, timm, transformers, pandas, no
``encoders`` or ``mmrec.data``):

- ``configs/base.yaml``: the sections every run has, whatever its head.
- ``configs/defaults/heads/<head>.yaml``: the sections only that head reads (mmrec: ``loss``,
  ``distill``; clcrec: ``clcrec``; sasrec: ``sasrec``, ``user_split``). A head file may list other
  head files whose sections the head also reads under the key ``_uses_`` (cmclrec:
  ``_uses_: [sasrec]``, since it runs SASRec on the sequential heads' user split). The resolved
  config has base's sections and those of its ``head`` (known once every layer is read: the head
  may come from a file or the command line) and of what that head uses, nothing else. A layer may
  still set another head's section (an older run's config.yaml holds them all; a sweep varies the
  head under shared overrides): it is checked like any key, then left out, as no reader of this
  head looks at it.
- ``configs/defaults/modalities/<modality>.yaml`` and ``configs/defaults/encoders/<type>.yaml``:
  the defaults of one entry of ``fields`` / ``encoders`` (sections whose keys are names the user
  picks), by the entry's ``modality`` / ``type``. Only the files a run's entries name are read.
- ``configs/defaults/world.yaml`` and ``configs/defaults/world_presets/<preset>.yaml``: the keys of
  ``data.world`` (the synthetic world); when ``data.source`` is ``world``, ``data.world`` becomes
  defaults <- preset <- the config's keys (`world_options`), ``attributes`` replaced as a whole.

Every layer is validated on its own before merging, so an unknown key is reported with the file
(or the command line) it came from and the nearest known key; a value must have its default's type.

Plug-ins (a module that adds a modality, an encoder type, a head or a world preset) supply their
defaults with `register_defaults_dir(path)` (a folder laid out like ``configs/defaults``) or
`add_entry_defaults(section, name, defaults)` (one ``fields``/``encoders`` entry's dict).
Lookups try the shipped files first, then registered folders in order, then added dicts, then
the older hooks: `register_entry_defaults` functions, and encoder classes registered with
``encoders.registry.register_encoder`` (read only if a plug-in has imported that module).
"""
from __future__ import annotations

import copy
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from mmrec.config_checks import check_config
from mmrec.errors import ConfigError  # noqa: F401  (raised here; imported from here by most callers)

import configs as _configs_package


def _config_dir() -> Path:
    here = Path(_configs_package.__file__ or "").resolve().parent
    if not (here / "base.yaml").is_file():   # another top-level `configs` package shadows ours
        raise ImportError(f"the `configs` package found at {here} is not mmrec's (no base.yaml there)")
    return here


CONFIG_DIR = _config_dir()
BASE_CONFIG = CONFIG_DIR / "base.yaml"
DEFAULT_CONFIG = CONFIG_DIR / "ml100k.yaml"
DEFAULTS_DIR = CONFIG_DIR / "defaults"

USES_KEY = "_uses_"   # in a head file: the other head files whose sections that head reads too

# Sections whose keys are user-chosen names: section -> (the key naming an entry's kind, the
# folder of defaults files under configs/defaults, what the kind is called in messages).
ENTRY_SECTIONS: dict[str, tuple[str, str, str]] = {
    "fields": ("modality", "modalities", "modality"),
    "encoders": ("type", "encoders", "encoder type"),
}

_DEFAULTS_DIRS: list[Path] = []                                    # register_defaults_dir
_ADDED: dict[str, dict[str, dict]] = {s: {} for s in ENTRY_SECTIONS}   # add_entry_defaults
_ENTRY_DEFAULTS: dict[str, list[Callable[[dict], dict]]] = {}      # register_entry_defaults
_FILE_CACHE: dict[Path, tuple[int, dict]] = {}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def yaml_load(text):
    return yaml.load(text, Loader=_Loader)


# ------------------------------------------------------------------------------ plug-in hooks
def register_defaults_dir(path: str | Path) -> None:
    """Add a folder of defaults laid out like ``configs/defaults``: ``heads/<head>.yaml``,
    ``modalities/<modality>.yaml``, ``encoders/<type>.yaml``, ``world_presets/<preset>.yaml``.
    Shipped files win over a registered folder's; folders are searched in registration order."""
    p = Path(path).resolve()
    if not p.is_dir():
        raise ConfigError(f"register_defaults_dir: {p} is not a folder")
    if p != DEFAULTS_DIR.resolve() and p not in _DEFAULTS_DIRS:
        _DEFAULTS_DIRS.append(p)


def add_entry_defaults(section: str, name: str, defaults: dict) -> None:
    """The defaults of one `fields` entry of modality `name` or one `encoders` entry of type
    `name` (a plug-in's; shipped and folder-registered files are looked up first)."""
    if section not in ENTRY_SECTIONS:
        raise ConfigError(f"add_entry_defaults: section '{section}' has no entries "
                          f"(known: {', '.join(ENTRY_SECTIONS)})")
    key = ENTRY_SECTIONS[section][0]
    _ADDED[section][name] = {key: name, **{k: copy.deepcopy(v) for k, v in defaults.items() if k != key}}


def register_entry_defaults(section: str, fn: Callable[[dict], dict]) -> None:
    """Older hook: `fn(entry)` gives the defaults of an entry of `section` (raising KeyError for
    a kind it does not know); asked after every file and `add_entry_defaults` dict."""
    if section not in ENTRY_SECTIONS:
        raise ConfigError(f"register_entry_defaults: section '{section}' has no entries "
                          f"(known: {', '.join(ENTRY_SECTIONS)})")
    _ENTRY_DEFAULTS.setdefault(section, []).append(fn)


# ------------------------------------------------------------------------------ defaults files
def _defaults_dirs() -> list[Path]:
    return [DEFAULTS_DIR, *_DEFAULTS_DIRS]


def _defaults_files(kind: str) -> dict[str, Path]:
    """name -> file of one kind of defaults (heads, modalities, encoders, world_presets)."""
    out: dict[str, Path] = {}
    for d in _defaults_dirs():
        for f in sorted((d / kind).glob("*.yaml")):
            out.setdefault(f.stem, f)
    return out


def _read_defaults(path: Path) -> dict:
    """A defaults file (cached while unchanged), as a fresh copy."""
    mtime = path.stat().st_mtime_ns
    hit = _FILE_CACHE.get(path)
    if hit is None or hit[0] != mtime:
        hit = (mtime, load_yaml(path))
        _FILE_CACHE[path] = hit
    return copy.deepcopy(hit[1])


def read_defaults(name: str) -> dict:
    """A shipped file of ``configs/defaults`` by its path there, e.g. ``world.yaml``."""
    return _read_defaults(DEFAULTS_DIR / name)


def _known_entries(section: str) -> list[str]:
    _, kind, _ = ENTRY_SECTIONS[section]
    names = list(_defaults_files(kind)) + list(_ADDED[section])
    if section == "encoders":
        names += list(_plugin_encoder_types())
    return list(dict.fromkeys(names))


def _plugin_encoder_types() -> dict:
    """Encoder classes registered with `encoders.registry.register_encoder`, if that module is
    loaded (a plug-in registering an encoder has loaded it; config resolution never does)."""
    reg = sys.modules.get("encoders.registry")
    encoders = getattr(reg, "ENCODERS", None)
    return {name: encoders[name] for name in encoders} if encoders is not None else {}


def entry_defaults(section: str, entry: dict, where: str | None = None) -> dict:
    """The defaults of one `fields`/`encoders` entry, by its modality/type (a fresh dict)."""
    key, kind, what = ENTRY_SECTIONS[section]
    where = f"{where}: " if where else ""
    name = entry.get(key)
    if name is None:
        raise ConfigError(f"{where}needs a '{key}' (known: {', '.join(_known_entries(section))})")
    if isinstance(name, str):
        path = _defaults_files(kind).get(name)
        if path is not None:
            defaults = _read_defaults(path)
            if defaults.get(key) != name:
                raise ConfigError(f"{path}: '{key}: {defaults.get(key)}' must name the file's own "
                                  f"{what}, '{name}'")
            return defaults
        if name in _ADDED[section]:
            return copy.deepcopy(_ADDED[section][name])
    for fn in _ENTRY_DEFAULTS.get(section, []):
        try:
            return dict(fn(entry))
        except KeyError:
            pass
    if section == "encoders" and isinstance(name, str):
        cls = _plugin_encoder_types().get(name)
        if cls is not None:
            return {"type": name, **copy.deepcopy(getattr(cls, "DEFAULTS", {}))}
    known = _known_entries(section)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{where}unknown {what} '{name}'{hint} (known: {', '.join(known)})")


def _entry_defaults(section: str, entry: dict, where: str) -> dict:
    return entry_defaults(section, entry, where)


# ------------------------------------------------------------------------------ heads
class _Heads:
    """Every head file's sections: `sections` (section -> defaults, in file order) and, per
    head, the sections its run resolves with (its own and those of the heads it `_uses_`)."""

    def __init__(self, base: dict):
        self.sections: dict[str, Any] = {}
        self.owner: dict[str, Path] = {}
        self.own: dict[str, list[str]] = {}
        self.uses: dict[str, list[str]] = {}
        files = _defaults_files("heads")
        for head, path in files.items():
            data = _read_defaults(path)
            uses = data.pop(USES_KEY, []) or []
            if isinstance(uses, str):
                uses = [uses]
            unknown = [u for u in uses if u not in files]
            if unknown:
                raise ConfigError(f"{path}: '{USES_KEY}' names no head file: {unknown} "
                                  f"(head files: {', '.join(files)})")
            self.uses[head] = list(uses)
            self.own[head] = list(data)
            for section, defaults in data.items():
                if section in base or section in self.sections:
                    other = BASE_CONFIG if section in base else self.owner[section]
                    raise ConfigError(f"{path}: section '{section}' is already defined in {other}; "
                                      f"name it in '{USES_KEY}' instead")
                self.sections[section] = defaults
                self.owner[section] = path

    def of(self, head: Any) -> list[str]:
        """The head sections a run of `head` has (none for a head without a file)."""
        out: list[str] = []
        todo, seen = [head], set()
        while todo:
            h = todo.pop(0)
            if not isinstance(h, str) or h in seen or h not in self.own:
                continue
            seen.add(h)
            out += [s for s in self.own[h] if s not in out]
            todo += self.uses[h]
        return out


# ------------------------------------------------------------------------------ the synthetic world
WORLD_REPLACED = ("attributes",)   # world keys a layer replaces as a whole (the vocabularies)


def world_defaults() -> dict:
    """The world's own defaults (configs/defaults/world.yaml without `preset`): the keys of
    mmrec's synthetic world and their values before any preset."""
    d = read_defaults("world.yaml")
    d.pop("preset", None)
    return d


def world_presets() -> dict[str, dict]:
    """preset name -> its keys (configs/defaults/world_presets/<name>.yaml and registered folders)."""
    return {name: _read_defaults(path) for name, path in _defaults_files("world_presets").items()}


def _world_merge(base: dict, over: dict | None) -> dict:
    over = over or {}
    out = deep_merge(base, {k: v for k, v in over.items() if k not in WORLD_REPLACED})
    for k in WORLD_REPLACED:
        if k in over:
            out[k] = copy.deepcopy(over[k])
    return out


def resolve_world(world: dict | None, preset: str | None = None, where: str = "data.world",
                  prefix: str = "data.world.") -> dict:
    """defaults <- preset <- `world`, every key checked (did-you-mean, types); `preset` (else
    world['preset'], else the default's) is the preset merged and named in the result."""
    schema = read_defaults("world.yaml")
    if world is not None and not isinstance(world, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.')}' must be a mapping of world keys, got {world!r}")
    world = _type_raw(dict(world or {}), schema, None, top=False)
    _check(world, schema, where, None, prefix)
    name = preset if preset is not None else world.get("preset", schema["preset"])
    files = _defaults_files("world_presets")
    if name not in files:
        close = difflib.get_close_matches(str(name), list(files), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown world preset '{name}' ('{prefix}preset'){hint} "
                          f"(known: {', '.join(files)})")
    preset_keys = _read_defaults(files[name])
    if "preset" in preset_keys:
        raise ConfigError(f"{files[name]}: a preset cannot set 'preset'")
    _check(preset_keys, schema, str(files[name]), None, prefix)
    out = _world_merge(_world_merge(schema, preset_keys), world)
    out["preset"] = name
    return out


def world_options(cfg: dict) -> dict:
    """The synthetic world's options of a run config: defaults (configs/defaults/world.yaml) <-
    the preset named in `data.world.preset` <- the config's `data.world` keys, checked; the same
    for a resolved config (whose `data.world` is already merged: merging again changes nothing)."""
    return resolve_world(((cfg or {}).get("data") or {}).get("world"))


# ------------------------------------------------------------------------------ files and layers
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
        if top and key in ENTRY_SECTIONS and isinstance(value, dict):
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
        if prefix == "" and key in ENTRY_SECTIONS:
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
    for section in ENTRY_SECTIONS:
        entries = cfg.get(section) or {}
        full = {}
        for name, entry in entries.items():
            if entry is None:
                continue
            full[name] = deep_merge(_entry_defaults(section, entry, f"'{section}.{name}'"), entry)
        cfg[section] = full
    return cfg


def _schema(base: dict, heads: _Heads) -> dict:
    """Every key a layer may set: base's, every head's sections, and `data.world`'s keys."""
    schema = {**copy.deepcopy(base), **copy.deepcopy(heads.sections)}
    if isinstance(schema.get("data"), dict):
        schema["data"]["world"] = read_defaults("world.yaml")
    return schema


def _plugin_names(layers: list[tuple[str, dict]]) -> list[str]:
    names: list[str] = []
    for where, layer in layers:
        value = layer.get("plugins")
        if isinstance(value, RawValue):
            value = _parse_value(value)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: 'plugins' must be a list of module names, got {value!r}")
        names += value
    return names


def import_plugins(names: list[str]) -> None:
    """Import the modules a config's `plugins` names (mmrec.plugins); a missing one is one line."""
    from mmrec.plugins import load_plugins
    try:
        load_plugins(names, entry_points=False)
    except ModuleNotFoundError as e:
        raise ConfigError(f"plugins: cannot import '{e.name}' ({e}); is it on the Python path?") from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Resolve the run config: defaults, then `path` (with its `_base_` chain), then overrides.

    The defaults are base.yaml's sections and those of the run's head (after every layer, since
    a layer may set `head`); `fields`/`encoders` entries get their modality's/type's defaults and
    `data.world` the world's when data.source is world."""
    layers = []
    if path is not None:
        layers += _file_layers(resolve_config_path(path))
    if overrides:
        over = parse_overrides(overrides, typed=False) if isinstance(overrides, list) else overrides
        layers.append(("command line", over))
    import_plugins(_plugin_names(layers))   # before any default is looked up: they may add some
    base = load_yaml(BASE_CONFIG)
    heads = _Heads(base)
    schema = _schema(base, heads)
    cfg = {**copy.deepcopy(base), **copy.deepcopy(heads.sections)}
    for where, layer in layers:
        layer = _type_raw(layer, schema, cfg)
        _check(layer, schema, where, cfg)
        cfg = deep_merge(cfg, layer)
    keep = heads.of(cfg.get("head"))
    cfg = {k: v for k, v in cfg.items() if k not in heads.sections or k in keep}
    data = cfg.get("data")
    if isinstance(data, dict) and data.get("source") == "world":
        data["world"] = resolve_world(data.get("world"))
    cfg = _fill_entries(cfg)
    check_config(cfg)   # torch-free: what the config alone can tell
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
