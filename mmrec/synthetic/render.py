"""Render item attributes into short, real mp4 trailers (and still images).

Used by the synthetic world (`mmrec.synthetic.world`) and for MovieLens "stand-in" trailers. An item is
a few categorical attributes: ``colour``, ``shape``, ``texture`` (visible in any single frame) and
``direction``, ``speed`` (visible only ACROSS frames: the shape moves, wrapping around the frame,
from a random start). A trailer is a row of scenes; a few are *informative* (show the item) and
sit at random positions, the rest are filler (dark noise or a static grey title card) with no
attribute information at all, so a model that looks at one centre clip often sees nothing and
max-over-segments inference pays off. Attributes an informative scene is not given are drawn at
random per scene (nuisance), so they carry no signal.

Drawing is vectorised numpy over all frames of a scene (signed-distance shapes with one pixel of
anti-aliasing, so sub-pixel motion is visible), and every random choice comes from one seed:
the same attributes and seed give the same frames. Files are written with PyAV (libx264, yuv420p,
no B-frames, so decord sees exactly the frames written) to a temporary name and renamed, so a file
that exists is complete; the bulk renderers skip existing files and can be resumed.
"""
from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import multiprocessing as mp
import numpy as np

from preprocessing.files import write_text_atomic

# Every value the renderer can draw; a world picks its vocabularies among these.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40), "green": (40, 200, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "magenta": (215, 50, 205), "cyan": (40, 205, 215), "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
TEXTURES = ("solid", "stripes", "checker", "dots")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) per frame in image coordinates (y down)
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS: dict[str, float] = {"slow": 1.0, "fast": 3.0}  # pixels per frame at a 32-pixel frame

RENDER_VOCAB: dict[str, list[str]] = {
    "colour": list(PALETTE), "shape": list(SHAPES), "texture": list(TEXTURES),
    "direction": list(DIRECTIONS), "speed": list(SPEEDS),
}

TRAILER_DEFAULTS: dict = {
    "scenes": 8,            # scenes per trailer
    "informative": 3,       # of which show the item (at random positions); the rest are filler
    "frames_per_scene": 8,  # frames per scene; a trailer has scenes * frames_per_scene frames
    "size": 32,             # frame height = width in pixels (even, for yuv420p)
    "fps": 8,
    "noise": 0.03,          # std of the per-pixel Gaussian noise, as a fraction of 255
    "wrap": True,           # the shape wraps around the frame edges (True: most frames show it cut
                            # in pieces); False: its whole path stays inside the frame
}

# decord 0.6.0 decodes frames of these widths into arrays of the wrong shape (padded rows read as
# extra channels, e.g. (16, 16, 6)), whatever the codec; found by trying every even width 8..398.
# Height does not matter. Such trailers are refused rather than written.
DECORD_BAD_WIDTHS = frozenset({8, 12, 16, 24, 48, 72})

STANDIN_NOTE = "stand-in trailers rendered from genres and year, not real trailers"


@dataclass
class Rendered:
    """A rendered trailer: frames [T, H, W, 3] uint8 and where its informative scenes are."""

    frames: np.ndarray
    informative: list[int]          # indices of the informative scenes
    scene_attrs: list[dict | None]  # the attributes drawn in each scene (None for filler)
    frames_per_scene: int

    def scene_frames(self, scene: int) -> np.ndarray:
        f = self.frames_per_scene
        return self.frames[scene * f:(scene + 1) * f]


# ---------------------------------------------------------------------------------------------
# Drawing


def check_vocab(vocab: dict[str, Sequence[str]]) -> None:
    """Fail early, naming the value, if a world asks for something the renderer cannot draw."""
    for attr, values in vocab.items():
        if attr not in RENDER_VOCAB:
            raise ValueError(f"unknown attribute {attr!r} (renderable: {sorted(RENDER_VOCAB)})")
        bad = [v for v in values if v not in RENDER_VOCAB[attr]]
        if bad:
            raise ValueError(f"attribute {attr!r}: cannot render {bad} (known: {RENDER_VOCAB[attr]})")
        if not values:
            raise ValueError(f"attribute {attr!r}: empty vocabulary")


