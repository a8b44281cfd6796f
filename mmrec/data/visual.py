"""Trailer (video) and still-image fields: from item columns to model-ready uint8 pixels.

Video. Trailers are decoded once into the frame store (`preprocessing/frame_store.py`, sampled at
`fps`, resized to `size`, the first and last `trim` of the sampled frames dropped), kept as
`store_format` "npy" (raw uint8, no decode on read; the default) or "jpeg" (`jpeg_quality`;
~12x less disk, a JPEG decode per frame read; see frame_store.py's docstring). A training
example takes ONE clip of `clip_frames` consecutive frames at a random start drawn from the
sample's seed; evaluation and export take `segments` evenly spaced clips (S=1: the centre clip)
and the item's score is the max over them (KDD'24 Eq. 4).
Short videos: a trailer with fewer frames than `clip_frames` is LOOPED (frames 0..T-1, 0..,
i.e. index k -> k mod T) to the clip length, so every clip is a real, full-length sequence, and
all of its segments are that same looped clip.

Images. Up to `max_images` stills per item (news-style), resized (short side) and centre-cropped
to `size`, decoded once into a cached uint8 array; the encoder averages over the present ones.

Both open their stores lazily, inside each DataLoader worker, never before the workers fork.

Across processes (`mmrec preprocess` under `accelerate launch`, inside `across_processes()`):
every process builds the video field at once and decodes its share of the trailers into the
shared frame store, with its own `workers` decoding processes (`workers` is per process, like
`train.batch_size`); rank 0 merges the store's index and failure report (frame_store.py).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mmrec.data.content import FieldContent, register_content
from mmrec.data.tables import DataError, MultiModalDataset
from mmrec.errors import ConfigError
from preprocessing.video import CORRUPT, EMPTY, MISSING, TRUNCATED

# The video and image field defaults: configs/defaults/modalities/{video,image}.yaml


# ----------------------------------------------------------------------------------- clips
def segment_starts(n_frames: int, clip_frames: int, segments: int) -> np.ndarray:
    """Start frames of S evenly spaced clips; S=1 gives the centre clip."""
    span = max(n_frames - clip_frames, 0)
    if segments == 1:
        return np.asarray([span // 2], dtype=np.int64)
    return np.round(np.linspace(0, span, segments)).astype(np.int64)


def random_start(n_frames: int, clip_frames: int, seed: int) -> int:
    """A uniform start in [0, T - F] drawn from the sample's seed (0 when the video is short)."""
    span = max(n_frames - clip_frames, 0)
    return int(np.random.default_rng(int(seed)).integers(0, span + 1))


def clip_indices(n_frames: int, start: int, clip_frames: int) -> np.ndarray:
    """Frame indices of one clip; k -> k mod T loops a video shorter than the clip."""
    return (start + np.arange(clip_frames)) % n_frames


def resolve_path(value, root: Path | None) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    p = Path(str(value))
    return str(p if p.is_absolute() or root is None else root / p)


def require_column(ds: MultiModalDataset, field: str, column: str) -> None:
    if column not in ds.items.columns:
        raise DataError(f"fields.{field}.column: the items table has no column '{column}' "
                        f"(columns: {list(ds.items.columns)})")


def _params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


