"""The on-disk frame store that training reads clips from, and the resumable job that builds it.

Layout of a store root:
  store.json                 the sampling parameters (fps, size, trim) and format; fixed per root
  frames/<hh>/<sha1>.npy     one uint8 array [T, size, size, 3] per item; file name = sha1(item_id)
  index.json                 item_id -> {"file", "n_frames"}, rewritten atomically after a build
  report.json                the last build's counts; failures.jsonl: one line per failed item

Why one .npy per item (scripts/bench_frames.py measures it): training reads F consecutive frames
of a random item many times a second from several DataLoader workers; with np.load(mmap_mode="r")
that is one contiguous slice served from the page cache, no decoding at all. JPEG frames and a
re-encoded low-fps mp4 are 10-100x smaller on disk but cost a decode per frame on every read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from preprocessing.files import stale_tmp, storage_failure, write_text_atomic
from preprocessing.progress import progress as progress_bar
from preprocessing.video import MISSING, REASONS, TrailerError, read_trailer

FORMAT = "npy-uint8-THWC"
VERSION = 1
TMP_SUFFIX = ".tmp"

log = logging.getLogger("mmrec")


class FrameStoreMismatch(ValueError):
    """A store root re-used with other sampling parameters than it was built with."""


# --------------------------------------------------------------------------- reading


class FrameStore:
    """Read-only access to a built store: `read(item_id, start, length)` -> uint8 [length, H, W, 3].

    Memmaps are opened lazily and kept in a small per-process LRU cache (bounded, because each
    open memmap holds a file descriptor). Pickling drops the cache, and a fork is detected by
    pid, so every DataLoader worker opens its own files.
    """

    def __init__(self, root, max_open: int = 256):
        self.root = Path(root)
        self.params = _read_json(self.root / "store.json", what="frame store parameters")
        self._index = _read_json(self.root / "index.json", what="frame store index")["items"]
        self.max_open = max_open
        self._reset_cache()

    def _reset_cache(self):
        self._open, self._pid = OrderedDict(), os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"], state["_pid"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_cache()

    def __contains__(self, item_id) -> bool:
        return item_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def item_ids(self) -> list[str]:
        return list(self._index)

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.params["size"]), int(self.params["size"])

    def num_frames(self, item_id: str) -> int:
        return int(self._entry(item_id)["n_frames"])

    def path(self, item_id: str) -> Path:
        """The item's .npy file (e.g. to measure disk use or copy the store)."""
        return self.root / self._entry(item_id)["file"]

    def read(self, item_id: str, start: int, length: int) -> np.ndarray:
        """Frames start .. start+length-1 of the item, as a copy (safe to hand to torch)."""
        n = self.num_frames(item_id)
        if length < 1 or start < 0 or start + length > n:
            raise IndexError(f"frames [{start}, {start + length}) out of range for item "
                             f"{item_id!r} with {n} frames")
        return np.array(self._memmap(item_id)[start:start + length])

    def _entry(self, item_id: str) -> dict:
        try:
            return self._index[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the frame store {self.root}") from None

    def _memmap(self, item_id: str) -> np.ndarray:
        if self._pid != os.getpid():      # forked after opening: open our own
            self._reset_cache()
        arr = self._open.get(item_id)
        if arr is None:
            arr = np.load(self.path(item_id), mmap_mode="r")
            self._open[item_id] = arr
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(item_id)
        return arr


# --------------------------------------------------------------------------- building


def item_file(item_id: str) -> str:
    """Relative path of an item's frames: any item id maps to a safe, fixed-length name."""
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()
    return f"frames/{digest[:2]}/{digest}.npy"


def build_frame_store(entries, root, *, fps: float = 2.0, size: int = 224, trim: float = 0.1,
                      min_frames: int = 1, workers: int = 2, progress: bool = True) -> dict:
    """Decode every (item_id, trailer path or None) into the store at `root`; resumable.

    Items whose .npy already exists complete (files appear only by atomic rename) are skipped
    and counted as already_done; the others are decoded in `workers` processes (in this process
    if workers <= 1). Each failure gets a line in failures.jsonl; other items are unaffected.
    Builds may run side by side on one root (two runs starting on a fresh cache): item files are
    written under pid-named temporaries, a build deletes only the temporaries of processes that
    are gone, and the index is re-read and merged under a lock before it is rewritten. A full disk
    (or another storage fault) while writing an item stops the build with a StorageError naming
    the item's file; its temporary is removed and the items stored so far stay (resumable).
    Returns the report (also written to report.json): counts items_in, stored (new),
    already_done, failed {reason: n} with items_in = stored + already_done + sum(failed), and
    failures (the rows of failures.jsonl: item_id, path, reason, detail).
    """
    root = Path(root)
    entries = [(str(item_id), None if path is None else os.fspath(path))
               for item_id, path in entries]
    _check_unique(entries)
    params = {"format": FORMAT, "version": VERSION, "fps": float(fps), "size": int(size),
              "trim": float(trim)}
    _init_root(root, params)

    done, todo, failures = {}, [], []
    for item_id, path in entries:
        n = _complete_frames(root / item_file(item_id), size)
        if n is not None:
            done[item_id] = n
        elif path is None:
            failures.append(_failure(item_id, path, MISSING, "no trailer path"))
        else:
            todo.append((item_id, path))

    _log(progress, f"frame store {root}: {len(entries)} items, {len(done)} already done, "
                   f"{len(todo)} to decode, {len(failures)} without a trailer path")
    stored = {}
    for item_id, path, result in _run(todo, root, params, min_frames, workers, progress):
        if isinstance(result, TrailerError):
            failures.append(_failure(item_id, path, result.reason, result.detail))
        else:
            stored[item_id] = result

    with _index_lock(root):   # re-read: a build running alongside may have added items meanwhile
        index = _load_index(root)
        for item_id, n in {**done, **stored}.items():
            index[item_id] = {"file": item_file(item_id), "n_frames": int(n)}
        index = {k: v for k, v in index.items() if (root / v["file"]).exists()}
        _write_json(root / "index.json", {"items": index})
    _write_lines(root / "failures.jsonl", failures)
    report = _report(entries, stored, done, failures, params)
    _write_json(root / "report.json", report)
    _log(progress, f"frame store {root}: stored {report['stored']}, already done "
                   f"{report['already_done']}, failed {report['failed'] or 0}")
    return report


def _log(progress: bool, text: str) -> None:
    log.info(text)
    if progress:
        tqdm.write(text)


def _check_unique(entries):
    dupes = [k for k, c in Counter(item_id for item_id, _ in entries).items() if c > 1]
    if dupes:
        raise ValueError(f"{len(dupes)} item ids appear more than once, e.g. {dupes[:5]}")


def _init_root(root: Path, params: dict) -> None:
    """Write store.json on first use; refuse a root built with other parameters."""
    path = root / "store.json"
    if path.exists():
        old = _read_json(path, what="frame store parameters")
        diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise FrameStoreMismatch(f"frame store {root} was built with other parameters "
                                     f"({text}); use another root or the stored values")
    else:
        root.mkdir(parents=True, exist_ok=True)
        _write_json(path, params)
    for tmp in root.glob(f"frames/*/*{TMP_SUFFIX}"):   # left by an interrupted build
        if stale_tmp(tmp):                               # (not by one running alongside)
            tmp.unlink(missing_ok=True)


class _index_lock:
    """An exclusive lock on the store's index (flock on <root>/.index.lock; none without fcntl)."""

    def __init__(self, root: Path):
        self.path = root / ".index.lock"

    def __enter__(self):
        self.f = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.f, fcntl.LOCK_EX)
        except ImportError:   # not POSIX: unlocked, as before
            pass
        return self

    def __exit__(self, *exc):
        self.f.close()   # releases the lock


