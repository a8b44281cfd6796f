"""Preprocessing across processes: `accelerate launch --num_processes 2 -m mmrec preprocess` builds
the same frame store (index, frames byte for byte, failures, report) and the same --out folder as
one process; a store left half built is completed with only its missing items decoded; rank 0
alone writes the merged files; an error on one rank stops every rank.

The MovieLens-25M-layout fixture of tests/test_preprocess_report.py with more good trailers (so
both ranks have some to decode) and some broken ones (so the failure report is not empty); tiny
frames (32 px), one decoding worker per process."""
import json
import shutil
import threading
from pathlib import Path

import pytest

from preprocessing.files import StorageError
from preprocessing.frame_store import FrameStore, build_frame_store, item_file, share_of
from tests.launching import CPU2, launch
from tests.test_preprocess_report import args, tree, write_fixture

pytest.importorskip("av")
pytest.importorskip("decord")

# movieId -> (title, youtubeId or None, what the trailer file is, synopsis)
MOVIES = {
    **{str(m): (f"Good {m} (200{m})", f"yt_good{m}", "good", f"Story {m}.") for m in range(1, 8)},
    "8": ("Missing (2008)", "yt_missing", "missing", "Never came."),
    "9": ("Corrupt (2009)", "yt_corrupt", "corrupt", "Noise."),
    "10": ("Truncated (2010)", "yt_cut", "truncated", "Cut."),
    "11": ("No Trailer (2011)", None, None, "None listed."),
}
GOOD = 7


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("ml25m") / "ml-25m", MOVIES)


def store_of(cache: Path) -> Path:
    (root,) = (cache / "frames").iterdir()
    return root


def files(root: Path) -> dict:
    """Every file of a store but its (empty) lock file, by relative path: the bytes."""
    return {k: v for k, v in tree(root).items() if k != ".index.lock"}


def one_process(fixture_root, cache, out, *extra):
    from mmrec import cli
    assert cli.main(args(fixture_root, cache, out, *extra)) == 0


# ----------------------------------------------------------------------------- the launcher


@pytest.mark.slow
def test_two_processes_build_what_one_process_builds(fixture_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(fixture_root, one / "cache", one / "out")
    r = launch(CPU2, "-m", "mmrec", *args(fixture_root, two / "cache", two / "out", "train.progress=true"))
    a, b = files(store_of(one / "cache")), files(store_of(two / "cache"))
    assert sorted(b) == sorted(a) and not any(k.startswith("parts") for k in b)
    assert sum(k.startswith("frames/") for k in a) == GOOD
    for name in a:                                  # frames, index, failures, report: byte for byte
        assert b[name] == a[name], name
    report = json.loads(a["report.json"])
    assert (report["items_in"], report["stored"], report["already_done"]) == (GOOD + 3, GOOD, 0)
    assert report["failed"] == {"missing": 1, "corrupt": 1, "truncated": 1}
    assert tree(two / "out") == tree(one / "out")   # preprocess_report.json and the tables
    failed = {f["item_id"]: f["reason"] for f in
              json.loads((two / "out" / "preprocess_report.json").read_text())["failures"]}
    assert failed == {"8": "missing", "9": "corrupt", "10": "truncated"}
    # each rank decoded its own share (every 2nd item by id), printed by every rank
    for rank in (0, 1):
        assert f"rank {rank} of 2: 5 items, 0 already done, 5 to decode" in r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("canonical dataset and preprocess_report.json written") == 1


@pytest.mark.slow
def test_two_processes_complete_a_half_built_jpeg_store(fixture_root, tmp_path):
    """A store with some items done and no index (as a build killed midway leaves it): the
    2-process run decodes only the missing items and ends equal to an uninterrupted run."""
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    jpeg = "fields.trailer.store_format=jpeg"
    one_process(fixture_root, ref / "cache", ref / "out", jpeg)
    shutil.copytree(ref / "cache", resumed / "cache")      # keeps the files' mtimes
    root = store_of(resumed / "cache")
    store = FrameStore(root)
    keys = sorted(store.item_ids)
    gone = keys[1::3]                                      # 3 of the 7, on both ranks' shares
    for k in gone:
        store.path(k).unlink()
    for name in ("index.json", "report.json", "failures.jsonl"):
        (root / name).unlink()
    kept = {k: store.path(k).stat().st_mtime_ns for k in keys if k not in gone}

    launch(CPU2, "-m", "mmrec", *args(fixture_root, resumed / "cache", resumed / "out", jpeg))
    report = json.loads((root / "report.json").read_text())
    assert (report["stored"], report["already_done"]) == (len(gone), GOOD - len(gone))
    assert {k: store.path(k).stat().st_mtime_ns for k in kept} == kept      # not decoded again
    a, b = files(store_of(ref / "cache")), files(root)
    assert sorted(b) == sorted(a)
    for name in a:
        if name != "report.json":                         # JPEG bytes, index, failures
            assert b[name] == a[name], name
    first = json.loads(a["report.json"])
    counts = ("stored", "already_done", "frames_stored")
    assert {k: v for k, v in report.items() if k not in counts} == \
           {k: v for k, v in first.items() if k not in counts}
    assert tree(resumed / "out") == tree(ref / "out")


# ----------------------------------------------------------------------------- the frame store


class Meeting:
    """`all_gather` for ranks that are threads of this process (the frame store's protocol)."""

    def __init__(self, world: int):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=60)

    def all_gather(self, rank: int):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out
        return gather


