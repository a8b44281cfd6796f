"""The on-disk frame store that training reads clips from, and the resumable job that builds it.

Layout of a store root:
  store.json                 the sampling parameters (fps, size, trim) and the format (and JPEG
                             quality); fixed per root: one root holds one format
  frames/<hh>/<sha1>.npy     store_format "npy": one uint8 array [T, size, size, 3] per item
  frames/<hh>/<sha1>.jpg.bin store_format "jpeg": the item's T frames JPEG-encoded back to back,
                             behind a header with their byte offsets (see `JPEG_MAGIC`)
  index.json                 item_id -> {"file", "n_frames"} (sorted by id), rewritten atomically
                             after a build
  report.json                the last build's counts; failures.jsonl: one line per failed item
                             (both in the order of the build's items)
  parts/rank-R-of-W.json     only while a build runs across W processes: rank R's share of the
                             report, merged by rank 0 into the files above, then removed
(file name = sha1(item_id)). Both formats read back as the same uint8 [length, size, size, 3].

Why "npy" is the default on a CPU machine (scripts/bench_frames.py (d); docs/results/frames.md):
training reads F consecutive frames of a random item many times a second from several DataLoader
workers; with np.load(mmap_mode="r") that is one contiguous slice served from the page cache, no
decoding: ~0.6 ms of CPU per 32-frame 224 px clip, against ~10 ms to decode the clip from JPEG
with simplejpeg (~15 ms with torchvision's decode_jpeg, whose [3, H, W] output also needs a
transposing copy): 17-27x the CPU, ~70-100 clips/s per worker instead of ~700+. On a CPU machine
that decode is the bottleneck, so the store spends disk instead: 150.5 KB per 224 px frame
(~33 MB per 220-frame trailer, ~830 GB for the 25k MovieLens-25M trailers) against 12.6 KB per
frame at quality 90 (12x less, ~69 GB), at a mean abs. pixel error of ~1.7 (PSNR ~40 dB).
On a GPU machine training MovieLens-25M, "jpeg" should be the choice: 830 GB of npy fits no
page cache (every clip becomes a 4.8 MB disk read, ~0.4 MB as JPEG), the 69 GB JPEG store fits
a 128 GB machine's, and the decode either stays in the DataLoader workers (8 workers give
~500-800 clips/s) or moves to the GPU (`FrameStore.read(..., device="cuda")`, or
`read_encoded` in the workers and `decode_jpeg_frames(..., device="cuda")` on a whole batch:
nvJPEG through torchvision's batched `decode_jpeg`). Not yet measured on a GPU.

One file per item, whatever the format, so that a build is resumable and atomic per item: each
file is written to a pid-named temporary and renamed, so a file that exists is complete, and a
killed build resumes by skipping the items whose file is there. For the same reason a build can be
spread over the processes of a launcher, on one machine or many sharing the store's file system
(`build_frame_store(..., rank=, world=, all_gather=)`): each decodes its own items, and only the
merged index and report are written by one of them. The JPEG offsets live in the
item's own file (not in index.json, which every DataLoader worker loads: 25k x 220 offsets there
would cost each worker seconds and hundreds of MB) so that one rename publishes frames and index.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pickle
import time
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from preprocessing.files import reported_write, stale_tmp, storage_failure, write_text_atomic
from preprocessing.progress import progress as progress_bar
from preprocessing.video import MISSING, REASONS, TrailerError, read_trailer

FORMAT = "npy-uint8-THWC"           # store.json "format" of an npy store (as before formats)
JPEG_FORMAT = "jpeg-concat-THWC"    # ... of a jpeg store
# store_format (the config's name) -> store.json "format"
FORMATS = {"npy": FORMAT, "jpeg": JPEG_FORMAT}
SUFFIXES = {"npy": ".npy", "jpeg": ".jpg.bin"}
DEFAULT_JPEG_QUALITY = 90
VERSION = 1
TMP_SUFFIX = ".tmp"

# A jpeg item file: JPEG_MAGIC (8 bytes), n (uint64 LE), n + 1 offsets (uint64 LE, offsets[0] = 0,
# offsets[n] = total JPEG bytes; frame k is data[offsets[k]:offsets[k + 1]]), then the JPEGs.
JPEG_MAGIC = b"MMRJPG1\n"
_U64 = np.dtype("<u8")

log = logging.getLogger("mmrec")


class FrameStoreMismatch(ValueError):
    """A store root re-used with other sampling parameters (or another format) than it was
    built with."""


def format_name(fmt: str) -> str:
    """The store_format ("npy", "jpeg") of a store.json "format"; unknown ones as they are."""
    return next((k for k, v in FORMATS.items() if v == fmt), fmt)


def check_format(store_format, jpeg_quality=DEFAULT_JPEG_QUALITY) -> None:
    """ValueError unless store_format is a known format and jpeg_quality an integer in 1..100."""
    if store_format not in FORMATS:
        raise ValueError(f"store_format={store_format!r} must be one of {', '.join(FORMATS)}")
    if store_format == "jpeg" and (isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int)
                                   or not 1 <= jpeg_quality <= 100):
        raise ValueError(f"jpeg_quality={jpeg_quality!r} must be an integer in 1..100")


DECODERS = ("simplejpeg", "torchvision")   # CPU JPEG decoders, fastest first ("auto": the first installed)


def cpu_decoder(name: str = "auto") -> str:
    """The CPU JPEG decoder `name` picks: "auto" is simplejpeg when it is installed (it decodes
    straight into the [H, W, 3] layout, ~2x faster per clip than torchvision here, whose
    [3, H, W] output then needs a transposing copy: scripts/bench_frames.py (d)), else torchvision.
    (torchvision 0.29 also marks its image decoders deprecated, in favour of TorchCodec; on a GPU,
    `decode_jpeg_frames` still uses its nvJPEG path.)"""
    if name == "auto":
        try:
            import simplejpeg  # noqa: F401
            return "simplejpeg"
        except ImportError:
            return "torchvision"
    if name not in DECODERS:
        raise ValueError(f"JPEG decoder {name!r} must be auto or one of {', '.join(DECODERS)}")
    return name


def decode_jpeg_cpu(datas, out: np.ndarray, decoder: str = "auto") -> np.ndarray:
    """Decode JPEGs (a list of 1-D uint8 arrays or tensors, or bytes) into `out`, uint8
    [len(datas), H, W, 3], on the CPU, with `cpu_decoder(decoder)`; returns `out`."""
    if cpu_decoder(decoder) == "simplejpeg":
        import simplejpeg
        for k, data in enumerate(datas):
            data = data.numpy() if hasattr(data, "numpy") and not isinstance(data, np.ndarray) else data
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[k])   # in place
        return out
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    datas = [d if isinstance(d, torch.Tensor) else torch.from_numpy(d) if isinstance(d, np.ndarray)
             else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    for k, image in enumerate(decode_jpeg(datas, mode=ImageReadMode.RGB)):
        chw = image.numpy()
        for c in range(3):   # one plane at a time: ~5x cheaper than a permute(1, 2, 0) copy
            out[k, :, :, c] = chw[c]
    return out


def decode_jpeg_frames(datas, device=None):
    """uint8 torch tensor [len(datas), H, W, 3] from a list of JPEG byte tensors (1-D uint8, as
    `FrameStore.read_encoded` gives): with `device` a GPU ("cuda", "cuda:1", a torch.device),
    one batched torchvision `decode_jpeg(..., device=)` call (nvJPEG), the tensor living there;
    on the CPU (device None or "cpu") through `decode_jpeg_cpu`."""
    import torch
    datas = list(datas)
    if device is not None and _device_type(device) != "cpu":
        from torchvision.io import ImageReadMode, decode_jpeg
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        return torch.stack(images).permute(0, 2, 3, 1).contiguous()
    from PIL import Image
    with Image.open(io.BytesIO(np.asarray(datas[0]).tobytes())) as im:   # reads the header only
        w, h = im.size
    out = np.empty((len(datas), h, w, 3), dtype=np.uint8)
    return torch.from_numpy(decode_jpeg_cpu(datas, out))


def _device_type(device) -> str:
    import torch
    return torch.device(device).type


# --------------------------------------------------------------------------- reading


class FrameStore:
    """Read-only access to a built store: `read(item_id, start, length)` -> uint8 [length, H, W, 3],
    the same for both formats (jpeg: decoded on each read; `device=` decodes on a GPU).

    Memmaps (of the .npy, or of the .jpg.bin with its parsed offsets) are opened lazily and kept
    in a small per-process LRU cache (bounded, because each open memmap holds a file
    descriptor). Pickling drops the cache, and a fork is detected by pid, so every DataLoader
    worker opens its own files. `decoder`: the CPU JPEG decoder ("auto", "simplejpeg",
    "torchvision"; see `cpu_decoder`).
    """

    def __init__(self, root, max_open: int = 256, decoder: str = "auto"):
        self.root = Path(root)
        self.decoder = cpu_decoder(decoder)
        self.params = _read_json(self.root / "store.json", what="frame store parameters")
        self.store_format = format_name(self.params.get("format"))
        if self.store_format not in FORMATS:
            raise ValueError(f"frame store {self.root} has format {self.params.get('format')!r}, "
                             f"which this version cannot read (known: {', '.join(FORMATS.values())})")
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
        """The item's file, .npy or .jpg.bin (e.g. to measure disk use or copy the store)."""
        return self.root / self._entry(item_id)["file"]

    def read(self, item_id: str, start: int, length: int, device=None):
        """Frames start .. start+length-1 of the item, uint8 [length, H, W, 3].

        device None: a numpy array, a copy (safe to hand to torch). device given ("cpu",
        "cuda", a torch.device): a torch tensor there; a jpeg store then decodes on that device
        (nvJPEG on a GPU), an npy store copies its frames to it."""
        self._check_range(item_id, start, length)
        on_cpu = device is None or _device_type(device) == "cpu"
        if self.store_format == "npy":
            frames = np.array(self._memmap(item_id)[start:start + length])
        elif on_cpu:
            out = np.empty((length, *self.frame_size, 3), dtype=np.uint8)
            frames = decode_jpeg_cpu(self._encoded(item_id, start, length), out, self.decoder)
        else:
            return decode_jpeg_frames(self.read_encoded(item_id, start, length), device)
        if device is None:
            return frames
        import torch
        return torch.from_numpy(frames).to(device)

    def read_encoded(self, item_id: str, start: int, length: int) -> list:
        """A jpeg store's frames start .. start+length-1 still encoded: a list of 1-D uint8 torch
        tensors (views into one copy of the bytes), for `decode_jpeg_frames` on any device, e.g.
        a whole batch's clips decoded in one call on the GPU."""
        if self.store_format != "jpeg":
            raise ValueError(f"frame store {self.root} holds {self.store_format} frames, "
                             f"not JPEG: read() them")
        self._check_range(item_id, start, length)
        import torch
        return [torch.from_numpy(d) for d in self._encoded(item_id, start, length)]

    def _encoded(self, item_id: str, start: int, length: int) -> list[np.ndarray]:
        """The frames' JPEGs: views into one copy (a single read) of their bytes."""
        data, offsets = self._memmap(item_id)
        lo, hi = int(offsets[start]), int(offsets[start + length])
        buf = np.array(data[lo:hi])
        cuts = (offsets[start:start + length + 1] - lo).tolist()
        return [buf[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def _check_range(self, item_id: str, start: int, length: int) -> None:
        n = self.num_frames(item_id)
        if length < 1 or start < 0 or start + length > n:
            raise IndexError(f"frames [{start}, {start + length}) out of range for item "
                             f"{item_id!r} with {n} frames")

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
            if self.store_format == "npy":
                arr = np.load(self.path(item_id), mmap_mode="r")
            else:   # (data, offsets): the JPEG bytes and the n + 1 frame offsets into them
                arr = _open_jpeg_file(self.path(item_id))
                if arr is None:
                    raise ValueError(f"frame store {self.root}: {self.path(item_id)} is not a "
                                     f"complete JPEG frame file")
            self._open[item_id] = arr
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(item_id)
        return arr


# --------------------------------------------------------------------------- building


def item_file(item_id: str, store_format: str = "npy") -> str:
    """Relative path of an item's frames: any item id maps to a safe, fixed-length name."""
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()
    return f"frames/{digest[:2]}/{digest}{SUFFIXES[store_format]}"


def store_params(fps: float = 2.0, size: int = 224, trim: float = 0.1, store_format: str = "npy",
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> dict:
    """What store.json records. An npy store's has no quality key (and is what stores built
    before formats existed hold, so they stay valid)."""
    check_format(store_format, jpeg_quality)
    params = {"format": FORMATS[store_format], "version": VERSION, "fps": float(fps),
              "size": int(size), "trim": float(trim)}
    if store_format == "jpeg":
        params["jpeg_quality"] = int(jpeg_quality)
    return params


def build_frame_store(entries, root, *, fps: float = 2.0, size: int = 224, trim: float = 0.1,
                      min_frames: int = 1, workers: int = 2, progress: bool = True,
                      store_format: str = "npy", jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                      rank: int = 0, world: int = 1, all_gather=None) -> dict:
    """Decode every (item_id, trailer path or None) into the store at `root`; resumable.

    store_format "npy" stores each item's frames as a uint8 .npy, "jpeg" as JPEGs of
    `jpeg_quality` back to back in one .jpg.bin (module docstring); a root holds one format, and
    asking another of a built root raises FrameStoreMismatch naming both.
    Items whose file already exists complete (files appear only by atomic rename) are skipped
    and counted as already_done; the others are decoded in `workers` processes (in this process
    if workers <= 1). Each failure gets a line in failures.jsonl; other items are unaffected.
    Builds may run side by side on one root (two runs starting on a fresh cache): item files are
    written under pid-named temporaries, a build deletes only the temporaries of processes that
    are gone, and the index is re-read and merged under a lock before it is rewritten. A full disk
    (or another storage fault) while writing an item stops the build with a StorageError naming
    the item's file; its temporary is removed and the items stored so far stay (resumable).
    Returns the report (also written to report.json): counts items_in, stored (new),
    already_done, failed {reason: n} with items_in = stored + already_done + sum(failed), and
    failures (the rows of failures.jsonl: item_id, path, reason, detail, in the entries' order).

    Across processes (`world` > 1, e.g. every rank of every node of `accelerate launch`): every
    rank calls this with the same entries and `all_gather(obj)`, which returns every rank's `obj`
    in rank order (torch.distributed.all_gather_object, say). Rank r decodes the entries r,
    r + world, r + 2 world, ... of the entries sorted by item id (so a rerun gives every rank the
    same share, and resumes it) with its own `workers`, and writes its share of the report to
    parts/; once all are done rank 0 merges them into index.json, failures.jsonl and
    report.json, which no other rank writes. Every rank returns the merged report. The store
    is then the one a single process builds, file for file. The root must be one file system
    that every node sees (and the trailers must have the same paths on every node). An error on
    any rank (a full disk, a mismatched root) is raised on every rank, so none is left waiting.
    """
    root = Path(root)
    entries = [(str(item_id), None if path is None else os.fspath(path))
               for item_id, path in entries]
    _check_unique(entries)
    params = store_params(fps, size, trim, store_format, jpeg_quality)
    if world > 1:
        return _build_across_processes(entries, root, params, min_frames, workers, progress,
                                       int(rank), int(world), all_gather)
    _init_root(root, params)
    done, stored, failures = _decode(entries, root, params, min_frames, workers, progress,
                                     f"frame store {root}")
    return _finish(root, entries, done, stored, failures, params, progress)


def _decode(entries, root: Path, params: dict, min_frames: int, workers: int, progress: bool,
            label: str, bar: bool = True) -> tuple[dict, dict, list]:
    """Decode the entries not yet complete in the store: (already done {id: n_frames},
    stored {id: n_frames}, failures). `progress`: print what is to do; `bar`: and a bar."""
    store_format, size = format_name(params["format"]), params["size"]
    done, todo, failures = {}, [], []
    for item_id, path in entries:
        n = _complete_frames(root / item_file(item_id, store_format), size, store_format)
        if n is not None:
            done[item_id] = n
        elif path is None:
            failures.append(_failure(item_id, path, MISSING, "no trailer path"))
        else:
            todo.append((item_id, path))

    _log(progress, f"{label}: {len(entries)} items, {len(done)} already done, "
                   f"{len(todo)} to decode, {len(failures)} without a trailer path")
    stored = {}
    for item_id, path, result in _run(todo, root, params, min_frames, workers, progress and bar):
        if isinstance(result, TrailerError):
            failures.append(_failure(item_id, path, result.reason, result.detail))
        else:
            stored[item_id] = result
    return done, stored, failures


def _finish(root: Path, entries, done: dict, stored: dict, failures: list, params: dict,
            progress: bool) -> dict:
    """Merge the build into index.json and write failures.jsonl and report.json. The files
    come out in a fixed order (index by item id, failures as the entries), whatever order the
    workers (or the ranks) finished in, so every build of the same items writes the same bytes."""
    store_format = format_name(params["format"])
    with _index_lock(root):   # re-read: a build running alongside may have added items meanwhile
        index = _load_index(root)
        for item_id, n in {**done, **stored}.items():
            index[item_id] = {"file": item_file(item_id, store_format), "n_frames": int(n)}
        index = {k: v for k, v in sorted(index.items()) if (root / v["file"]).exists()}
        _write_json(root / "index.json", {"items": index})
    order = {item_id: k for k, (item_id, _) in enumerate(entries)}
    failures = sorted(failures, key=lambda f: order[f["item_id"]])
    _write_lines(root / "failures.jsonl", failures)
    report = _report(entries, stored, done, failures, params)
    _write_json(root / "report.json", report)
    _log(progress, f"frame store {root}: stored {report['stored']}, already done "
                   f"{report['already_done']}, failed {report['failed'] or 0}")
    return report


# ------------------------------------------------------------------ building across processes

PARTS = "parts"
PART_WAIT_S = 60.0   # how long rank 0 waits for a part another node wrote to show up


def share_of(entries, rank: int, world: int) -> list:
    """Rank `rank`'s entries of `world`: every world-th of them sorted by item id, from the
    rank-th (stripes keep the shares even when the ids run in the order of the trailers' length)."""
    return sorted(entries)[rank::world]


def part_path(root, rank: int, world: int) -> Path:
    return Path(root) / PARTS / f"rank-{rank:05d}-of-{world:05d}.json"


def _build_across_processes(entries, root: Path, params: dict, min_frames: int, workers: int,
                            progress: bool, rank: int, world: int, all_gather) -> dict:
    """build_frame_store on rank `rank` of `world` (its docstring): three meetings of all ranks."""
    if all_gather is None or not 0 <= rank < world:
        raise ValueError(f"a frame store build across {world} processes needs rank in "
                         f"0..{world - 1} (got {rank}) and all_gather")
    digest = hashlib.sha1(json.dumps(sorted(entries)).encode()).hexdigest()

    # 1. Rank 0 claims the root and removes the temporaries of interrupted builds, before any
    # rank writes one (the pid in a temporary's name means something only on its own node).
    def claim():
        if rank == 0:
            _init_root(root, params)
        return digest, len(entries)
    seen = _together(all_gather, claim)
    for r, (d, n) in enumerate(seen):
        if d != seen[0][0]:   # (the same message on every rank)
            raise ValueError(f"frame store {root}: rank {r} was given other items than rank 0 "
                             f"({n} against {seen[0][1]}): every rank must list the same "
                             f"trailers, at the same paths on every node")

    # 2. Every rank decodes its share and writes its part of the report.
    share = share_of(entries, rank, world)

    def decode():
        if rank != 0:
            _init_root(root, params, clean=False)   # checks the parameters against store.json
        done, stored, failures = _decode(share, root, params, min_frames, workers, progress,
                                         f"frame store {root}, rank {rank} of {world}",
                                         bar=rank == 0)   # one bar: rank 0's share
        part = part_path(root, rank, world)
        part.parent.mkdir(exist_ok=True)
        _write_json(part, {"rank": rank, "world": world, "items": len(share),
                           "already_done": done, "stored": stored, "failures": failures})
    _together(all_gather, decode)

    # 3. Rank 0 merges the parts; every rank gets the merged report.
    def merge():
        if rank != 0:
            return None
        done, stored, failures = {}, {}, []
        ordered = sorted(entries)   # (share_of, sorted once)
        for r in range(world):
            part = _read_part(root, r, world, {item_id for item_id, _ in ordered[r::world]})
            done.update(part["already_done"])
            stored.update(part["stored"])
            failures += part["failures"]
        report = _finish(root, entries, done, stored, failures, params, progress)
        for r in range(world):
            part_path(root, r, world).unlink(missing_ok=True)
        try:
            (root / PARTS).rmdir()
        except OSError:   # not empty: a part of a build of another world size, interrupted
            pass
        return report
    return _together(all_gather, merge)[0]


def _read_part(root: Path, r: int, world: int, ids: set) -> dict:
    """Rank r's part, checked to account for exactly its share; waits a while for a part that a
    shared file system shows late."""
    path = part_path(root, r, world)
    deadline = time.monotonic() + PART_WAIT_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        part = _read_json(path, what=f"frame store part of rank {r}")
    except FileNotFoundError:
        raise FileNotFoundError(f"frame store {root}: rank {r} finished but its part {path} "
                                f"is not there: is the store on a file system that every node "
                                f"shares?") from None
    got = [*part["already_done"], *part["stored"], *(f["item_id"] for f in part["failures"])]
    if part.get("world") != world or len(got) != len(ids) or set(got) != ids:
        raise ValueError(f"frame store {root}: {path} does not account for rank {r}'s "
                         f"{len(ids)} items (it names {len(got)}): is another build of "
                         f"{world} processes writing to this store?")
    return part


def _together(all_gather, fn) -> list:
    """Run fn() here, then meet the other ranks: every rank's value in rank order, or, if fn
    raised on any rank, that error on every rank (this rank's own first), so that no rank is left
    waiting for one that has stopped, and a user's error (a full disk) exits 2 everywhere."""
    error, value = None, None
    try:
        value = fn()
    except Exception as e:   # noqa: BLE001 - handed to the other ranks, then raised
        error = e
    got = all_gather((None if error is None else _portable(error), value))
    if error is not None:
        raise error
    for sent, _ in got:
        if sent is not None:
            raise sent
    return [v for _, v in got]


def _portable(error: Exception) -> Exception:
    """A copy of `error` that pickles (to send to the other ranks): the same type where it can
    be, else a RuntimeError with its text."""
    try:
        return pickle.loads(pickle.dumps(error))   # (a traceback does not travel)
    except Exception:   # noqa: BLE001 - any exception that does not survive pickling
        return RuntimeError(f"{type(error).__name__}: {error}")


def _log(progress: bool, text: str) -> None:
    log.info(text)
    if progress:
        tqdm.write(text)


def _check_unique(entries):
    dupes = [k for k, c in Counter(item_id for item_id, _ in entries).items() if c > 1]
    if dupes:
        raise ValueError(f"{len(dupes)} item ids appear more than once, e.g. {dupes[:5]}")


def _init_root(root: Path, params: dict, clean: bool = True) -> None:
    """Write store.json on first use; refuse a root built with other parameters or format.

    The first build to claim a fresh root wins: store.json is hard-linked into place from a
    complete temporary, which fails if another build (two runs started together) linked its
    own first; this build then checks its parameters against that one's. `clean`: also delete
    the temporaries of builds that are gone (across processes, rank 0 alone does, first)."""
    path = root / "store.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
        with reported_write(path, tmp):
            tmp.write_text(json.dumps(params, indent=1, ensure_ascii=False) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass                   # another build claimed the root first: checked below
            except OSError as e:       # no hard links on this file system: last writer wins
                if e.errno not in _NO_LINKS:
                    raise
                os.replace(tmp, path)
    old = _read_json(path, what="frame store parameters")
    if old.get("format") != params["format"]:
        had, want = format_name(old.get("format")), format_name(params["format"])
        raise FrameStoreMismatch(
            f"frame store {root} holds {had} frames (store.json format {old.get('format')!r}), "
            f"asked for {want} ({params['format']!r}): one root holds one format; build the "
            f"{want} store in another root (another data.cache_dir) or ask for {had}")
    diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise FrameStoreMismatch(f"frame store {root} was built with other parameters "
                                 f"({text}); use another root or the stored values")
    if not clean:
        return
    for tmp in [*root.glob(f"frames/*/*{TMP_SUFFIX}"), *root.glob(f"store.json.*{TMP_SUFFIX}"),
                *root.glob(f"{PARTS}/*{TMP_SUFFIX}")]:
        if stale_tmp(tmp):   # left by an interrupted build (not by one running alongside)
            tmp.unlink(missing_ok=True)


_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


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


def _complete_frames(path: Path, size: int, store_format: str = "npy") -> int | None:
    """Frame count of a finished item file, None if absent or not a valid [T, size, size, 3]."""
    if store_format == "jpeg":
        return _complete_jpeg_frames(path, size)
    try:
        arr = np.load(path, mmap_mode="r")   # also fails if the file is shorter than its header says
    except (OSError, ValueError):
        return None
    ok = arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[1:] == (size, size, 3)
    return int(arr.shape[0]) if ok and arr.shape[0] > 0 else None


def _open_jpeg_file(path: Path):
    """(data, offsets) of a complete .jpg.bin (data: a uint8 memmap of the JPEG bytes, offsets:
    int64 [n + 1]); None if the file is absent, cut short, or not one."""
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError):   # absent, or empty (numpy cannot map 0 bytes)
        return None
    head = len(JPEG_MAGIC) + _U64.itemsize
    if len(mm) < head or bytes(mm[:len(JPEG_MAGIC)]) != JPEG_MAGIC:
        return None
    n = int(np.frombuffer(mm[len(JPEG_MAGIC):head], dtype=_U64)[0])
    start = head + (n + 1) * _U64.itemsize
    if n < 1 or len(mm) < start:
        return None
    offsets = np.frombuffer(mm[head:start], dtype=_U64).astype(np.int64)
    if offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or start + offsets[-1] != len(mm):
        return None
    return mm[start:], offsets


def _complete_jpeg_frames(path: Path, size: int) -> int | None:
    """Frame count of a finished .jpg.bin whose first frame is size x size RGB, else None."""
    opened = _open_jpeg_file(path)
    if opened is None:
        return None
    data, offsets = opened
    from PIL import Image
    try:
        with Image.open(io.BytesIO(bytes(data[:offsets[1]]))) as im:   # reads the header only
            ok = im.format == "JPEG" and im.size == (size, size) and im.mode == "RGB"
    except Exception:   # noqa: BLE001 - not a JPEG: rebuild the item
        return None
    return len(offsets) - 1 if ok else None


def encode_jpeg_frames(frames: np.ndarray, quality: int) -> bytes:
    """A .jpg.bin file's bytes from uint8 [T, H, W, 3] frames: each frame a baseline JPEG (Pillow,
    libjpeg-turbo, 4:2:0 chroma), header and offsets first (see JPEG_MAGIC)."""
    from PIL import Image
    parts = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=int(quality))
        parts.append(buf.getvalue())
    offsets = np.zeros(len(parts) + 1, dtype=_U64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    head = JPEG_MAGIC + np.asarray([len(parts)], dtype=_U64).tobytes() + offsets.tobytes()
    return head + b"".join(parts)


def _run(todo, root, params, min_frames, workers, progress):
    """Yield (item_id, path, n_frames or TrailerError) as items finish, with a progress bar."""
    bar = progress_bar(len(todo), "frames", enabled=progress, unit="item", smoothing=0.05)
    store_format = format_name(params["format"])
    jobs = [(item_id, path, str(root / item_file(item_id, store_format)), params, min_frames)
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
            if params["format"] == JPEG_FORMAT:
                f.write(encode_jpeg_frames(frames, params["jpeg_quality"]))
            else:
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
