"""Decode a trailer into the frames the video encoder sees: 2 fps, short side resized, centre crop.

The KDD'24 recipe: frames sampled at 2 fps, resized and centre-cropped to 224x224, and the first
and last 10% of the sampled frames dropped (rating screens, studio logos, credits).

decord resizes while decoding (ffmpeg's scaler on each decoded frame), which is much cheaper than
decoding at full resolution and resizing afterwards. decord readers are opened inside
`read_trailer` only, never at import time, so each worker process opens its own.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

# The reasons a trailer cannot be used; `TrailerError.reason` is one of them.
MISSING = "missing"        # no file at the path (or no path at all)
EMPTY = "empty"            # a zero-byte file
CORRUPT = "corrupt"        # decord cannot open it and it is not a cut-off mp4: not a video at all
TRUNCATED = "truncated"    # cut off mid-stream: an mp4 box runs past the end of the file, the index
                           # (moov) never came, the packets stop early, or frames fail to decode
TOO_SHORT = "too short"    # fewer than `min_frames` frames remain after sampling and trimming
NO_VIDEO_STREAM = "no video stream"   # a valid container without a video stream (e.g. audio only)
REASONS = (MISSING, EMPTY, CORRUPT, TRUNCATED, TOO_SHORT, NO_VIDEO_STREAM)

# Frames decoded per decord call: bounds the full-width (uncropped) temporary buffer.
DECODE_CHUNK = 64


class TrailerError(Exception):
    """A trailer that cannot be turned into frames; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, path, detail: str = ""):
        assert reason in REASONS, reason
        self.reason, self.path, self.detail = reason, path, detail
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # keep reason/detail when sent back from a worker process
        return type(self), (self.reason, self.path, self.detail)


def sample_indices(n_frames: int, src_fps: float, fps: float = 2.0, trim: float = 0.1) -> np.ndarray:
    """Source-frame indices to keep, in temporal order.

    Rule: timestamps t_k = k / fps for k = 0, 1, ... while t_k < n_frames / src_fps (the video's
    duration); each maps to the nearest source frame, floor(t_k * src_fps + 0.5) (halves round
    up), clipped to the last frame. Of these n sampled frames, floor(trim * n) are then dropped
    from each end. Example: 100 frames at 25 fps, fps=2 -> t = 0, 0.5, ..., 3.5 -> indices
    0, 13, 25, 38, 50, 63, 75, 88; trim=0.1 drops floor(0.8) = 0 from each end. If fps exceeds
    src_fps, source frames repeat (timestamps are kept, not de-duplicated).
    """
    if not (src_fps > 0 and math.isfinite(src_fps)):
        raise ValueError(f"source fps must be a positive number, got {src_fps}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    step = src_fps / fps                               # source frames per sampled frame
    n = max(0, math.ceil(n_frames / step - 1e-9))      # k * step < n_frames
    idx = np.floor(np.arange(n) * step + 0.5).astype(np.int64)
    idx = np.minimum(idx, max(n_frames - 1, 0))
    cut = math.floor(trim * n + 1e-9)
    return idx[cut:n - cut]


def resize_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side equal to `size` and the aspect ratio kept."""
    if h <= w:
        return size, max(size, round(w * size / h))
    return max(size, round(h * size / w)), size


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window of [T, H, W, C] frames (a view)."""
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top:top + size, left:left + size]


def _as_numpy(batch) -> np.ndarray:
    """decord returns its own NDArray, or a torch tensor if a caller switched its bridge."""
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def open_reader(path, size: int | None = None):
    """A decord reader; resized on decode (short side = size) when `size` is given.

    Raises TrailerError (missing, empty, corrupt, truncated). Returns (reader, (orig_h, orig_w)),
    or (reader, None) for a plain reader when `size` is None.
    """
    import decord

    path = os.fspath(path)
    if not os.path.exists(path):
        raise TrailerError(MISSING, path, "no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise TrailerError(EMPTY, path, "zero-byte file")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises RuntimeError, DECORDError or AssertionError here
        raise _open_error(path, e) from None
    if size is None:
        return reader, None
    # decord has no metadata call for the frame size: decode the first frame of a plain reader.
    try:
        h, w = reader[0].shape[:2]
    except Exception as e:
        raise TrailerError(TRUNCATED, path, f"opens, but frame 0 does not decode: {_short(e)}") \
            from None
    del reader
    new_h, new_w = resize_shape(h, w, size)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=new_w, height=new_h,
                                    num_threads=1)
    except Exception as e:
        raise _open_error(path, e) from None
    return reader, (h, w)


