"""The LR schedule, parameter groups, and a finished run's files and numbers."""
import json

import pytest
import torch

from mmrec.config import ConfigError
from mmrec.training.schedule import WarmupStepDecay
from mmrec.training.trainer import param_groups


def test_schedule_warmup_plateau_and_decay():
    s = WarmupStepDecay(steps_per_epoch=10, epochs=10, warmup_epochs=3, decay_at=0.7, decay_factor=0.2)
    assert s(0) == pytest.approx(1 / 30) and s(29) == pytest.approx(1.0)
    assert s(30) == 1.0 and s(69) == 1.0
    assert s(70) == 0.2 and s(99) == 0.2


def test_lr_scale_groups_and_unknown_prefix():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})
    groups = param_groups(model, {"lr": 1.0, "lr_scale": {"a": 0.1}})
    lrs = sorted(g["lr"] for g in groups)
    assert lrs == [pytest.approx(0.1), 1.0] and sum(len(g["params"]) for g in groups) == 4
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        param_groups(model, {"lr": 1.0, "lr_scale": {"c": 0.1}})


def test_run_directory_and_metrics(trained_run):
    run_dir, metrics = trained_run
    for name in ("config.yaml", "split.npz", "metrics.json", "history.jsonl", "train.log",
                 "data_report.json", "model/model.safetensors"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "logs" / "tensorboard").rglob("events.out.tfevents*"))
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for part in ("val", "test"):
        for m in ("ndcg", "recall", "precision", "recall_capped"):
            for k in (1, 5, 10, 20):
                assert 0.0 <= on_disk[part][f"{m}@{k}"] <= 1.0
    assert set(on_disk["baselines"]["random"]) == {"val", "test"}
    assert on_disk["baselines"]["random"]["test"].keys() >= {"ndcg@10", "recall_capped@20"}
    # The best epoch is the one with the highest validation NDCG@10 in the history.
    hist = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines()]
    best = max(hist, key=lambda r: r["val"]["ndcg@10"])
    assert on_disk["best_epoch"] == best["epoch"]
    assert on_disk["val"]["ndcg@10"] == best["val"]["ndcg@10"]
