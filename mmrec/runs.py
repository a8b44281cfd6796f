"""What a finished run directory holds, read the same way by the library (a head loading its
weights, the frozen-text cache of a transferred tower) and the program (export, evaluate,
transfer). The layout is written by `mmrec.training.trainer`:

  config.yaml   the resolved config          split.npz       the split (Split or UserSplit)
  model/        the best epoch's weights      data_report.json, metrics.json, history.jsonl
"""
from __future__ import annotations

from pathlib import Path

from mmrec.config import ConfigError
from preprocessing.files import CorruptFileError, check_file

ITEM_ENCODER_PREFIX = "item_encoder."


def best_weights(run_dir: str | Path) -> dict:
    """The state dict of a finished run's best model (<run>/model/model.safetensors); a truncated
    or corrupt file is a CorruptFileError naming it."""
    from safetensors.torch import load_file
    weights = Path(run_dir) / "model" / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{run_dir}: no trained model (model/model.safetensors); train first")
    fix = "the run's best model is damaged: restore that file or train the run again"
    problem = check_file(weights)
    if problem is None:
        try:
            return load_file(str(weights))
        except Exception as e:   # noqa: BLE001 - whatever safetensors says, the file is unusable
            problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    raise CorruptFileError(f"{weights} is corrupt or truncated ({problem}); {fix}", filename=weights)


def saved_config(run_dir: Path) -> dict:
    """config.yaml as saved (not re-resolved), or {} if there is none: for error messages."""
    import yaml
    p = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def source_item_state(run_dir: str | Path) -> dict:
    """The `item_encoder.*` tensors of a finished run's best model, keys without the prefix
    (a transfer source: `transfer.from_run`)."""
    run_dir = Path(run_dir)
    weights = run_dir / "model" / "model.safetensors"
    if not weights.exists():
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