class VideoContent(FieldContent):
    def __init__(self, name: str, store_root: Path, keys: list[str | None], n_frames: np.ndarray,
                 clip_frames: int, segments: int, frame_size: tuple[int, int], report: dict,
                 absent_reasons: list[str | None] | None = None, failures: list[dict] | None = None):
        self.name = name
        self.store_root = Path(store_root)
        self.keys = keys
        self.n_frames = np.asarray(n_frames, dtype=np.int64)
        self.present = self.n_frames > 0
        self.clip_frames, self.segments = int(clip_frames), int(segments)
        self.frame_size = tuple(frame_size)
        self.report = report
        # per item: None (frames stored) or why not ("no trailer listed" or a TrailerError reason)
        self.absent_reasons = absent_reasons
        self.failures = failures or []   # one record per item whose trailer failed (see _failure)
        self._store = None

    def __getstate__(self):   # workers open their own store (memory maps); reports stay here
        state = dict(self.__dict__)
        state["_store"] = None
        state["absent_reasons"], state["failures"] = None, []
        return state

    @property
    def store(self):
        if self._store is None:
            from preprocessing.frame_store import FrameStore
            self._store = FrameStore(self.store_root)
        return self._store

    def read_clip(self, row: int, start: int) -> np.ndarray:
        T, F = int(self.n_frames[row]), self.clip_frames
        if T >= F:
            return self.store.read(self.keys[row], int(start), F)
        return self.store.read(self.keys[row], 0, T)[clip_indices(T, 0, F)]

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        items = np.asarray(items, dtype=np.int64)
        H, W = self.frame_size
        F, S = self.clip_frames, self.segments
        lead = (len(items),) if mode == "train" else (len(items), S)
        frames = np.zeros(lead + (F, H, W, 3), dtype=np.uint8)
        for b, row in enumerate(items):
            T = int(self.n_frames[row])
            if T == 0:
                continue      # missing trailer: zeros, flagged absent for the fusion layer
            if mode == "train":
                frames[b] = self.read_clip(row, random_start(T, F, seeds[b]))
            else:
                for s, start in enumerate(segment_starts(T, F, S)):
                    frames[b, s] = self.read_clip(row, start)
        return {"frames": torch.from_numpy(frames), "present": torch.from_numpy(self.present[items])}


@register_content("video")
def build_video_content(name: str, spec: dict, ds: MultiModalDataset, cfg: dict) -> VideoContent:
    """Decode every trailer into the frame store (resumable), then serve clips from it."""
    from preprocessing.frame_store import FrameStore, build_frame_store
    column = spec["column"]
    store_format, quality = store_options(name, spec)
    require_column(ds, name, column)
    params = {k: spec[k] for k in ("fps", "size", "trim", "min_frames")}
    if store_format != "npy":   # npy keeps the key it had before formats: its stores stay valid
        params.update(store_format=store_format, jpeg_quality=quality)
    root = Path(cfg["data"]["cache_dir"]) / "frames" / _params_key(params)
    paths = [resolve_path(v, ds.root) for v in ds.items[column].tolist()]
    keys = [trailer_key(p) for p in paths]
    entries = sorted({(k, p) for k, p in zip(keys, paths) if k is not None})
    report = build_frame_store(entries, root, fps=float(spec["fps"]), size=int(spec["size"]),
                               trim=float(spec["trim"]), min_frames=int(spec["min_frames"]),
                               workers=int(spec["workers"]), progress=bool(cfg["train"].get("progress", True)),
                               store_format=store_format, jpeg_quality=quality, **_processes())
    store = FrameStore(root)
    n_frames = np.asarray([store.num_frames(k) if k is not None and k in store else 0 for k in keys])
    failed = {f["item_id"]: f for f in report.get("failures", [])}   # keyed by store key
    ids = ds.items["item_id"].astype(str).tolist()
    sources = source_ids(ds, (f"{column}_source_id", "youtube_id"))
    reasons, failures = [], []
    for i, k, p, sid, n in zip(ids, keys, paths, sources, n_frames):
        if k is None:
            reasons.append(NO_TRAILER)
        elif n > 0:
            reasons.append(None)
        elif k in failed:
            reasons.append(failed[k]["reason"])
            failures.append(_failure(i, name, sid, p, failed[k]["reason"], failed[k]["detail"]))
        else:
            raise AssertionError(f"fields.{name}: item {i}'s trailer {p} is neither in the frame "
                                 f"store {root} nor among its failures")
    absent: dict[str, list[str]] = {NO_TRAILER: []}
    for i, r in zip(ids, reasons):
        if r is not None:
            absent.setdefault(r, []).append(i)
    summary = {"items": len(ids), "with_frames": int((n_frames > 0).sum()),
               "absent": {r: {"count": len(v), "examples": v[:5]} for r, v in absent.items() if v},
               "store": str(root)}
    if summary["with_frames"] + sum(len(v) for v in absent.values()) != len(ids) or \
            len(failures) != len(ids) - summary["with_frames"] - len(absent[NO_TRAILER]):
        raise AssertionError(f"fields.{name}: trailer counts do not add up: {summary}")
    return VideoContent(name, root, keys, n_frames, spec["clip_frames"], spec["segments"],
                        (int(spec["size"]), int(spec["size"])), summary, reasons, failures)


