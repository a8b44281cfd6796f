"""Model families ("heads") behind one interface, chosen by the `head` config key.

Every head is an nn.Module with:
  build(cfg, prepared) -> model                       (classmethod)
  train_data(prepared) -> (Dataset, collate_fn)       what one training step consumes
  forward(batch) -> {"loss": ..., other parts}        one training step's losses
  scorer(prepared, part, users, candidates, ctx) -> score function for the shared evaluator
The trainer, evaluator, checkpoints and export only use this interface.
"""
from __future__ import annotations

HEADS: dict[str, type] = {}


def register_head(name: str):
    def deco(cls):
        HEADS[name] = cls
        return cls
    return deco


def build_model(cfg: dict, prepared):
    from mmrec.models import mmrec_model  # noqa: F401  (registers 'mmrec')
    name = cfg["head"]
    if name not in HEADS:
        raise ValueError(f"head: unknown model '{name}' (known: {', '.join(HEADS)})")
    return HEADS[name].build(cfg, prepared)
