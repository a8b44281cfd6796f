"""train.patience: a run stops once N evaluations in a row found no better validation, at the
epoch its own uninterrupted history says, and a resumed run stops where the uninterrupted one did
(also when the patience is added on resuming: `mmrec train --resume RUN train.patience=N`)."""
from __future__ import annotations

import pytest

from mmrec.config import ConfigError, load_config


def _stop_epoch(history: list[dict], select: str, n: int):
    """Where a patience-n run stops, read from the history of a run without patience."""
    best, since = None, 0
    for r in history:
        if best is None or r["val"][select] > best:
            best, since = r["val"][select], 0
        else:
            since += 1
        if since >= n:
            return r["epoch"]
    return None


def test_patience_stops_where_the_full_run_says_and_resumes_to_the_same_stop(tiny_overrides, tmp_path):
    from mmrec.training.trainer import load_run_config, train
    from tests.resuming import interrupted_copy
    args = tiny_overrides + ["train.epochs=8", "train.max_steps_per_epoch=3", "train.lr=3e-3",
                             "train.warmup_epochs=0", "train.keep_checkpoints=20", "eval.baselines=[]"]
    _, full = train(load_config("configs/tiny.yaml", args + [f"run_dir={tmp_path / 'full'}"]))
    select = full["select_metric"]
    stop = _stop_epoch(full["history"], select, 1)
    assert stop is not None and stop < 8, "the full run improved every epoch: nothing to stop"
    _, pat = train(load_config("configs/tiny.yaml", args + ["train.patience=1", f"run_dir={tmp_path / 'pat'}"]))
    assert pat["stopped_early"] == stop
    assert [h["epoch"] for h in pat["history"]] == list(range(1, stop + 1))
    assert [h["val"] for h in pat["history"]] == [h["val"] for h in full["history"][:stop]]
    assert pat["best_epoch"] == stop - 1      # patience 1: every epoch before the stop improved

    # resumed from its first epoch's checkpoint: the same epochs, the same stop, the same test
    steps = pat["history"][0]["step"]
    interrupted_copy(tmp_path / "pat", tmp_path / "resumed", steps)
    _, again = train(load_run_config(tmp_path / "resumed"), tmp_path / "resumed")
    assert again["stopped_early"] == stop and again["best_epoch"] == pat["best_epoch"]
    assert [h["val"] for h in again["history"]] == [h["val"] for h in pat["history"]]
    assert again["test"] == pat["test"]

    # the run without patience, resumed from the same epoch with `train.patience=1` added: the
    # patience run exactly, and its config.yaml now says what it ran with
    interrupted_copy(tmp_path / "full", tmp_path / "extended", steps)
    _, ext = train(load_run_config(tmp_path / "extended", ["train.patience=1"]), tmp_path / "extended")
    assert ext["stopped_early"] == stop and [h["val"] for h in ext["history"]] == [h["val"] for h in pat["history"]]
    assert load_run_config(tmp_path / "extended")["train"]["patience"] == 1
    assert load_run_config(tmp_path / "resumed")["train"]["patience"] == 1


def test_patience_must_be_a_non_negative_integer():
    with pytest.raises(ConfigError, match=r"train\.patience=-1 must be an integer >= 0"):
        load_config("configs/tiny.yaml", ["train.patience=-1"])