def _open_error(path: str, e: Exception) -> TrailerError:
    """Why decord cannot open a file. decord reads every packet when it opens a file (to index
    key frames): ffmpeg's av_read_frame failing there means the header parsed but the data stops
    early. An mp4 whose boxes run past the end of the file was cut off (most encoders write the
    index last, so a cut file has none): truncated, not corrupt. The details are fixed texts or
    decord's message without its random numbers, so a report is the same on every run."""
    if "cannot find video stream" in str(e):
        return TrailerError(NO_VIDEO_STREAM, path, "the container has no video stream")
    if "av_read_frame" in str(e):
        return TrailerError(TRUNCATED, path, f"packets stop early: {_short(e)}")
    cut = _cut_mp4(path)
    if cut:
        return TrailerError(TRUNCATED, path, cut)
    return TrailerError(CORRUPT, path, f"decord cannot open it: {_short(e)}")


# Box types an mp4 / QuickTime file can start with.
_FIRST_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _cut_mp4(path: str) -> str | None:
    """If `path` is an ISO-BMFF file (mp4, mov) that was cut off, say how; None otherwise (also
    for files that are not ISO-BMFF at all). Walks the top-level boxes: cut off when a box runs
    past the end of the file, or when the media data is there but the index (moov) is not."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            pos, kinds = 0, []
            while pos < size:
                f.seek(pos)
                head = f.read(16)
                if len(head) < 8:
                    return f"the file ends inside a box header at byte {pos}" if kinds else None
                n, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if (not kinds and kind not in _FIRST_BOXES) or not all(32 <= c < 127 for c in kind):
                    return None                      # not a box: not an mp4 (or garbage inside one)
                if n == 1:                           # 64-bit size follows the type
                    if len(head) < 16:
                        return f"the file ends inside the '{kind.decode()}' box header"
                    n = int.from_bytes(head[8:16], "big")
                elif n == 0:                         # the box runs to the end of the file
                    n = size - pos
                if n < 8:
                    return None
                kinds.append(kind)
                if pos + n > size:
                    return (f"the file ends inside its '{kind.decode()}' box "
                            f"({size - pos} of {n} bytes)")
                pos += n
    except OSError:
        return None
    if b"mdat" in kinds and b"moov" not in kinds:
        return "media data but no index (moov box): the file was cut off or never finished"
    return None


def read_trailer(path, fps: float = 2.0, size: int = 224, trim: float = 0.1,
                 min_frames: int = 1) -> np.ndarray:
    """Frames of one trailer, uint8 [T, size, size, 3], sampled by `sample_indices`.

    Raises TrailerError: missing; empty; no video stream (a container with audio only, say);
    truncated (an mp4 cut off mid-stream: before its index, which most encoders write at the
    end, or, for a "faststart" mp4, with packets stopping early; or the sampled frames fail to
    decode or come back short); corrupt (decord cannot open it and it is no cut-off mp4: not a
    video); too short (fewer than `min_frames` frames after trimming; checked before decoding).
    """
    reader, _ = open_reader(path, size)
    try:
        src_fps = reader.get_avg_fps()
        idx = sample_indices(len(reader), src_fps, fps, trim)
    except ValueError as e:
        raise TrailerError(CORRUPT, os.fspath(path), str(e)) from None
    if len(idx) < max(min_frames, 1):
        raise TrailerError(TOO_SHORT, os.fspath(path),
                           f"{len(idx)} frames after sampling at {fps} fps and trimming "
                           f"{trim:.0%} of each end (source: {len(reader)} frames at "
                           f"{src_fps:.3g} fps), need {max(min_frames, 1)}")
    out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
    for start in range(0, len(idx), DECODE_CHUNK):
        chunk = idx[start:start + DECODE_CHUNK]
        try:
            frames = _as_numpy(reader.get_batch(chunk.tolist()))
        except Exception as e:  # decord.DECORDError on a cut-off stream
            raise TrailerError(TRUNCATED, os.fspath(path),
                               f"decoding frame {int(chunk[0])}..{int(chunk[-1])} of "
                               f"{len(reader)} failed: {_short(e)}") from None
        if frames.shape[0] != len(chunk) or frames.ndim != 4:
            raise TrailerError(TRUNCATED, os.fspath(path),
                               f"asked for {len(chunk)} frames, decoded {frames.shape[0]}")
        out[start:start + len(chunk)] = center_crop(frames, size)
    return out


def _short(e: Exception, limit: int = 200) -> str:
    """One line: the exception type and message, without decord's "[time] file.cc:line:" prefix."""
    text = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", " ".join(str(e).split()))
    return f"{type(e).__name__}: {text[:limit]}"