def check_size(size: int) -> None:
    """Even (yuv420p) and a width decord reads correctly (see DECORD_BAD_WIDTHS)."""
    if size % 2 or size < 8:
        raise ValueError(f"frame size {size}: must be even and >= 8 (yuv420p)")
    if size in DECORD_BAD_WIDTHS:
        raise ValueError(f"frame size {size}: decord 0.6.0 misreads videos of this width "
                         f"(bad: {sorted(DECORD_BAD_WIDTHS)}); use e.g. 20, 32, 40 or 64")


def _shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) to a shape of radius r centred at the origin."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - 0.8 * r
    if shape == "diamond":
        return (ax + ay - 1.1 * r) / np.sqrt(2.0)
    if shape == "ring":
        return np.abs(np.sqrt(dx * dx + dy * dy) - 0.7 * r) - 0.3 * r
    if shape == "cross":
        w = r / 3.0
        return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    if shape == "triangle":  # apex up at (0, -r), base corners at (+-r, 0.8 r)
        side = (1.8 * ax - (dy + r)) / np.sqrt(1.8 ** 2 + 1.0)
        return np.maximum(dy - 0.8 * r, side)
    raise ValueError(f"unknown shape {shape!r} (known: {SHAPES})")


def _texture(texture: str, dx: np.ndarray, dy: np.ndarray, period: float) -> np.ndarray:
    """1 where the pattern is lit, 0.4 where dark, in the object's own coordinates (moves with it)."""
    h = period / 2.0
    if texture == "solid":
        lit = np.ones(dx.shape, dtype=bool)
    elif texture == "stripes":
        lit = np.floor(dy / h) % 2 == 0
    elif texture == "checker":
        lit = (np.floor(dx / h) + np.floor(dy / h)) % 2 == 0
    elif texture == "dots":
        p = 1.5 * period
        mx, my = np.mod(dx, p) - p / 2, np.mod(dy, p) - p / 2
        lit = mx * mx + my * my > (0.3 * p) ** 2   # dark dots on the lit colour
    else:
        raise ValueError(f"unknown texture {texture!r} (known: {TEXTURES})")
    return np.where(lit, 1.0, 0.4)


def _noise(rng: np.random.Generator, shape: tuple, noise: float) -> np.ndarray:
    return rng.normal(0.0, noise * 255.0, size=shape).astype(np.float32)


