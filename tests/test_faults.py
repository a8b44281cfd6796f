"""Faults survived (docs/data.md, "Bad input"): SIGKILL during `export` and `sweep`, a full disk while
writing a checkpoint, the best model, an export or a frame-store item, two processes building the
same cache entry at once, and truncated checkpoints or models.

Faults are injected, never left to timing. Subprocesses run `mmrec` through DRIVER, which either
stops forever at a chosen write (the test waits for its flag file, then SIGKILLs it: the kill
lands mid-write every time) or makes a chosen write fail with ENOSPC after writing part of the
file, as a full disk does. In-process tests monkeypatch the write function instead.
"""
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from preprocessing.files import CorruptFileError, StorageError, storage_failure

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["train.epochs=2", "train.max_steps_per_epoch=8", "train.checkpoint_every_steps=2",
         "train.keep_checkpoints=2"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

DRIVER = r'''
"""`python driver.py ARGS` = `mmrec ARGS` with one injected fault, chosen by the environment:
FAULT_PAUSE=<file name>: a write of a file of that name touches FAULT_FLAG and sleeps (until killed);
FAULT_ENOSPC=<text>: a write to a path containing it writes part of the file, then fails with ENOSPC."""
import errno, os, sys, time
import numpy, torch, safetensors.torch, accelerate.utils.other as accelerate_other

PAUSE, FLAG, ENOSPC = os.environ.get("FAULT_PAUSE"), os.environ.get("FAULT_FLAG"), os.environ.get("FAULT_ENOSPC")


def fault(target):
    path = str(target if isinstance(target, (str, os.PathLike)) else getattr(target, "name", ""))
    if PAUSE and os.path.basename(path) == PAUSE:
        open(FLAG, "w").close()
        time.sleep(3600)
    if ENOSPC and ENOSPC in path:
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04" + bytes(4096))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


real_np, real_torch, real_st = numpy.save, torch.save, safetensors.torch.save_file
numpy.save = lambda file, arr, *a, **k: (fault(file), real_np(file, arr, *a, **k))[1]
torch.save = lambda obj, f, *a, **k: (fault(f), real_torch(obj, f, *a, **k))[1]
safetensors.torch.save_file = accelerate_other.safe_save_file = \
    lambda tensors, filename, *a, **k: (fault(filename), real_st(tensors, filename, *a, **k))[1]

from mmrec.cli import main
sys.exit(main(sys.argv[1:]))
'''


# ------------------------------------------------------------------------------------ helpers

def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def cmd(*args, driver=None):
    return [sys.executable, str(driver), *args] if driver else [sys.executable, "-m", "mmrec", *args]


def run(command, check=True, **extra_env):
    r = subprocess.run(command, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, f"{' '.join(command)}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def start(command, **extra_env):
    return subprocess.Popen(command, cwd=ROOT, env=env(**extra_env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the process exited (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")   # a zombie no one has reaped yet runs nothing


def train_args(run_dir, cache_dir):
    """What `mmrec sweep` runs for the one cell of `sweep_args` (seed 0)."""
    return ["train", "--config", "configs/tiny.yaml", f"data.cache_dir={cache_dir}", *TRAIN,
            "seed=0", "split.seed=0", f"run_dir={run_dir}", "train.progress=false"]


def sweep_args(out, cache_dir):
    return ["sweep", "--config", "configs/tiny.yaml", f"data.cache_dir={cache_dir}", *TRAIN,
            "--out", str(out), "--seeds", "0"]


def assert_same_metrics(a_dir: Path, b_dir: Path) -> None:
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (a_dir, b_dir))
    for key in ("val", "test", "best_epoch", "baselines"):
        assert b[key] == a[key], key
    assert [(h["step"], h.get("val"), h.get("train")) for h in b["history"]] == \
        [(h["step"], h.get("val"), h.get("train")) for h in a["history"]]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


class FakeAccelerator:
    is_main_process, num_processes = True, 1

    def __init__(self, weights=None):
        self.weights, self.loaded = weights, []

    def get_state_dict(self, model):
        return self.weights

    def wait_for_everyone(self):
        pass

    def load_state(self, path):
        self.loaded.append(path)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


def sweep_in_process(out, cache_dir):
    """What `mmrec <sweep_args>` does (each cell's training still runs in its own process)."""
    from mmrec.sweep import sweep
    return sweep("configs/tiny.yaml", str(out), [0], None, [f"data.cache_dir={cache_dir}", *TRAIN])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """An uninterrupted one-cell sweep of the tiny config (its run: reference/base/seed-0): the
    cell's training as the sweep runs it, then the sweep itself, which finds it finished and
    writes the table."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    run(cmd(*train_args(out / "base" / "seed-0", cache_dir)))
    sweep_in_process(out, cache_dir)
    return out


@pytest.fixture(scope="module")
def items_file(tmp_path_factory):
    from mmrec.data.readers import read_ml100k
    path = tmp_path_factory.mktemp("items") / "items.parquet"
    read_ml100k({}).items.iloc[:150].to_parquet(path, index=False)
    return path


def export_one_thread(run_dir, items, out):
    """`mmrec export RUN --items ITEMS --out OUT --top-k 3 --users 1,2` in this process, on one
    thread like the subprocesses (OMP_NUM_THREADS=1), so the floats match theirs bit for bit."""
    import torch
    from mmrec.export import export
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export(str(run_dir), str(items), str(out), users=["1", "2"], top_k=3)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_export(trained_run, tmp_path_factory, items_file):
    return export_one_thread(trained_run[0], items_file, tmp_path_factory.mktemp("export") / "whole")


# ------------------------------------------------------------------------------ 1. SIGKILL

@pytest.mark.slow
@linux_only
def test_sigkill_during_sweep_training_then_rerun_gives_the_same_table(tmp_path, cache_dir, reference,
                                                                       monkeypatch):
    out = tmp_path / "sweep"
    cell = out / "base" / "seed-0"
    proc = start(cmd(*sweep_args(out, cache_dir)))
    mid = cell / "checkpoints" / "step-00000004"          # epoch 1 of 2 is 8 steps
    wait_for(mid.exists, proc, "the cell's step-4 checkpoint")
    trainers = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert trainers, "the sweep had no training process"
    deadline = time.time() + 60                            # the training dies with the sweep
    while not all(gone(p) for p in trainers):
        assert time.time() < deadline, "the sweep's training process outlived it"
        time.sleep(0.05)
    assert not (cell / "metrics.json").exists() and not (out / "results.md").exists()

    monkeypatch.chdir(ROOT)                                # the same command again
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep_in_process(out, cache_dir)
    assert "resumed from step-" in (cell / "train.log").read_text()
    assert (out / "results.md").read_bytes() == (reference / "results.md").read_bytes()
    assert_same_metrics(reference / "base" / "seed-0", cell)


@pytest.mark.slow
def test_sigkill_during_export_then_rerun_gives_the_same_files(trained_run, tmp_path, driver, items_file,
                                                              reference_export):
    run_dir, _ = trained_run
    args = ["export", str(run_dir), "--items", str(items_file), "--top-k", "3", "--users", "1,2"]
    out, flag = tmp_path / "killed", tmp_path / "paused"
    proc = start(cmd(*args, "--out", str(out), driver=driver),
                 FAULT_PAUSE="user_embeddings.npy", FAULT_FLAG=str(flag))
    wait_for(flag.exists, proc, "the export's write of user_embeddings.npy")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()                                # no half folder under the real name
    [tmp] = tmp_path.glob(".killed.*.tmp")
    assert (tmp / "item_embeddings.npy").exists()          # killed in the middle of writing

    export_one_thread(run_dir, items_file, out)            # the same command again
    assert not list(tmp_path.glob(".killed.*"))            # the dead export's temporary is gone
    assert files(out) == files(reference_export)           # npy, txt, parquet, json: byte for byte


# ------------------------------------------------------------------------------ 2. full disk

@pytest.fixture(scope="module")
def full_disk_run(tmp_path_factory, cache_dir, driver):
    """The reference cell's run, whose disk fills while it writes the step-6 checkpoint."""
    run_dir = tmp_path_factory.mktemp("full_disk") / "run"
    r = run(cmd(*train_args(run_dir, cache_dir), driver=driver), check=False,
            FAULT_ENOSPC=".tmp-step-00000006/optimizer.bin")
    return run_dir, r


@pytest.mark.slow
def test_full_disk_while_checkpointing_then_resume_matches_uninterrupted(full_disk_run, reference, tmp_path):
    from mmrec.training.checkpoint import check_checkpoint
    src, r = full_disk_run
    assert r.returncode == 2, r.stderr[-4000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mmrec: error: no space left on device writing {src}/checkpoints/step-00000006 ")
    assert f"`mmrec train --resume {src}`" in last
    checkpoints = src / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004"]   # no temporary
    assert check_checkpoint(checkpoints / "step-00000004") is None

    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    run(cmd("train", "--resume", str(run_dir)))
    assert "resumed from step-00000004" in (run_dir / "train.log").read_text()
    assert_same_metrics(reference / "base" / "seed-0", run_dir)


def test_full_disk_writing_the_best_model_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch
    import torch
    from mmrec.runs import best_weights
    from mmrec.training.trainer import Trainer
    trainer = SimpleNamespace(accelerator=FakeAccelerator({"w": torch.ones(3)}), run_dir=tmp_path, model=None,
                              state={"best_epoch": 1, "step": 8, "val": {"ndcg@10": 0.5}})
    Trainer.save_best_model(trainer)
    before = files(tmp_path / "model")

    def full_disk(tensors, filename, *a, **k):   # what safetensors raises when the disk fills
        Path(filename).write_bytes(bytes(100))
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    trainer.accelerator.weights = {"w": torch.zeros(3)}
    with pytest.raises(StorageError) as e:
        Trainer.save_best_model(trainer)
    target = tmp_path / "model" / "model.safetensors"
    assert str(e.value).startswith(f"no space left on device writing {target} ")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert f"`mmrec train --resume {tmp_path}`" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]        # .tmp-model removed
    assert files(tmp_path / "model") == before
    assert torch.equal(best_weights(tmp_path)["w"], torch.ones(3))


def test_full_disk_during_export_keeps_the_previous_export(trained_run, tmp_path, items_file, reference_export,
                                                           monkeypatch):
    from mmrec.export import export
    run_dir, _ = trained_run
    out = tmp_path / "out"
    shutil.copytree(reference_export, out)                 # an earlier export there
    before = files(out)
    real = np.save

    def full_disk(file, arr, *a, **k):
        if Path(file).name == "user_embeddings.npy":
            Path(file).write_bytes(b"\x93NUMPY" + bytes(64))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(StorageError) as e:
        export(run_dir, items_file, out)
    assert str(e.value).startswith(f"no space left on device writing {out / 'user_embeddings.npy'} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]          # its temporary removed
    assert files(out) == before


def _trailer(path: Path, seed: int) -> str:
    from mmrec.synthetic.render import render_trailer
    render_trailer({"colour": "red", "shape": "square", "texture": "solid", "direction": "right",
                    "speed": "fast"}, path, seed=seed, size=20, scenes=2, informative=1,
                   frames_per_scene=4, fps=4)
    return str(path)


def test_full_disk_writing_a_frame_store_item(tmp_path, monkeypatch):
    from preprocessing.frame_store import FrameStore, build_frame_store, item_file
    entries = [("a", _trailer(tmp_path / "a.mp4", 0)), ("b", _trailer(tmp_path / "b.mp4", 1))]
    root = tmp_path / "store"
    real, bad = np.save, Path(item_file("b")).name

    def full_disk(file, arr, *a, **k):
        if Path(getattr(file, "name", "")).name.startswith(bad):
            file.write(b"\x93NUMPY" + bytes(64))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(StorageError) as e:
        build_frame_store(entries, root, fps=4, size=20, workers=1, progress=False)
    assert str(e.value).startswith(f"no space left on device writing {root / item_file('b')} ")
    assert sorted(p.name for p in root.rglob("*.npy*")) == [Path(item_file("a")).name]   # no temporary
    monkeypatch.setattr(np, "save", real)
    report = build_frame_store(entries, root, fps=4, size=20, workers=1, progress=False)
    assert (report["already_done"], report["stored"]) == (1, 1)
    assert FrameStore(root).num_frames("b") > 0


@pytest.mark.parametrize("error, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),               # Python, pyarrow
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (OSError("1000000 requested and 131056 written"), errno.EIO),                   # numpy
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), errno.EIO),  # torch
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (ZeroDivisionError("division by zero"), None),                                  # a bug: re-raised as is
])
def test_what_a_full_disk_looks_like_from_each_library(tmp_path, error, code):
    failure = storage_failure(error, tmp_path / "x.bin", "a hint")
    if code is None:
        assert failure is error
    else:
        assert isinstance(failure, StorageError) and failure.errno == code
        assert "writ" in str(failure) and str(tmp_path / "x.bin") in str(failure)
        assert str(failure).endswith("; a hint")
        assert "\n" not in str(failure)
        import pickle
        assert str(pickle.loads(pickle.dumps(failure))) == str(failure)    # crosses worker processes


# ------------------------------------------------------------------ 3. concurrent cache builds

WORLD = {"n_items": 8, "n_users": 12, "ratings_per_user": [3, 6], "stills": 1,
         "trailer": {"size": 20, "scenes": 2, "informative": 1, "frames_per_scene": 4, "fps": 4}}


def _h(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else str(a).encode())
    return h.hexdigest()


def build_caches(root, barrier=None) -> dict:
    """Every shared cache writer on one cache folder, each step started together with the other
    process (barrier): the synthetic world, its frame store, a token cache entry, frozen text
    features. Returns digests of what this process got back."""
    import pandas as pd
    import torch
    from mmrec import assets
    from mmrec.synthetic.world import generate_world, load_oracle
    from mmrec.features import frozen_text_features
    from preprocessing.frame_store import FrameStore, build_frame_store
    from preprocessing.text import cached_tokenize
    torch.set_num_threads(1)
    sync = (lambda: barrier.wait(300)) if barrier is not None else (lambda: None)
    root = Path(root)
    sync()
    world = generate_world(WORLD, root / "world", workers=1, progress=False)
    items = pd.read_parquet(world / "items.parquet")
    sync()
    entries = [(i, str(world / t)) for i, t in zip(items["item_id"], items["trailer"])]
    build_frame_store(entries, root / "frames", fps=4, size=20, workers=1, progress=False)
    store = FrameStore(root / "frames")
    sync()
    ckpt = assets.resolve_checkpoint("minilm")
    tokens = cached_tokenize(items["synopsis"].tolist(), ckpt, 16, root)
    sync()
    x, present = frozen_text_features(items, "{synopsis}", "minilm", max_length=24, cache_dir=root,
                                      field="synopsis")
    return {"items": _h(items.to_json()), "oracle": _h(*load_oracle(world)),
            "frames": _h(*[store.read(i, 0, store.num_frames(i)) for i, _ in entries]),
            "tokens": _h(tokens.ids, tokens.offsets), "features": _h(x, present)}


def _build_in_child(root, barrier, result):
    Path(result).write_text(json.dumps(build_caches(root, barrier)))


def tree_digest(root: Path) -> dict:
    """Every file under a cache folder (no temporary may be left), by content; the few that
    record timings or counts of this build are left out."""
    import pandas as pd
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        assert ".tmp" not in rel and ".old-" not in rel, f"temporary left behind: {rel}"
        if p.is_dir() or rel in ("world/world.json", "frames/report.json", "frames/.index.lock"):
            continue
        if p.suffix == ".npz":
            with np.load(p) as z:
                out[rel] = _h(*[z[k] for k in sorted(z.files)])
        elif p.suffix == ".parquet":
            out[rel] = _h(pd.read_parquet(p).to_json())
        elif p.suffix == ".json":
            out[rel] = _h(json.dumps(json.loads(p.read_text()), sort_keys=True))
        else:
            out[rel] = _h(p.read_bytes())
    return out


@pytest.mark.slow
def test_two_processes_building_the_same_cache_entries_at_once(tmp_path):
    import multiprocessing
    import torch
    threads = torch.get_num_threads()
    try:
        alone = build_caches(tmp_path / "alone")
    finally:
        torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    shared = tmp_path / "shared"
    results = [tmp_path / f"result-{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_build_in_child, args=(shared, barrier, r)) for r in results]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [json.loads(r.read_text()) for r in results] == [alone, alone]
    assert tree_digest(shared) == tree_digest(tmp_path / "alone")


def test_a_frame_store_build_keeps_the_temporaries_of_a_build_running_alongside(tmp_path):
    from preprocessing.frame_store import build_frame_store
    entries = [("a", _trailer(tmp_path / "a.mp4", 0))]
    root = tmp_path / "store"
    build_frame_store(entries, root, fps=4, size=20, workers=1, progress=False)
    finished = subprocess.Popen(["true"])
    finished.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        folder = root / "frames" / "00"
        folder.mkdir(parents=True, exist_ok=True)
        theirs = folder / f"x.npy.{alive.pid}.tmp"
        stale = folder / f"y.npy.{finished.pid}.tmp"
        for p in (theirs, stale):
            p.write_bytes(b"\x93NUMPY half written")
        build_frame_store(entries, root, fps=4, size=20, workers=1, progress=False)
        assert theirs.exists() and not stale.exists()
    finally:
        alive.kill()
        alive.wait()


# ----------------------------------------------------------------- 4. corrupt checkpoints

def test_resume_falls_back_past_a_truncated_checkpoint(full_disk_run, tmp_path):
    from mmrec.training.checkpoint import load_checkpoint
    src, _ = full_disk_run
    shutil.copytree(src / "checkpoints", tmp_path / "checkpoints")
    bad = tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"
    truncate(bad)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("mmrec").addHandler(handler)
    try:
        acc = FakeAccelerator()
        ckpt, state = load_checkpoint(acc, tmp_path)
    finally:
        logging.getLogger("mmrec").removeHandler(handler)
    assert ckpt.name == "step-00000002" and acc.loaded == [str(ckpt)] and state["step"] == 2
    [warning] = [r.getMessage() for r in records]
    assert str(bad) in warning and "resuming from step-00000002" in warning


def test_resume_with_no_intact_checkpoint_is_a_one_line_error(full_disk_run, tmp_path, capsys):
    from mmrec.cli import main
    src, _ = full_disk_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    bad = run_dir / "checkpoints" / "step-00000004" / "optimizer.bin"
    truncate(bad)
    assert main(["train", "--resume", str(run_dir)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mmrec: error: {bad} is corrupt or truncated (")
    assert last.endswith(f"no intact checkpoint to fall back to: delete {bad.parent} to restart the run "
                         f"from the beginning")


def test_evaluate_with_a_truncated_model_is_a_one_line_error(trained_run, tmp_path, capsys):
    from mmrec.cli import main
    src, _ = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    weights = run_dir / "model" / "model.safetensors"
    truncate(weights)
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"mmrec: error: {weights} is corrupt or truncated (")
    with pytest.raises(CorruptFileError):
        from mmrec.runs import best_weights
        best_weights(run_dir)