def run_ranks(world, build):
    """build(rank, all_gather) on `world` threads: [(result or None, exception or None)]."""
    meeting, results = Meeting(world), [None] * world

    def one(rank):
        try:
            results[rank] = (build(rank, meeting.all_gather(rank)), None)
        except Exception as e:   # noqa: BLE001
            results[rank] = (None, e)
    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def entries_of(fixture_root):
    t = fixture_root / "trailers"
    return [(f"m{m}", None if yt is None else str(t / f"{yt}.mp4")) for m, (_, yt, *_) in MOVIES.items()]


def test_shares_stripe_the_sorted_items_and_rank_0_alone_merges(fixture_root, tmp_path, monkeypatch):
    import preprocessing.frame_store as fs
    entries = entries_of(fixture_root)
    shares = [share_of(entries, r, 3) for r in range(3)]
    assert sorted(e for share in shares for e in share) == sorted(entries)
    assert [len(s) for s in shares] == [4, 4, 3]
    assert shares[1] == sorted(entries)[1::3]

    writers, real_finish = [], fs._finish
    monkeypatch.setattr(fs, "_finish", lambda *a: writers.append(threading.current_thread()) or real_finish(*a))
    serial = build_frame_store(entries, tmp_path / "serial", size=32, fps=4.0, workers=1, progress=False)
    writers.clear()
    out = run_ranks(3, lambda r, g: build_frame_store(entries, tmp_path / "three", size=32, fps=4.0,
                                                      workers=1, progress=False, rank=r, world=3,
                                                      all_gather=g))
    assert [e for _, e in out] == [None] * 3 and len(writers) == 1      # one merge: rank 0's
    assert all(report == serial for report, _ in out)                   # every rank: the merged report
    assert files(tmp_path / "three") == files(tmp_path / "serial")
    assert (serial["stored"], len(serial["failures"])) == (GOOD, 4)


def test_an_error_on_one_rank_stops_every_rank(fixture_root, tmp_path, monkeypatch):
    import preprocessing.frame_store as fs
    entries = entries_of(fixture_root)
    real_store = fs._store_item
    bad = share_of(entries, 1, 2)[0][0]

    def full_disk(job):
        if job[0] == bad:
            raise StorageError(f"no space left on device writing {job[2]}")
        return real_store(job)
    monkeypatch.setattr(fs, "_store_item", full_disk)
    root = tmp_path / "store"
    out = run_ranks(2, lambda r, g: build_frame_store(entries, root, size=32, fps=4.0, workers=1,
                                                      progress=False, rank=r, world=2, all_gather=g))
    for _, e in out:    # rank 1's own error, and rank 0 the same, instead of waiting for rank 1
        assert isinstance(e, StorageError) and item_file(bad) in str(e)
    assert not (root / "index.json").exists()                          # nothing merged
    assert (root / item_file(share_of(entries, 0, 2)[0][0])).exists()  # rank 0's share: kept

    monkeypatch.setattr(fs, "_store_item", real_store)
    mixed = run_ranks(2, lambda r, g: build_frame_store(entries if r == 0 else entries[:-1], root, size=32,
                                                        fps=4.0, workers=1, progress=False, rank=r,
                                                        world=2, all_gather=g))
    for _, e in mixed:
        assert isinstance(e, ValueError) and "rank 1 was given other items" in str(e)
