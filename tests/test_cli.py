"""The command line end to end on the tiny config: preprocess, train, evaluate, export."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def mmrec(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "mmrec", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_cli_end_to_end(tmp_path, cache_dir):
    common = ["--config", "configs/tiny.yaml", f"data.cache_dir={cache_dir}"]
    r = mmrec("preprocess", *common, "--out", str(tmp_path / "processed"))
    assert r.returncode == 0, r.stderr
    assert "1682 items, 100000 interactions" in r.stdout
    assert (tmp_path / "processed" / "items.parquet").exists()

    run = tmp_path / "run"
    r = mmrec("train", *common, f"run_dir={run}", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics.json").read_text())

    r = mmrec("evaluate", str(run))
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    for part in ("val", "test"):
        for k, v in metrics[part].items():
            assert again[part][k] == pytest.approx(v, abs=1e-9), (part, k)

    items = tmp_path / "items.csv"
    items.write_text("item_id,title,year,genres\nx1,Robots in Love,2030,Romance\nx2,The Heist,2031,Crime\n")
    r = mmrec("export", str(run), "--items", str(items), "--top-k", "1", "--users", "1,2")
    assert r.returncode == 0, r.stderr
    top = pd.read_parquet(run / "export" / "topk.parquet")
    assert len(top) == 2 and set(top["item_id"]) <= {"x1", "x2"}


def test_cli_reports_config_errors(tmp_path):
    r = mmrec("train", "--config", "configs/tiny.yaml", "train.lrr=1")
    assert r.returncode == 2
    assert "unknown config key 'train.lrr'; did you mean 'train.lr'" in r.stderr
    r = mmrec("train", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr
