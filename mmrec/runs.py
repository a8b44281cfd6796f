"""What a finished run directory and a saved item-tower folder hold, read the same way by the
library (a head loading its weights, the frozen-text cache of a transferred tower, `mmrec.tower`)
and the program (export, evaluate, transfer).

A run directory is written by `mmrec.training.trainer`:

  config.yaml   the resolved config          split.npz       the split (Split or UserSplit)
  model/        the best epoch's weights      data_report.json, metrics.json, history.jsonl

A tower folder is written by `mmrec.tower.ItemTower.save_pretrained` (`mmrec export RUN
--save-tower DIR`; format in docs/api.md): config.json (`format: mmrec-item-tower`,
`format_version`), model.safetensors (the `item_encoder.*` tensors WITHOUT the prefix), README.md,
encoders/<name>/ (tokenizer files). Both are transfer sources (`transfer.from_run`):
`source_item_state` reads either.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmrec.config import ConfigError
from preprocessing.files import CorruptFileError, check_file

ITEM_ENCODER_PREFIX = "item_encoder."

TOWER_FORMAT = "mmrec-item-tower"
TOWER_VERSION = 1                       # bumped when a tower folder's layout or meaning changes
TOWER_CONFIG, TOWER_WEIGHTS, TOWER_CARD = "config.json", "model.safetensors", "README.md"
TOWER_ENCODERS = "encoders"             # encoders/<name>/: a text encoder's tokenizer + BertConfig
# config.json keys every tower needs, with their types (`read_tower_config` checks them)
TOWER_KEYS = {"format": str, "format_version": int, "head": str, "fields": dict, "encoders": dict,
              "model": dict, "dim": int, "segments": (int, type(None)), "weights": dict}


class TowerError(ConfigError):
    """A tower folder that cannot be used: a missing, foreign or damaged file. One line, naming
    the file (`filename`)."""

    def __init__(self, message: str, filename: str | Path | None = None):
        super().__init__(message)
        self.filename = None if filename is None else str(filename)


def state_differences(source: dict, own: dict, prefix: str = "") -> list[str]:
    """Why a source state dict does not load into a model's (`own`): one line per differing shape
    (10 at most), then the keys only on one side; [] when every tensor matches. Keys are shown
    with `prefix` (the part the caller stripped)."""
    missing, unexpected = sorted(set(own) - set(source)), sorted(set(source) - set(own))
    lines = [f"  {prefix}{k}: source {tuple(source[k].shape)}, this config {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(source)) if source[k].shape != own[k].shape][:10]
    if missing:
        lines.append(f"  only in this config ({len(missing)}): " + ", ".join(prefix + k for k in missing[:6]))
    if unexpected:
        lines.append(f"  only in the source run ({len(unexpected)}): " + ", ".join(prefix + k for k in unexpected[:6]))
    return lines


def best_weights(run_dir: str | Path) -> dict:
    """The state dict of a finished run's best model (<run>/model/model.safetensors); a truncated
    or corrupt file is a CorruptFileError naming it."""
    weights = Path(run_dir) / "model" / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{run_dir}: no trained model (model/model.safetensors); train first")
    return _load_safetensors(weights, "the run's best model is damaged: restore that file or train the run again")


def _load_safetensors(path: Path, fix: str) -> dict:
    from safetensors.torch import load_file
    problem = check_file(path)
    if problem is None:
        try:
            return load_file(str(path))
        except Exception as e:   # noqa: BLE001 - whatever safetensors says, the file is unusable
            problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    raise CorruptFileError(f"{path} is corrupt or truncated ({problem}); {fix}", filename=path)


def saved_config(run_dir: Path) -> dict:
    """config.yaml as saved (not re-resolved), or {} if there is none: for error messages."""
    import yaml
    p = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


# ------------------------------------------------------------------------------ tower folders
def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def is_tower_dir(path: str | Path) -> bool:
    """A folder with a tower's config.json and no run config.yaml (it may still be damaged:
    `read_tower_config` says how)."""
    return (Path(path) / TOWER_CONFIG).is_file() and not is_run_dir(path)


def read_tower_config(folder: str | Path) -> dict:
    """A tower folder's config.json, checked: the format, its version, every key of TOWER_KEYS
    with its type. Any problem is a one-line TowerError naming the file."""
    folder = Path(folder)
    path = folder / TOWER_CONFIG
    hint = "save it again with `mmrec export RUN --save-tower DIR` (or ItemTower.save_pretrained)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run directory or item-tower folder")
    if not path.is_file():
        raise TowerError(f"{path}: missing; {folder} is neither an item-tower folder nor a run "
                         f"directory (no config.yaml); {hint}", path)
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise TowerError(f"{path}{where}: not valid JSON ({e.msg if where else e.reason}); {hint}", path) from None
    if not isinstance(cfg, dict) or cfg.get("format") != TOWER_FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise TowerError(f"{path}: not an mmrec item-tower config (format {got!r}, expected "
                         f"{TOWER_FORMAT!r}); {hint}", path)
    version = cfg.get("format_version")
    if version != TOWER_VERSION:
        raise TowerError(f"{path}: format_version {version!r} is not supported (this mmrec reads "
                         f"version {TOWER_VERSION}); {hint}", path)
    for key, kind in TOWER_KEYS.items():
        if key not in cfg:
            raise TowerError(f"{path}: missing key '{key}'; {hint}", path)
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool):
            raise TowerError(f"{path}: key '{key}' is {type(cfg[key]).__name__}, expected "
                             f"{getattr(kind, '__name__', 'int or null')}; {hint}", path)
    for key in ("dim", "token_dim", "fusion"):
        if key not in cfg["model"]:
            raise TowerError(f"{path}: missing key 'model.{key}'; {hint}", path)
    if not cfg["fields"]:
        raise TowerError(f"{path}: 'fields' is empty; {hint}", path)
    return cfg


def tower_weights(folder: str | Path) -> dict:
    """A tower folder's model.safetensors (ItemEncoder keys, no `item_encoder.` prefix); missing,
    truncated or corrupt: one error naming the file."""
    path = Path(folder) / TOWER_WEIGHTS
    if not path.is_file():
        raise TowerError(f"{path}: missing; the tower folder has no weights (save it again with "
                         f"`mmrec export RUN --save-tower DIR`)", path)
    return _load_safetensors(path, "the tower's weights are damaged: save the tower again")


def source_info(source: str | Path) -> dict:
    """What transfer records of its source (metrics.json `transfer`): the source's data source,
    seed and best epoch, for a run directory or a tower folder alike."""
    source = Path(source)
    if is_tower_dir(source):
        trained = (read_tower_config(source).get("trained") or {})
        return {"source_kind": "tower", "source_data": trained.get("data_source"),
                "source_seed": trained.get("seed"), "source_best_epoch": trained.get("best_epoch")}
    cfg = saved_config(source)
    info = source / "model" / "info.json"
    return {"source_kind": "run", "source_data": (cfg.get("data") or {}).get("source"),
            "source_seed": cfg.get("seed"),
            "source_best_epoch": json.loads(info.read_text()).get("epoch") if info.exists() else None}


def source_item_state(source: str | Path) -> dict:
    """The item tower's tensors, keys without the `item_encoder.` prefix, of a transfer source
    (`transfer.from_run`): a finished run's best model, or a saved tower folder's
    model.safetensors."""
    run_dir = Path(source)
    if is_tower_dir(run_dir):
        read_tower_config(run_dir)   # a foreign or damaged folder: one error naming the file
        return tower_weights(run_dir)
    weights = run_dir / "model" / "model.safetensors"
    if not weights.exists():
        if run_dir.is_dir() and not is_run_dir(run_dir):
            read_tower_config(run_dir)   # neither a run nor a tower: the error names config.json
        raise ConfigError(f"transfer.from_run: {run_dir} has no trained model ({weights} is missing); "
                          f"train it to the end first")
    state = best_weights(run_dir)   # a truncated file: one error naming it
    p = ITEM_ENCODER_PREFIX
    item = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    if not item:
        head = saved_config(run_dir).get("head", "?")
        raise ConfigError(f"transfer.from_run: {weights} has no '{p}*' weights (head '{head}'); "
                          f"only runs of the end-to-end 'mmrec' head have a content item tower")
    return item
