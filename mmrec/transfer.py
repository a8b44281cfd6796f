"""Transfer of a trained item tower from one dataset to another (KDD'24 Sec. 6.5, Table 9).

A run trained on dataset A holds its content encoders and fusion under `item_encoder.*` in
model/model.safetensors; a tower folder saved from it (`mmrec export A --save-tower DIR`,
`mmrec.ItemTower.save_pretrained`) holds the same tensors without the prefix in its
model.safetensors, and is a transfer source too (`transfer.from_run: DIR`, `--from DIR`). A run on dataset B with `transfer.from_run: A` starts its item tower
from those weights; B's users are all new, so B's user embeddings start fresh. Two modes:

- frozen (`transfer.freeze_item_encoder: true`): every `item_encoder.*` parameter has
  requires_grad False and is not in the optimizer, and the tower runs in eval mode (no dropout),
  so item vectors are fixed features of the content; only B's user embeddings learn;
- fine-tuned: the tower trains on B too, at `train.lr_scale: {item_encoder: X}` times the LR.

`mmrec transfer --from A --config B.yaml --mode frozen|finetune [--encoder-lr-scale X]` sets
these keys and trains with the ordinary trainer, so `mmrec train --resume` continues a transfer
run like any other (the weights then come from the run's own checkpoint, not from A).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmrec.config import ConfigError
from mmrec.runs import (ITEM_ENCODER_PREFIX as PREFIX, is_run_dir, is_tower_dir, read_tower_config,
                        source_info, source_item_state, state_differences)



def load_item_encoder(model: torch.nn.Module, run_dir: str | Path) -> int:
    """Copy A's item tower into `model.item_encoder`; every tensor must exist on both sides with
    the same shape, else a ConfigError lists the differences. Returns the number of tensors."""
    encoder = model.item_tower()
    if encoder is None:
        raise ConfigError(f"transfer.from_run: this run's head ({type(model).__name__}) has no item_encoder "
                          f"to load into; transfer needs head: mmrec")
    src = source_item_state(run_dir)
    dst = encoder.state_dict()
    differences = state_differences(src, dst, PREFIX)
    if differences:
        raise ConfigError("\n".join([
            f"transfer.from_run: the item encoder of {run_dir} does not fit this config's "
            f"(fields, encoders and model.dim / model.token_dim / model.fusion must equal the source run's):",
            *differences]))
    with torch.no_grad():
        for k, t in dst.items():
            t.copy_(src[k].to(t.dtype))
    return len(src)


def apply_transfer(model: torch.nn.Module, cfg: dict, load: bool = True) -> dict | None:
    """The trainer's hook, before the optimizer is built: load A's tower (unless resuming, where
    the checkpoint restores it) and freeze it if asked. Returns what to record in metrics.json."""
    tc = cfg.get("transfer") or {}
    src, freeze = tc.get("from_run"), bool(tc.get("freeze_item_encoder"))
    if not src:
        if freeze:
            raise ConfigError("transfer.freeze_item_encoder: true needs transfer.from_run (a run to take "
                              "the item encoder from)")
        return None
    src = Path(src)
    loaded = load_item_encoder(model, src) if load else None
    if freeze:
        model.item_tower().requires_grad_(False)
    n_enc = sum(p.numel() for p in model.item_tower().parameters())
    n_train = sum(p.numel() for p in model.item_tower().parameters() if p.requires_grad)
    info = source_info(src)
    return {"from_run": str(src), "mode": "frozen" if freeze else "finetune",
            "source_kind": info["source_kind"],   # run | tower (a folder of `mmrec export --save-tower`)
            "source_data": info["source_data"], "source_seed": info["source_seed"],
            "source_best_epoch": info["source_best_epoch"],
            "tensors_loaded": loaded,   # None: resumed, the weights came from the run's checkpoint
            "item_encoder_params": n_enc, "item_encoder_trainable_params": n_train,
            "item_encoder_lr_scale": None if freeze else (cfg["train"].get("lr_scale") or {}).get("item_encoder", 1.0)}


def frozen_eval(model: torch.nn.Module, cfg: dict) -> None:
    """A frozen tower gives fixed features: dropout off even while the users train."""
    tower = model.item_tower()
    if (cfg.get("transfer") or {}).get("freeze_item_encoder") and tower is not None:
        tower.eval()


def transfer_overrides(from_run: str, mode: str, encoder_lr_scale: float | None) -> list[str]:
    """The config keys `mmrec transfer` sets on top of the user's overrides."""
    if is_tower_dir(from_run):
        read_tower_config(from_run)   # a foreign or damaged folder: one error naming its config.json
    elif not is_run_dir(from_run):
        raise ConfigError(f"--from {from_run}: neither a run directory (no config.yaml) nor an item-tower "
                          f"folder (no config.json; `mmrec export RUN --save-tower DIR` writes one)")
    if mode == "frozen" and encoder_lr_scale is not None:
        raise ConfigError("--encoder-lr-scale only applies to --mode finetune (a frozen encoder does not learn)")
    out = [f"transfer.from_run={from_run}", f"transfer.freeze_item_encoder={str(mode == 'frozen').lower()}"]
    if mode == "finetune" and encoder_lr_scale is not None:
        if encoder_lr_scale <= 0:
            raise ConfigError(f"--encoder-lr-scale must be > 0, got {encoder_lr_scale}")
        out.append(f"train.lr_scale.item_encoder={encoder_lr_scale}")
    return out
