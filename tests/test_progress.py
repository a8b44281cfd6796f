"""Progress bars on a terminal only; in a log file, plain lines (one per logging interval)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preprocessing.progress import LineProgress, progress

ROOT = Path(__file__).resolve().parent.parent


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_line_progress_prints_one_line_per_interval_and_at_the_end():
    lines = []
    bar = LineProgress(10, "frames", every=3, unit="item", emit=lines.append)
    for _ in range(10):
        bar.update()
    bar.close()
    bar.close()                                     # closing twice adds nothing
    assert [line.split(" item")[0] for line in lines] == ["frames: 3/10", "frames: 6/10", "frames: 9/10",
                                                         "frames: 10/10"]
    assert all("\r" not in line for line in lines)


def test_line_progress_every_0_prints_on_postfix_and_close_only():
    lines = []
    bar = LineProgress(8, "epoch 1/2", every=0, unit="batch", initial=2, emit=lines.append)
    for step in range(3, 9):
        bar.update()
        if step % 4 == 0:
            bar.set_postfix(loss="1.2500")
    bar.close()                                     # the last update was already shown: no line
    assert [line.split(" (")[0] for line in lines] == ["epoch 1/2: 4/8 batch loss=1.2500",
                                                      "epoch 1/2: 8/8 batch loss=1.2500"]


def test_progress_is_a_bar_only_on_a_terminal(monkeypatch):
    from tqdm.auto import tqdm
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert isinstance(progress(5, "x"), LineProgress)
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    bar = progress(5, "x", file=sys.stderr)
    assert isinstance(bar, tqdm) and not isinstance(bar, LineProgress)
    bar.close()
    assert not isinstance(progress(5, "x", enabled=False), LineProgress)   # disabled: silent tqdm


@pytest.mark.slow
def test_training_log_in_a_file_has_lines_not_carriage_returns(tmp_path, cache_dir):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "mmrec", "train", "--config", "configs/tiny.yaml",
                        f"data.cache_dir={cache_dir}", f"run_dir={run}", "train.progress=true",
                        "train.epochs=1", "train.max_steps_per_epoch=8", "train.log_every_steps=4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr and "\r" not in r.stdout
    log = (run / "train.log").read_text()
    assert "epoch 1/1: 4/8 batch loss=" in log and "epoch 1/1: 8/8 batch loss=" in log
    assert log.count("epoch 1/1: ") == 2           # one line per 4 steps, none repeated at the end
