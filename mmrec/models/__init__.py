"""Model families ("heads") behind one interface, chosen by the `head` config key.

Every head is an nn.Module with:
  build(cfg, prepared) -> model                       (classmethod)
  train_data(prepared) -> (Dataset, collate_fn)       what one training step consumes
  forward(batch) -> {"loss": ..., other parts}        one training step's losses
  scorer(prepared, part, users, candidates, ctx) -> score function for the shared evaluator
The trainer, evaluator, checkpoints and export only use this interface.
"""
from __future__ import annotations

from mmrec.registry import Registry

HEADS = Registry("head")


def register_head(name: str):
    return HEADS.register(name)


def build_model(cfg: dict, prepared):
    from mmrec.models import mmrec_model  # noqa: F401  (registers 'mmrec')
    return HEADS[cfg["head"]].build(cfg, prepared)