def _load_index(root: Path) -> dict:
    path = root / "index.json"
    return _read_json(path, what="frame store index")["items"] if path.exists() else {}


def _complete_frames(path: Path, size: int) -> int | None:
    """Frame count of a finished item file, None if absent or not a valid [T, size, size, 3]."""
    try:
        arr = np.load(path, mmap_mode="r")   # also fails if the file is shorter than its header says
    except (OSError, ValueError):
        return None
    ok = arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[1:] == (size, size, 3)
    return int(arr.shape[0]) if ok and arr.shape[0] > 0 else None


def _run(todo, root, params, min_frames, workers, progress):
    """Yield (item_id, path, n_frames or TrailerError) as items finish, with a progress bar."""
    bar = progress_bar(len(todo), "frames", enabled=progress, unit="item", smoothing=0.05)
    jobs = [(item_id, path, str(root / item_file(item_id)), params, min_frames)
            for item_id, path in todo]
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job[0], job[1], _store_item(job)
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
            try:
                futures = {pool.submit(_store_item, job): job for job in jobs}
                for future in as_completed(futures):
                    job = futures[future]
                    yield job[0], job[1], future.result()
                    bar.update()
            finally:  # on an error or Ctrl-C, drop the queued items instead of finishing them
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _pool_context():
    """spawn, never fork: a decord VideoReader alive in the parent when it forks (a caller's, or
    one held by a traceback) is inherited without its decoder threads, and when the child's
    garbage collector frees it, its destructor waits forever on a condition variable."""
    return multiprocessing.get_context("spawn")


def _store_item(job) -> int | TrailerError:
    """Worker: decode one trailer and write its frames atomically; returns its frame count."""
    item_id, path, dest, params, min_frames = job
    try:
        frames = read_trailer(path, fps=params["fps"], size=params["size"], trim=params["trim"],
                              min_frames=min_frames)
    except TrailerError as e:
        return e.with_traceback(None)     # drop the frames (and the decord reader they hold)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, frames)
        os.replace(tmp, dest)
    except Exception as e:
        failure = storage_failure(e, dest, "free some space and run again: the items stored so far "
                                           "are kept", where=tmp)
        if failure is e:
            raise
        raise failure from e
    finally:
        tmp.unlink(missing_ok=True)
    return len(frames)


def _failure(item_id, path, reason, detail) -> dict:
    assert reason in REASONS, reason
    return {"item_id": item_id, "path": path, "reason": reason, "detail": detail}


def _report(entries, stored, done, failures, params) -> dict:
    failed = dict(Counter(f["reason"] for f in failures))
    report = {"items_in": len(entries), "stored": len(stored), "already_done": len(done),
              "failed": failed, "frames_stored": int(sum(stored.values())), "params": params,
              "failures": failures}
    assert report["items_in"] == len(stored) + len(done) + sum(failed.values()), report
    return report


# --------------------------------------------------------------------------- small file helpers


def _read_json(path: Path, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}: build the store with "
                                f"build_frame_store first") from None


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _write_lines(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
