"""Model families ("heads") behind one interface, chosen by the `head` config key.

Every head is an nn.Module with:
  build(cfg, prepared) -> model                       (classmethod)
  train_data(prepared) -> (Dataset, collate_fn)       what one training step consumes
  forward(batch) -> {"loss": ..., other parts}        one training step's losses
  scorer(prepared, part, users, candidates, ctx) -> score function for the shared evaluator
The trainer, evaluator, checkpoints and export only use this interface.
Optional hooks, for heads with their own data and split (the user cold-start heads `sasrec` and
`cmclrec`): prepare_data(cfg, run_dir, resume, accelerator) -> prepared (classmethod),
evaluate_part(prepared, part, eval_cfg, device) -> metric dict, baselines(cfg, prepared, device),
set_epoch(epoch) (called at the start of every epoch).
"""
from __future__ import annotations

from mmrec.registry import Registry

HEADS = Registry("head")


def register_head(name: str):
    return HEADS.register(name)


def build_model(cfg: dict, prepared):
    from mmrec.models import mmrec_model  # noqa: F401  (registers 'mmrec')
    from mmrec.models import cmclrec, sasrec  # noqa: F401  (register 'cmclrec', 'sasrec')
    from mmrec.models import clcrec  # noqa: F401  (registers 'clcrec')
    return HEADS[cfg["head"]].build(cfg, prepared)


def head_class(name: str):
    """The registered class of a head, e.g. to look for optional hooks (`prepare_data`,
    `evaluate_part`, `baselines`) before a model is built; None if not registered here."""
    from mmrec.models import mmrec_model  # noqa: F401
    from mmrec.models import cmclrec, sasrec  # noqa: F401
    from mmrec.models import clcrec  # noqa: F401
    return HEADS.get(name)