def inside_starts(direction: str, speed: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per axis (x, y), the range of start centres whose whole n-frame path keeps the shape
    (radius 0.22 size; the diamond reaches 1.1 r, plus a pixel of anti-aliasing) inside the frame."""
    r = size * 0.22
    extent = 1.1 * r + 1.0
    travel = np.asarray(DIRECTIONS[direction]) * SPEEDS[speed] * size / 32.0 * (n - 1)
    lo = extent - np.minimum(travel, 0.0)
    hi = size - extent - np.maximum(travel, 0.0)
    if (hi < lo).any():
        raise ValueError(f"a {speed} shape moving {direction} for {n} frames does not stay inside a "
                         f"{size}-px frame (it needs {2 * extent + np.abs(travel).max():.0f} px): use "
                         "trailer.wrap: true, fewer frames_per_scene, or drop that speed")
    return lo, hi


def _object_scene(a: dict, n: int, size: int, noise: float, rng: np.random.Generator,
                  wrap: bool = True) -> np.ndarray:
    """n frames of one moving shape; float32 [n, size, size, 3] in 0..255. With ``wrap`` it
    starts anywhere and wraps around the edges; without, it starts where its path stays inside.

    Drawn for all frames at once: each pixel's offset to the (wrapped) centre at time t gives the
    shape's coverage and the texture, both in the object's frame so the texture moves with it.
    """
    r = size * 0.22
    period = max(2.0, size / 8.0)
    speed = SPEEDS[a["speed"]] * size / 32.0
    vx, vy = DIRECTIONS[a["direction"]]
    if wrap:
        c0 = rng.uniform(0, size, 2)
    else:
        lo, hi = inside_starts(a["direction"], a["speed"], n, size)
        c0 = rng.uniform(lo, hi)
    t = np.arange(n, dtype=np.float64)
    cx = (c0[0] + vx * speed * t)[:, None, None]
    cy = (c0[1] + vy * speed * t)[:, None, None]
    px = np.arange(size, dtype=np.float64)[None, None, :] + 0.5
    py = np.arange(size, dtype=np.float64)[None, :, None] + 0.5
    dx = np.mod(px - cx + size / 2, size) - size / 2
    dy = np.mod(py - cy + size / 2, size) - size / 2
    dx, dy = np.broadcast_arrays(dx, dy)
    cover = np.clip(0.5 - _shape_sdf(a["shape"], dx, dy, r), 0.0, 1.0)[..., None]
    shade = _texture(a["texture"], dx, dy, period)[..., None]
    colour = np.asarray(PALETTE[a["colour"]], dtype=np.float64)
    bg = rng.uniform(50, 90)
    frames = bg * (1 - cover) + colour * shade * cover
    return (frames + _noise(rng, frames.shape, noise)).astype(np.float32)


def _filler_scene(n: int, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Grey frames with no attribute information: dark noise, or a static title card."""
    if rng.random() < 0.5:
        base = np.full((size, size), rng.uniform(5, 25))
    else:  # a title card: light bars ("text lines") on grey, the same in every frame
        base = np.full((size, size), rng.uniform(30, 80))
        for _ in range(int(rng.integers(1, 4))):
            y0 = int(rng.integers(1, max(2, size - 3)))
            x0, x1 = sorted(rng.integers(1, size - 1, 2))
            base[y0:y0 + max(1, size // 16), x0:x1 + 1] = rng.uniform(150, 230)
    frames = np.repeat(base[None, :, :, None], 3, axis=3).repeat(n, axis=0)
    grey = _noise(rng, (n, size, size, 1), 2 * noise)  # same noise on all channels: no hue
    return frames + grey


def render_frames(attrs: dict, *, scenes: int = 8, informative: int = 3, frames_per_scene: int = 8,
                  size: int = 32, noise: float = 0.03, seed: int = 0,
                  vocab: dict[str, Sequence[str]] | None = None, fps: int | None = None,
                  wrap: bool = True) -> Rendered:
    """The frames of one trailer. Attributes missing from ``attrs`` are nuisance: drawn per scene
    from ``vocab`` (default: everything the renderer knows), so the video says nothing of them."""
    del fps  # accepted so a trailer parameter dict can be passed whole
    vocab = {**RENDER_VOCAB, **(vocab or {})}
    if not 1 <= informative <= scenes:
        raise ValueError(f"informative={informative} must be in 1..scenes={scenes}")
    check_size(size)
    rng = np.random.default_rng(seed)
    shown = sorted(int(s) for s in rng.choice(scenes, informative, replace=False))
    out, scene_attrs = [], []
    for s in range(scenes):
        if s in shown:
            a = {k: (attrs[k] if k in attrs else vocab[k][int(rng.integers(len(vocab[k])))])
                 for k in RENDER_VOCAB}
            out.append(_object_scene(a, frames_per_scene, size, noise, rng, wrap))
            scene_attrs.append(a)
        else:
            out.append(_filler_scene(frames_per_scene, size, noise, rng))
            scene_attrs.append(None)
    frames = np.clip(np.rint(np.concatenate(out)), 0, 255).astype(np.uint8)
    return Rendered(frames, shown, scene_attrs, frames_per_scene)


# ---------------------------------------------------------------------------------------------
# Writing


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Encode uint8 RGB frames [T, H, W, 3] to an mp4 that decord reads frame-exactly.

    libx264 (mpeg4 where the FFmpeg build lacks it), yuv420p, no B-frames, one thread (so the
    bytes are reproducible). Written under a temporary name and renamed: an mp4 that exists is
    complete.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2 or w in DECORD_BAD_WIDTHS:
        raise ValueError(f"{path}: frame size {w}x{h}: need even sides and a width decord reads "
                         f"(not {sorted(DECORD_BAD_WIDTHS)})")
    try:
        with av.open(str(tmp), "w", format="mp4") as box:
            if "libx264" in av.codecs_available:
                # With only `threads` 1, 100 encodings of the same frames gave 7 different videos
                # (x264's macroblock-tree lookahead); without mbtree they are all identical.
                stream = box.add_stream("libx264", rate=int(fps), options={
                    "crf": "16", "preset": "veryfast", "bf": "0", "threads": "1",
                    "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0"})
            else:
                stream = box.add_stream("mpeg4", rate=int(fps), options={"qscale": "2", "bf": "0"})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.thread_count = 1
            for f in frames:
                box.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            box.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def render_trailer(attrs: dict, path: str | Path, *, seed: int = 0,
                   vocab: dict[str, Sequence[str]] | None = None, **params) -> Rendered:
    """Render one trailer (see `render_frames`; params default to TRAILER_DEFAULTS) to ``path``."""
    p = {**TRAILER_DEFAULTS, **params}
    rendered = render_frames(attrs, seed=seed, vocab=vocab, **p)
    write_mp4(rendered.frames, path, p["fps"])
    return rendered


def _write_png(frame: np.ndarray, path: Path) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    Image.fromarray(frame).save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    os.replace(tmp, path)


def render_stills(attrs: dict, paths: Sequence[str | Path], k: int | None = None, size: int = 32,
                  seed: int = 0, *, noise: float = 0.03,
                  vocab: dict[str, Sequence[str]] | None = None, wrap: bool = True) -> list[Path]:
    """Write up to k still images (PNG, or JPEG by suffix), one frame each, for the image modality.

    Each still shows the item's shape at a random position; motion cannot be seen in a still, and
    attributes missing from ``attrs`` are drawn at random per still (nuisance).
    """
    vocab = {**RENDER_VOCAB, **(vocab or {})}
    rng = np.random.default_rng(seed)
    paths = [Path(p) for p in paths][: (len(paths) if k is None else k)]
    for path in paths:
        a = {key: (attrs[key] if key in attrs else vocab[key][int(rng.integers(len(vocab[key])))])
             for key in RENDER_VOCAB}
        frame = _object_scene(a, 1, size, noise, rng, wrap)[0]
        _write_png(np.clip(np.rint(frame), 0, 255).astype(np.uint8), path)
    return paths


# ---------------------------------------------------------------------------------------------
# Bulk rendering: parallel, resumable


@dataclass
class RenderJob:
    """One item's files: a trailer (``path``) and/or stills (``still_paths``)."""

    attrs: dict
    seed: int
    path: str | None = None
    still_paths: tuple[str, ...] = ()
    params: dict | None = None
    vocab: dict | None = None
    still_attrs: dict | None = None

    def pending(self) -> bool:
        return bool((self.path and not os.path.exists(self.path))
                    or any(not os.path.exists(p) for p in self.still_paths))


def _run_job(job: RenderJob) -> int:
    """Render whatever of one job is missing; returns the number of files written."""
    n = 0
    params = {**TRAILER_DEFAULTS, **(job.params or {})}
    if job.path and not os.path.exists(job.path):
        render_trailer(job.attrs, job.path, seed=job.seed, vocab=job.vocab, **params)
        n += 1
    missing = [p for p in job.still_paths if not os.path.exists(p)]
    if missing:  # stills are cheap: redraw all so each keeps its own seed-determined content
        attrs = job.attrs if job.still_attrs is None else job.still_attrs
        render_stills(attrs, job.still_paths, len(job.still_paths), params["size"],
                      seed=job.seed + 1, noise=params["noise"], vocab=job.vocab, wrap=params["wrap"])
        n += len(missing)
    return n


def _pool_context():
    """fork where available (fast, workers need only numpy and av), else the platform default."""
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


def render_jobs(jobs: Iterable[RenderJob], workers: int = 2, progress: bool = True,
                desc: str = "rendering") -> dict[str, int]:
    """Render the jobs whose files are missing, in ``workers`` processes, with a progress bar.

    Returns counts: ``rendered`` (jobs with something missing, now complete), ``files``
    (files written), ``skipped`` (jobs already complete).
    """
    from preprocessing.progress import progress as progress_bar

    jobs = list(jobs)
    todo = [j for j in jobs if j.pending()]
    stats = {"rendered": len(todo), "files": 0, "skipped": len(jobs) - len(todo)}
    if not todo:
        return stats
    bar = progress_bar(len(todo), desc, enabled=progress, unit="item")
    if workers <= 1 or len(todo) < 4:
        for job in todo:
            stats["files"] += _run_job(job)
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            for n in pool.map(_run_job, todo, chunksize=max(1, min(16, len(todo) // (4 * workers)))):
                stats["files"] += n
                bar.update(1)
    bar.close()
    return stats


# ---------------------------------------------------------------------------------------------
# MovieLens stand-in trailers


def _stable_index(key: str, n: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % n


def _as_list(genres) -> list[str]:
    if genres is None or (isinstance(genres, float) and np.isnan(genres)):
        return []
    if isinstance(genres, str):
        return [g for g in genres.replace("|", " ").split() if g]
    return [str(g) for g in genres]


def _as_year(year) -> int | None:
    try:
        y = int(float(str(year).strip()))
    except (TypeError, ValueError):
        return None
    return y if 1000 <= y <= 3000 else None


def standin_attributes(genres, year) -> dict[str, str]:
    """Deterministic attributes from metadata: the first three genres pick colour, shape and
    texture (by a stable hash); the year picks speed (fast from 1995 on) and direction (decade)."""
    g = _as_list(genres) or ["unknown"]
    y = _as_year(year)
    return {
        "colour": RENDER_VOCAB["colour"][_stable_index(g[0], len(PALETTE))],
        "shape": RENDER_VOCAB["shape"][_stable_index(g[1] if len(g) > 1 else g[0], len(SHAPES))],
        "texture": (RENDER_VOCAB["texture"][_stable_index(g[2], len(TEXTURES))] if len(g) > 2
                    else "solid"),
        "speed": "slow" if y is None or y < 1995 else "fast",
        "direction": "right" if y is None else list(DIRECTIONS)[(y // 10) % len(DIRECTIONS)],
    }


def render_standin_trailers(items, out_dir: str | Path, *, seed: int = 0, workers: int = 1,
                            progress: bool = True, **params) -> list[Path]:
    """STAND-IN trailers for items without real ones (e.g. MovieLens-100k), NOT real trailers.

    Each item's clip is drawn deterministically from its ``genres`` and ``year`` columns (see
    `standin_attributes`) and written as ``<out_dir>/<item_id>.mp4``; files that exist are skipped
    (resumable). ``standin.json`` in ``out_dir`` says what these files are. Returns the paths,
    one per row of ``items``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = {**TRAILER_DEFAULTS, **params}
    genres = items["genres"] if "genres" in items.columns else [None] * len(items)
    years = items["year"] if "year" in items.columns else [None] * len(items)
    jobs, paths = [], []
    for item_id, g, y in zip(items["item_id"].astype(str), genres, years):
        path = out / f"{item_id}.mp4"
        paths.append(path)
        jobs.append(RenderJob(standin_attributes(g, y), (zlib.crc32(item_id.encode()) ^ seed) & 0x7FFFFFFF,
                              str(path), params=p))
    stats = render_jobs(jobs, workers, progress, desc="stand-in trailers")
    note = {"standin": True, "note": STANDIN_NOTE, "items": len(paths), "params": p, "seed": seed,
            "mapping": "genres[0]->colour, genres[1]->shape, genres[2]->texture (crc32 hash); "
                       "year>=1995->fast else slow; decade->direction", **stats}
    write_text_atomic(out / "standin.json", json.dumps(note, indent=2))
    return paths