_ACROSS_PROCESSES = [False]


@contextmanager
def across_processes():
    """Inside it, every process of the launch builds video fields together, each decoding its
    share of the trailers (mmrec.data.pipeline.prepare(across_processes=True)). Outside it, as in
    training, where the main process builds the caches first, a build is one process's."""
    before, _ACROSS_PROCESSES[0] = _ACROSS_PROCESSES[0], True
    try:
        yield
    finally:
        _ACROSS_PROCESSES[0] = before


def _processes() -> dict:
    """build_frame_store's rank, world and all_gather: this process's share inside
    `across_processes()` under a launcher; nothing (everything, here) otherwise."""
    from mmrec.distributed import all_gather_objects, rank_and_world
    rank, world = rank_and_world()
    if not _ACROSS_PROCESSES[0] or world == 1:
        return {}
    return {"rank": rank, "world": world, "all_gather": all_gather_objects}


STORE_FORMATS = ("npy", "jpeg")


def store_options(name: str, spec: dict) -> tuple[str, int]:
    """(store_format, jpeg_quality) of a video field, checked: ConfigError naming the key."""
    store_format = spec.get("store_format", "npy")
    quality = spec.get("jpeg_quality", 90)
    if store_format not in STORE_FORMATS:
        raise ConfigError(f"fields.{name}.store_format={store_format!r} must be one of "
                          f"{', '.join(STORE_FORMATS)} (npy: raw frames, no decoding; jpeg: "
                          f"~12x less disk, decoded on every read)")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"fields.{name}.jpeg_quality={quality!r} must be an integer in 1..100 "
                          f"(90: mean abs. pixel error ~1-3 at 224 px)")
    return store_format, int(quality)


NO_TRAILER = "no trailer listed"   # the item's trailer column is empty
NO_IMAGES = "no images listed"     # the item's image column is empty


def source_ids(ds: MultiModalDataset, columns: tuple[str, ...]) -> list[str | None]:
    """Per item, the id its content file has at the source (e.g. the youtubeId of
    ml-youtube.csv, kept by the MovieLens-25M reader as `youtube_id`): the first of `columns`
    the items table has; None where there is none or it is empty."""
    for column in columns:
        if column in ds.items.columns:
            return [None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""
                    else str(v) for v in ds.items[column].tolist()]
    return [None] * len(ds.items)


def _failure(item_id: str, field: str, source_id, path, reason: str, detail: str) -> dict:
    return {"item_id": item_id, "field": field, "source_id": source_id, "path": path,
            "reason": reason, "detail": detail}


