"""`mmrec preprocess --out DIR`: the report in DIR accounts for every item and names every failed
trailer (item id, youtubeId, path, reason); DIR appears only complete, and a preprocess killed
with SIGKILL and run again writes the same bytes as an uninterrupted one.

A MovieLens-25M-layout fixture with one trailer per failure reason, written with PyAV (tiny
frames, so the file runs in seconds)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrec import cli
from mmrec.data.preprocess_report import REPORT_FILE, check
from preprocessing.files import write_dir_atomic

av = pytest.importorskip("av")
pytest.importorskip("decord")

REPO = Path(__file__).resolve().parents[1]

# movieId -> (title, youtubeId or None, what the trailer file is, synopsis or "")
MOVIES = {
    "1": ("Good One (2001)", "yt_good1", "good", "A robot learns to paint."),
    "2": ("Good Two (2002)", "yt_good2", "good", ""),                        # no synopsis
    "3": ("Missing (2003)", "yt_missing", "missing", "A file that never came."),
    "4": ("Empty (2004)", "yt_empty", "empty", "Nothing at all."),
    "5": ("Corrupt (2005)", "yt_corrupt", "corrupt", "Noise."),
    "6": ("Truncated (2006)", "yt_cut", "truncated", "Cut in half."),
    "7": ("Short (2007)", "yt_short", "too short", "One frame."),
    "8": ("Audio Only (2008)", "yt_audio", "no video stream", "Only sound."),
    "9": ("No Trailer (2009)", None, None, "Never had a trailer."),
    "10": ("Nothing (2010)", None, None, ""),                                  # no content at all
}


def frames(n: int, seed: int, h: int = 32, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def write_audio_only(path: Path) -> None:
    """A valid mp4 with one AAC audio stream and no video stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def write_trailer(kind: str, path: Path, seed: int) -> None:
    from mmrec.synthetic.render import write_mp4
    if kind == "good":
        write_mp4(frames(16, seed), path, fps=8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(seed).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    elif kind == "truncated":   # the index (moov) comes last: cut mid-stream, it never arrives
        write_mp4(frames(16, seed), path, fps=8)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "too short":   # one frame; the config asks for min_frames=2
        write_mp4(frames(1, seed), path, fps=8)
    elif kind == "no video stream":
        write_audio_only(path)
    else:
        assert kind == "missing"


def write_fixture(root: Path, movies: dict, n_users: int = 6) -> Path:
    root.mkdir(parents=True)
    trailers = root / "trailers"
    trailers.mkdir()
    (root / "movies.csv").write_text("movieId,title,genres\n" +
                                     "".join(f"{m},{t},Drama\n" for m, (t, *_) in movies.items()))
    (root / "synopsis.csv").write_text("movieId,synopsis\n" +
                                       "".join(f'{m},"{s}"\n' for m, (*_, s) in movies.items() if s))
    (root / "ml-youtube.csv").write_text("youtubeId,movieId,title\n" +
                                         "".join(f"{y},{m},x\n" for m, (_, y, *_) in movies.items() if y))
    rows, t = [], 1_100_000_000
    for u in range(1, n_users + 1):
        for m in movies:
            rows.append(f"{u},{m},{[1.0, 4.0, 5.0][(u + int(m)) % 3]},{t}\n")
            t += 7
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(rows))
    for seed, (m, (_, yt, kind, _)) in enumerate(movies.items()):
        if yt:
            write_trailer(kind, trailers / f"{yt}.mp4", seed)
    return root


def args(root: Path, cache: Path, out: Path, *extra) -> list[str]:
    return ["preprocess", "--config", "configs/tiny_video_text.yaml", "data.source=ml25m",
            f"data.path={root}", "data.synopsis_file=synopsis.csv", "data.standin_trailers=false",
            f"data.cache_dir={cache}", "data.min_user_ratings=1", "fields.text.template={synopsis}",
            "fields.trailer.fps=4.0", "fields.trailer.min_frames=2", "fields.trailer.workers=1",
            "train.progress=false", *extra, "--out", str(out)]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("ml25m") / "ml-25m", MOVIES)


def test_report_names_every_failed_trailer_and_adds_up(fixture_root, tmp_path, capsys):
    out = tmp_path / "processed"
    assert cli.main(args(fixture_root, tmp_path / "cache", out)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "items.parquet",
                                                     REPORT_FILE, "report.json"]
    trailers = fixture_root / "trailers"
    failures = {f["item_id"]: f for f in report["failures"]}
    expected = {m: kind for m, (_, yt, kind, _) in MOVIES.items() if kind not in (None, "good")}
    assert {m: f["reason"] for m, f in failures.items()} == expected
    for m, f in failures.items():
        yt = MOVIES[m][1]
        assert f["field"] == "trailer" and f["source_id"] == yt
        assert f["path"] == str(trailers / f"{yt}.mp4")
        assert set(f) == {"item_id", "field", "source_id", "path", "reason", "detail"}
    assert len(report["failures"]) == len(expected)

    items = report["items"]
    assert items == {"in": 10, "with_every_field": 1, "with_some_fields_absent": 8,
                     "dropped_no_content": 1}
    assert items["in"] == items["with_every_field"] + items["with_some_fields_absent"] + \
        items["dropped_no_content"]
    assert report["dropped_no_content"] == ["10"]
    assert report["fields"]["trailer"] == {
        "modality": "video", "present": 2,
        "absent": {"corrupt": 1, "empty": 1, "missing": 1, "no trailer listed": 2,
                   "no video stream": 1, "too short": 1, "truncated": 1}}
    assert report["fields"]["text"] == {"modality": "text", "present": 8, "absent": {"empty text": 2}}
    absent = report["some_fields_absent"]
    assert absent["text"] == {"empty text": {"count": 1, "examples": ["2"]}}      # 10 is dropped
    assert absent["trailer"]["no trailer listed"] == {"count": 1, "examples": ["9"]}
    assert absent["trailer"]["too short"] == {"count": 1, "examples": ["7"]}
    check(report)

    # the summary on stdout
    assert "items: 10 in = 1 with every field + 8 with some fields absent + 1 dropped (no content)" in printed
    assert "item 8 (source id yt_audio), trailer: no video stream: " in printed
    assert "dropped (no content): 10" in printed
    # no cache paths: the report is the same whatever data.cache_dir is
    assert str(tmp_path / "cache") not in (out / REPORT_FILE).read_text()


