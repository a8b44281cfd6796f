"""Start a run from another run's weights on the same data (`train.init_from: RUN_DIR`).

Why: a second stage with another config, such as the text tower's top layer unfrozen after the
cheap frozen epochs (docs/notes/issue16-default.md, fifth round), or more epochs at a lower
learning rate, without losing what the first stage learned (the user table and the ID table
included, which `mmrec transfer` starts afresh because its users are another dataset's).

What it guarantees:
- the new run takes the source's split (split.npz), so its cold items stay cold: nothing the
  source never trained on is trained on now, and both runs are scored on the same items;
- every tensor of the built model comes from the source's best model, and every source tensor is
  used: a config whose model differs in any parameter's name or shape is one error that lists
  them (freezing, caching and learning rates may differ: they change no tensor);
- the loaded weights are evaluated before the first step, as epoch 0, so the best epoch by
  validation is never worse than where the run started (`best_epoch: 0` means the second stage
  did not improve on the first on validation);
- a resumed run takes its weights from its own checkpoint, as any run does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mmrec.config import ConfigError
from mmrec.runs import best_weights, is_run_dir, saved_config, state_differences


def init_source(cfg: dict, needed: bool = True) -> Path | None:
    """The run to start from, checked: a finished run of the same head, not combined with
    `transfer` (which loads the item tower of another dataset's run). `needed` False (a resume
    from a checkpoint, which holds the weights and whose run holds the split): not checked, so a
    source moved or deleted since does not stop the resume."""
    src = (cfg.get("train") or {}).get("init_from")
    if not src:
        return None
    src = Path(src)
    if not needed:
        return src
    if not is_run_dir(src):
        raise ConfigError(f"train.init_from: {src} is not a run directory (no config.yaml)")
    if not (src / "model" / "model.safetensors").is_file():
        raise ConfigError(f"train.init_from: {src} has no trained model (model/model.safetensors); "
                          f"train it to the end first")
    if not (src / "split.npz").is_file():
        raise ConfigError(f"train.init_from: {src} has no split.npz, so its cold items are unknown")
    if (cfg.get("transfer") or {}).get("from_run"):
        raise ConfigError("train.init_from and transfer.from_run both set: init_from starts every weight "
                          "from a run on this dataset, transfer only the item tower from another; pick one")
    head = saved_config(src).get("head")
    if head != cfg.get("head"):
        raise ConfigError(f"train.init_from: {src} was trained with head '{head}', this config has "
                          f"head '{cfg.get('head')}'")
    return src


def same_split_as(split, src: Path) -> None:
    """Data handed to the trainer with `init_from` must be on the source's split (the trainer
    takes it from the source otherwise): the same users, items and item parts."""
    import numpy as np
    saved = type(split).load(src / "split.npz")
    for name in ("user_ids", "item_ids", "item_part", "user_part"):
        a, b = getattr(split, name, None), getattr(saved, name, None)
        if a is not None and not np.array_equal(np.asarray(a).astype(str), np.asarray(b).astype(str)):
            raise ConfigError(f"train.init_from: the data handed to the trainer is not on {src}'s split "
                              f"({name} differ); its cold items could have been trained on")


def load_all_weights(model: torch.nn.Module, src: Path) -> int:
    """Copy the source's best model into `model`, every tensor on both sides with the same shape;
    else one ConfigError listing the differences. Returns the number of tensors loaded."""
    state = best_weights(src)
    own = model.state_dict()
    differences = state_differences(state, own)
    if differences:
        raise ConfigError("\n".join([f"train.init_from: the model of {src} does not fit this config's "
                                     f"(fields, encoders and model sizes must equal the source run's):",
                                     *differences]))
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(t.dtype))
    return len(own)


def init_info(src: Path, loaded: int | None) -> dict:
    """What metrics.json records of the start (`init_from`)."""
    info = src / "model" / "info.json"
    best = json.loads(info.read_text()) if info.exists() else {}
    return {"from_run": str(src), "source_best_epoch": best.get("epoch"), "source_val": best.get("val"),
            "tensors_loaded": loaded}   # None: resumed, the weights came from the run's checkpoint