def trailer_key(path: str | None) -> str | None:
    """A store key that changes when the file does (path, size, mtime); a missing file keeps its
    path as key so the store reports it as missing."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return path
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


# ---------------------------------------------------------------------------------- images
def load_image(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: short side resized to `size` (antialiased), centre crop.

    Decoded with Pillow, not torchvision.io: once decord or PyAV is loaded in the process (any
    run with a video field), torchvision's libpng aborts with "bad parameters to zlib", while
    Pillow's vendored codecs keep working."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


class ImageContent(FieldContent):
    def __init__(self, name: str, pixels_path: Path, counts: np.ndarray, report: dict,
                 absent_reasons: list[str | None] | None = None, failures: list[dict] | None = None):
        self.name = name
        self.pixels_path = Path(pixels_path)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.present = self.counts > 0
        self.report = report
        # per item: None (a still was read), "no images listed", or the first failed still's reason
        self.absent_reasons = absent_reasons
        self.failures = failures or []   # one record per still that could not be read
        self._pixels = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pixels"] = None
        state["absent_reasons"], state["failures"] = None, []
        return state

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
        items = np.asarray(items, dtype=np.int64)
        k = self._pixels.shape[1]
        mask = np.arange(k)[None, :] < self.counts[items][:, None]
        return {"images": torch.from_numpy(np.ascontiguousarray(self._pixels[items])),
                "image_mask": torch.from_numpy(mask), "present": torch.from_numpy(self.present[items])}


def _image_list(value) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [v for v in list(value) if isinstance(v, str) and v.strip()]


@register_content("image")
def build_image_content(name: str, spec: dict, ds: MultiModalDataset, cfg: dict) -> ImageContent:
    """Decode each item's first k images once into a cached [items, k, size, size, 3] array.
    Unreadable or missing images are skipped, counted and named in the field's report (reasons:
    missing, empty, truncated, corrupt); the cache's files appear by atomic rename, report.json
    last, so a run killed while building it leaves no cache that looks complete."""
    column, k, size = spec["column"], int(spec["max_images"]), int(spec["size"])
    require_column(ds, name, column)
    lists = [[resolve_path(p, ds.root) for p in _image_list(v)][:k] for v in ds.items[column].tolist()]
    h = hashlib.sha256(json.dumps({"k": k, "size": size, "version": 2}).encode())
    for paths in lists:
        for p in paths:
            st = Path(p).stat() if Path(p).exists() else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    cache = Path(cfg["data"]["cache_dir"]) / "images" / h.hexdigest()[:20]
    ids = ds.items["item_id"].astype(str).tolist()
    if not (cache / "report.json").exists():
        _build_image_cache(cache, lists, size, k)
    report = json.loads((cache / "report.json").read_text())
    counts = np.load(cache / "counts.npy")
    bad_stills = json.loads((cache / "failures.json").read_text())   # by dataset row
    sources = source_ids(ds, (f"{column}_source_id",))
    failures = [_failure(ids[b["row"]], name, sources[b["row"]], b["path"], b["reason"], b["detail"])
                for b in bad_stills]
    first_bad = {}
    for b in bad_stills:
        first_bad.setdefault(b["row"], b["reason"])
    reasons = [None if counts[i] > 0 else first_bad.get(i, NO_IMAGES) for i in range(len(ids))]
    if len(failures) + int(counts.sum()) != sum(len(p) for p in lists) or \
            any(r == NO_IMAGES and lists[i] for i, r in enumerate(reasons)):
        raise AssertionError(f"fields.{name}: image counts do not add up")
    # the examples name item ids, which the cache (keyed by paths only) does not know
    bad: dict[str, list[str]] = {}
    for f in failures:
        bad.setdefault(f["reason"], []).append(f"item {f['item_id']}: {f['path']}")
    report["skipped"] = {r: {"count": len(v), "examples": v[:5]} for r, v in bad.items()}
    return ImageContent(name, cache / "pixels.npy", counts, report, reasons, failures)


def _build_image_cache(cache: Path, lists: list[list[str]], size: int, k: int) -> None:
    from preprocessing.files import atomic_path, tmp_path, write_text_atomic
    cache.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(cache / "pixels.npy")   # per process: caches are shared by parallel runs
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                       shape=(len(lists), max(k, 1), size, size, 3))
    counts = np.zeros(len(lists), dtype=np.int64)
    bad = []
    for i, paths in enumerate(lists):
        for p in paths:
            try:
                pixels[i, counts[i]] = load_image(p, size)
                counts[i] += 1
            except Exception as e:   # noqa: BLE001 - any unreadable image is skipped and reported
                reason, detail = image_failure(p, e)
                bad.append({"row": i, "path": p, "reason": reason, "detail": detail})
    pixels.flush()
    del pixels
    tmp.replace(cache / "pixels.npy")
    with atomic_path(cache / "counts.npy") as counts_tmp:
        np.save(counts_tmp, counts)
    n_listed = sum(len(p) for p in lists)
    report = {"images_listed": n_listed, "images_read": int(counts.sum()),
              "items_with_images": int((counts > 0).sum())}
    if report["images_read"] + len(bad) != n_listed:
        raise AssertionError(f"image counts do not add up: {report}, {len(bad)} failed")
    write_text_atomic(cache / "failures.json", json.dumps(bad, indent=1))
    write_text_atomic(cache / "report.json", json.dumps(report, indent=1))   # last: marks it complete


def image_failure(path: str, e: Exception) -> tuple[str, str]:
    """(reason, detail) of a still that could not be read: missing, empty, truncated, corrupt."""
    p = Path(path)
    if not p.exists():
        return MISSING, "no such file"
    if p.is_file() and p.stat().st_size == 0:
        return EMPTY, "zero-byte file"
    text = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if "truncated" in str(e).lower() or "broken data stream" in str(e).lower():
        return TRUNCATED, text
    return CORRUPT, text
