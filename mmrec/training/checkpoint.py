"""Atomic checkpoints: everything is written into a temporary directory that is renamed into
place only when complete, so an interrupted save never leaves a directory a resume would load.

Layout under <run>/checkpoints/:  step-00000123/  (accelerate state + trainer_state.json)
The best model's weights live apart, in <run>/model/model.safetensors.

Faults (docs/data.md, "Bad input"):
- A save that fails (a full disk, a quota: `preprocessing.files.storage_errno`) removes its
  temporary directory and raises `StorageError` naming the checkpoint on every process; older
  checkpoints are pruned only after the new one is in place, so the previous one stays loadable.
- On resume, a checkpoint with a corrupt or truncated file (`check_checkpoint`) is skipped with a
  warning naming the file, and the newest intact one before it is loaded instead (each holds the
  whole state, so falling back loses only the steps since, which are then redone exactly). The
  bad one is left in place and replaced when training reaches its step again. If no checkpoint is
  intact, resuming stops with `CorruptFileError` naming the newest's bad file.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from preprocessing.files import CorruptFileError, StorageError, check_file, storage_failure

STEP_DIR = re.compile(r"^step-(\d+)$")
log = logging.getLogger("mmrec")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))
             and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


# ------------------------------------------------------------------------------------ checking

def check_checkpoint(ckpt: Path) -> tuple[Path, str] | None:
    """(first bad file, what is wrong) of a checkpoint directory, None if every file looks whole."""
    for path in sorted(p for p in Path(ckpt).rglob("*") if p.is_file()):
        problem = check_file(path)
        if problem:
            return path, problem
    return None


def load_checkpoint(accelerator, run_dir: Path) -> tuple[Path | None, dict | None]:
    """Load the newest intact checkpoint of a run into `accelerator` (model, optimizer, scheduler,
    RNG): (its directory, its trainer state), or (None, None) when the run has none. A corrupt
    one is skipped with a warning and the previous one loaded (module docstring); the main
    process decides, so every process loads the same one."""
    dirs = checkpoint_dirs(run_dir)
    pick, skipped = None, []
    if accelerator.is_main_process:
        for i in range(len(dirs) - 1, -1, -1):
            bad = check_checkpoint(dirs[i])
            if bad is None:
                pick = i
                break
            skipped.append((str(dirs[i]), str(bad[0]), bad[1]))
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        box = [(pick, skipped)]
        broadcast_object_list(box, from_process=0)
        pick, skipped = box[0]
    for ckpt, path, problem in skipped:
        log.warning("checkpoint %s is corrupt or truncated (%s: %s); skipping it%s", ckpt, path, problem,
                    "" if pick is None else f" and resuming from {dirs[pick].name}")
    if pick is None:
        if skipped:
            ckpt, path, problem = skipped[0]
            raise CorruptFileError(f"{path} is corrupt or truncated ({problem}); no intact checkpoint "
                                   f"to fall back to: delete {ckpt} to restart the run from the "
                                   f"beginning", filename=path)
        return None, None
    ckpt = dirs[pick]
    accelerator.load_state(str(ckpt))
    return ckpt, json.loads((ckpt / "trainer_state.json").read_text())


# ------------------------------------------------------------------------------------ saving

def fail_together(accelerator, error: BaseException | None, final: Path, tmp: Path | None,
                  hint: str = "") -> None:
    """After a write phase on some processes: if any failed, the main process removes `tmp` (if
    given) and every process raises (a StorageError naming `final` for a storage fault, else the
    error; processes that did not fail raise the failing one's message), so none waits forever
    for the others. A no-op when nothing failed."""
    failure = None if error is None else storage_failure(error, final, hint, where=tmp or final)
    note = None if error is None else (str(failure) if isinstance(failure, StorageError)
                                       else f"{type(error).__name__}: {error}")
    notes = [note]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        notes = gather_object([note])
    if not any(n is not None for n in notes):
        return
    if accelerator.is_main_process and tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is not None:
        if failure is error:
            raise error
        raise failure from error
    other = next(n for n in notes if n is not None)
    raise RuntimeError(f"{final}: failed on another process: {other}")


def save_checkpoint(accelerator, run_dir: Path, step: int, trainer_state: dict, keep: int) -> Path:
    """All processes call this (accelerate writes per-process RNG files). On a failure the
    temporary is removed and every process raises (StorageError for a full disk; module docstring)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    hint = (f"the previous checkpoint is intact: free some space, then `mmrec train --resume {run_dir}` "
            f"continues from it")
    error = None
    if accelerator.is_main_process:
        try:
            for stale in root.glob(".tmp-step-*") if root.is_dir() else []:   # a killed save's
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        except Exception as e:   # noqa: BLE001 - reported together below
            error = e
    fail_together(accelerator, error, final, tmp, hint)
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:   # noqa: BLE001
        error = e
    fail_together(accelerator, error, final, tmp, hint)
    if accelerator.is_main_process:
        try:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            replace_dir(tmp, final)   # the same step again (e.g. after a fallback): swapped, not deleted first
        except Exception as e:   # noqa: BLE001
            error = e
    fail_together(accelerator, error, final, tmp, hint)
    if accelerator.is_main_process:
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:   # only once the new one is in place
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished directory into place (the old one is removed after the swap). The trash
    name carries the pid, so processes replacing the same folder never share it."""
    trash = final.with_name(f".old-{final.name}.{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)
