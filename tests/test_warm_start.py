"""`train.init_from`: a second stage that starts every weight from a finished run on the same
data (mmrec/training/warm_start.py)."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmrec.config import ConfigError, load_config


def _weights(run_dir) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_init_from_loads_every_weight_keeps_the_split_and_scores_the_start(trained_run, tiny_overrides, tmp_path):
    from mmrec.training.trainer import Trainer, load_run_config, train
    run_a, metrics_a = trained_run
    a = _weights(run_a)
    run_b = tmp_path / "stage2"
    # another split seed and another learning rate: the split must still be A's
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [
        f"run_dir={run_b}", "train.epochs=1", f"train.init_from={run_a}", "split.seed=7", "train.lr=1e-4"])
    t = Trainer(cfg)
    model = t.accelerator.unwrap_model(t.model)
    start = model.state_dict()
    assert start.keys() == a.keys() and all(torch.equal(start[k], a[k]) for k in a)
    sa, sb = np.load(run_a / "split.npz"), np.load(run_b / "split.npz")
    assert sa.files == sb.files and all(np.array_equal(sa[k], sb[k]) for k in sa.files)
    metrics = t.fit()

    # epoch 0 is A's best model scored again: A's validation and test metrics, exactly
    assert metrics["history"][0]["epoch"] == 0
    assert metrics["history"][0]["val"] == metrics_a["val"]
    assert metrics["history"][1]["epoch"] == 1
    assert metrics["init_from"]["from_run"] == str(run_a)
    assert metrics["init_from"]["tensors_loaded"] == len(a)
    assert metrics["init_from"]["source_best_epoch"] == metrics_a["best_epoch"]
    assert metrics["best_epoch"] in (0, 1)
    select = metrics["select_metric"]
    if metrics["best_epoch"] == 0:     # the stage did not improve on validation: A's model kept
        assert metrics["test"] == metrics_a["test"]
        assert all(torch.equal(v, a[k]) for k, v in _weights(run_b).items())
    else:
        assert metrics["val"][select] > metrics_a["val"][select]
    assert any(not torch.equal(v, a[k]) for k, v in model.state_dict().items())   # it trained

    # a resumed init_from run takes its weights from its own checkpoint, not from A again
    run_dir, m2 = train(load_run_config(run_b, ["train.epochs=2"]), run_b)
    assert m2["init_from"]["tensors_loaded"] is None
    assert [h["epoch"] for h in m2["history"]] == [0, 1, 2]
    assert m2["history"][:2] == metrics["history"][:2]


def test_init_from_resumed_equals_uninterrupted(trained_run, tiny_overrides, tmp_path):
    from mmrec.training.trainer import load_run_config, train
    from tests.resuming import interrupted_copy
    run_a = tmp_path / "a"   # a copy of the shared run: this test deletes it
    shutil.copytree(trained_run[0], run_a)
    over = tiny_overrides + [f"train.init_from={run_a}", "train.epochs=2", "train.lr=3e-4", "train.keep_checkpoints=3"]
    full, m_full = train(load_config("configs/tiny.yaml", over + [f"run_dir={tmp_path / 'full'}"]))
    step = m_full["history"][1]["step"]
    interrupted_copy(full, tmp_path / "cut", step)
    # the checkpoint holds the weights and the run its split: the source is not needed any more
    shutil.rmtree(run_a)
    _, m_cut = train(load_run_config(tmp_path / "cut"), tmp_path / "cut")
    assert m_cut["val"] == m_full["val"] and m_cut["test"] == m_full["test"]
    assert [h.get("val") for h in m_cut["history"]] == [h.get("val") for h in m_full["history"]]


def test_init_from_refuses_what_would_not_fit(trained_run, tiny_overrides, tmp_path):
    from mmrec.training.trainer import Trainer
    run_a, _ = trained_run
    base = tiny_overrides + [f"run_dir={tmp_path / 'b'}", "train.epochs=1"]
    with pytest.raises(ConfigError, match=r"(?s)does not fit.*user_embedding.weight: source \(\d+, 32\), this config \(\d+, 16\)"):
        Trainer(load_config("configs/tiny.yaml", base + [f"train.init_from={run_a}", "model.dim=16"]))
    with pytest.raises(ConfigError, match="pick one"):
        Trainer(load_config("configs/tiny.yaml", base + [f"train.init_from={run_a}", f"transfer.from_run={run_a}"]))
    with pytest.raises(ConfigError, match="not a run directory"):
        Trainer(load_config("configs/tiny.yaml", base + [f"train.init_from={tmp_path}"]))
    no_model = tmp_path / "unfinished"
    no_model.mkdir()
    (no_model / "config.yaml").write_text((run_a / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="no trained model"):
        Trainer(load_config("configs/tiny.yaml", base + [f"train.init_from={no_model}"]))


def test_init_from_refuses_data_handed_in_on_another_split(trained_run, tiny_overrides, tmp_path):
    from mmrec.data.pipeline import prepare
    from mmrec.training.trainer import Trainer
    run_a, _ = trained_run
    over = tiny_overrides + [f"train.init_from={run_a}", "train.epochs=1"]
    other = prepare(load_config("configs/tiny.yaml", tiny_overrides + ["split.seed=7"]))
    with pytest.raises(ConfigError, match="not on .* split \\(item_part differ\\)"):
        Trainer(load_config("configs/tiny.yaml", over + [f"run_dir={tmp_path / 'b'}"]), prepared=other)
    same = prepare(load_config(run_a / "config.yaml", tiny_overrides))
    t = Trainer(load_config("configs/tiny.yaml", over + [f"run_dir={tmp_path / 'c'}"]), prepared=same)
    assert t.init_from["tensors_loaded"] == len(_weights(run_a))