def test_report_names_every_failed_still(tmp_path, capsys):
    """Stills (an image field) of a processed dataset: each failed file is named with its reason;
    an item whose every still failed is absent for the field by its first still's reason."""
    import pandas as pd
    from PIL import Image
    from mmrec.data.tables import MultiModalDataset
    src = tmp_path / "ds"
    (src / "img").mkdir(parents=True)
    good = frames(1, 0, 40, 40)[0]
    Image.fromarray(good).save(src / "img" / "good.png")
    data = (src / "img" / "good.png").read_bytes()
    (src / "img" / "cut.png").write_bytes(data[:len(data) // 2])
    (src / "img" / "empty.png").write_bytes(b"")
    (src / "img" / "text.png").write_text("not an image")
    stills = {"a": ["img/good.png"], "b": ["img/good.png", "img/gone.png"], "c": ["img/cut.png"],
              "d": ["img/empty.png", "img/text.png"], "e": []}
    items = pd.DataFrame({"item_id": list(stills), "title": ["A", "B", "C", "D", "E"],
                          "images": list(stills.values()), "images_source_id": ["s" + i for i in stills]})
    inter = pd.DataFrame({"user_id": [u for u in "xyz" for _ in stills], "item_id": list(stills) * 3,
                          "rating": np.float32(4.0), "timestamp": np.arange(15, dtype=np.int64)})
    MultiModalDataset("stills", items, inter, root=src).save(src)
    out = tmp_path / "processed"
    assert cli.main(["preprocess", "--config", "configs/tiny.yaml", "data.source=processed",
                     f"data.path={src}", f"data.cache_dir={tmp_path / 'cache'}", "data.min_user_ratings=1",
                     "fields.text.template={title}",
                     "fields.stills.modality=image", "fields.stills.encoder=image", "fields.stills.size=32",
                     "encoders.image.type=vit", "encoders.image.arch=tiny", "--out", str(out)]) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    got = [(f["item_id"], f["source_id"], Path(f["path"]).name, f["reason"]) for f in report["failures"]]
    assert got == [("b", "sb", "gone.png", "missing"), ("c", "sc", "cut.png", "truncated"),
                   ("d", "sd", "empty.png", "empty"), ("d", "sd", "text.png", "corrupt")]
    assert all(f["field"] == "stills" and Path(f["path"]).is_absolute() for f in report["failures"])
    assert report["fields"]["stills"] == {"modality": "image", "present": 2, "absent": {
        "empty": 1, "no images listed": 1, "truncated": 1}}
    assert report["items"] == {"in": 5, "with_every_field": 2, "with_some_fields_absent": 3,
                               "dropped_no_content": 0}


def test_out_dir_holding_other_files_is_refused(fixture_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main(args(fixture_root, tmp_path / "cache", out)) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_write_dir_atomic_keeps_the_old_dir_on_a_crash(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_dir_atomic(out, lambda d: (d / "a").write_text("old"))

    def crash(d):
        (d / "a").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_dir_atomic(out, crash)
    assert tree(out) == {"a": b"old"}
    # the rename of the new copy fails after the old one was moved aside: the old one comes back
    import preprocessing.files as files
    real, calls = files.os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real(src, dst)
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        write_dir_atomic(out, lambda d: (d / "a").write_text("new"))
    monkeypatch.undo()
    assert tree(out) == {"a": b"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # siblings left by a process killed mid-way (SIGKILL runs no cleanup) are removed next time
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f"out.tmp-{dead}").mkdir()
    (tmp_path / f"out.old-{dead}").mkdir()
    write_dir_atomic(out, lambda d: (d / "b").write_text("new"))
    assert tree(out) == {"b": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigkill_mid_preprocess_then_rerun_gives_the_same_bytes(tmp_path):
    """Killed (the whole process group, SIGKILL) once the frame store has begun writing, then run
    again with the same command: DIR equals an uninterrupted run's, byte for byte. If the kill
    lands late (or the run had finished), the comparison still holds and the test still counts."""
    movies = dict(MOVIES)
    for k in range(20):       # enough good trailers that decoding them takes a while
        movies[str(100 + k)] = (f"Extra {k} (1999)", f"yt_extra{k}", "good", f"Extra film {k}.")
    root = write_fixture(tmp_path / "ml-25m", movies, n_users=3)
    out, cache = tmp_path / "processed", tmp_path / "cache"
    cmd = [sys.executable, "-m", "mmrec", *args(root, cache, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed_mid_store = False
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if any(cache.glob("frames/*/frames/*/*.npy")):
                killed_mid_store = not any(cache.glob("frames/*/index.json"))
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print("killed mid frame store:", killed_mid_store, "returncode:", proc.returncode)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    reference = tmp_path / "reference"
    assert cli.main(args(root, tmp_path / "cache_ref", reference)) == 0
    assert tree(out) == tree(reference)
    assert set(tree(out)) == {"interactions.parquet", "items.parquet", REPORT_FILE, "report.json"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("processed")) == ["processed"]
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["items"]["with_every_field"] == 21 and len(report["failures"]) == 6
