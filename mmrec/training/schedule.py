"""KDD'24 Sec. 6.1 schedule: linear warm-up over the first epochs, then the peak LR, dropping to
`decay_factor` of it at `decay_at` of training. Counted in optimizer steps."""
from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


class WarmupStepDecay:
    def __init__(self, steps_per_epoch: int, epochs: int, warmup_epochs: float, decay_at: float,
                 decay_factor: float):
        self.total = max(1, int(steps_per_epoch * epochs))
        self.warmup = int(round(warmup_epochs * steps_per_epoch))
        self.decay_step = int(decay_at * self.total)
        self.decay_factor = float(decay_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step >= self.decay_step:
            return self.decay_factor
        return 1.0


def make_scheduler(optimizer, steps_per_epoch: int, train_cfg: dict) -> LambdaLR:
    return LambdaLR(optimizer, WarmupStepDecay(steps_per_epoch, int(train_cfg["epochs"]),
                                               float(train_cfg["warmup_epochs"]),
                                               float(train_cfg["decay_at"]),
                                               float(train_cfg["decay_factor"])))
