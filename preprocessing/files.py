"""Atomic file writes for caches that several runs share."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename, so a reader sees the old
    file or the new one, never half of one. The temporary name carries the pid: runs started side
    by side share the caches, and with one shared name a run's rename took the other's file away
    mid-write."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
