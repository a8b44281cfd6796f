"""An exponential moving average of the trained weights, evaluated and saved in their place
(`train.ema_decay`).

Why: on MovieLens-100k a split's cold parts hold 126 items each, so the epoch that validation
picks often scores low on test; an average of the weights over the last few hundred steps
depends less on which epoch that is. Written here rather than taken from timm's `ModelEmaV3`,
which keeps a deep copy of the whole module: that would copy the frozen BERT (and the cached
outputs it holds), and a Head evaluates itself, so the average has to be in the module the
trainer holds. This keeps a float32 shadow of the trainable parameters only and swaps it in.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightAverage:
    """shadow <- d * shadow + (1 - d) * weights after every optimizer step, with the usual
    warm-up d_n = min(decay, (1 + n) / (10 + n)), so the first steps' weights do not linger."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 turns it off), got {decay}")
        self.decay = float(decay)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.updates = 0

    def rate(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.rate()
        for n, p in self.params.items():
            self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the block (evaluation, saving the best model);
        the trained ones back afterwards, bit for bit, so training goes on unchanged."""
        live = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    # accelerate's register_for_checkpointing: saved in every checkpoint, so a resumed run
    # continues the same average
    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"weight average in the checkpoint lacks {sorted(missing)[:3]}")
        self.updates = int(state["updates"])
        for n, t in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n].copy_(t)
