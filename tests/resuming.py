"""A finished run turned back into one interrupted at a given checkpoint, for the tests that
resume it and compare with the uninterrupted run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def interrupted_copy(run_dir: Path, dest: Path, step: int) -> dict:
    """Copy `run_dir` to `dest` without its outputs (metrics, best model, history) and with only
    the checkpoint of `step`; returns that checkpoint's trainer state."""
    shutil.copytree(run_dir, dest)
    for name in ("metrics.json", "model", "history.jsonl"):
        p = dest / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    keep = f"step-{step:08d}"
    for ck in (dest / "checkpoints").iterdir():
        if ck.name != keep:
            shutil.rmtree(ck)
    return json.loads((dest / "checkpoints" / keep / "trainer_state.json").read_text())
