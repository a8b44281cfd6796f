"""Launch every multi-process command many times and count the launches that do not exit 0.

A run that trains for hours and then exits non-zero breaks every scheduler built on it, so the
target is 0 failures. Each command runs under `accelerate launch` with 2 CPU processes (gloo),
alternating plain DDP (configs/accelerate/cpu_2proc.yaml) and DeepSpeed ZeRO-2
(configs/accelerate/deepspeed_zero2.yaml), on the real MovieLens-100k ratings at tiny sizes:

  train-mmrec  train-clcrec  train-cmclrec  train-sasrec  evaluate  export  extract-features  transfer
  preprocess (the tiny video + text config's stand-in trailers, a fresh frame store each launch)

    python scripts/soak_distributed.py --n 20                 # 20 launches of each command
    python scripts/soak_distributed.py --n 4 --commands evaluate,export --backends ddp

Set-up (one process, once, under --out): a tiny trained run (the source of evaluate, export and
transfer) and a 150-item table for export. Prints, per command and backend: launches, failures,
and the last lines of the first failure. Exit status 1 when any launch failed. Every launch also
counts as failed when its output holds "terminate called" or "core dumped", even with status 0.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
BACKENDS = {"ddp": ROOT / "configs/accelerate/cpu_2proc.yaml",
            "zero2": ROOT / "configs/accelerate/deepspeed_zero2.yaml"}
SHORT = ["train.epochs=1", "train.max_steps_per_epoch=3", "train.batch_size=32", "eval.baselines=[random]"]
SEQ = ["--config", "configs/cmclrec_ml100k.yaml", "sasrec.max_len=20", "sasrec.hidden=16",
       "cmclrec.latent_dim=8", "cmclrec.ae_hidden=32", "train.epochs=2", "cmclrec.pretrain_epochs=1",
       "train.max_steps_per_epoch=3", "train.batch_size=32", "eval.every_epochs=1",
       "eval.baselines=[random]"]
BAD_SIGNS = ("terminate called", "core dumped", "Segmentation fault")


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(out: Path, cache: str) -> dict:
    """name -> (argument list after `-m mmrec`, as a function of the launch's own folder)."""
    src, items = out / "source-run", out / "items.parquet"
    tiny = ["--config", "configs/tiny.yaml", f"data.cache_dir={cache}"]
    return {
        "train-mmrec": lambda d: ["train", *tiny, *SHORT, f"run_dir={d}"],
        "train-clcrec": lambda d: ["train", *tiny, *SHORT, "head=clcrec", "model.dim=16", "clcrec.hidden_dim=32",
                                   "clcrec.num_neg=8", "fields.text=null", "fields.g.modality=features",
                                   "fields.g.source=multihot", "fields.g.column=genres", f"run_dir={d}"],
        "train-cmclrec": lambda d: ["train", *SEQ, f"data.cache_dir={cache}", f"run_dir={d}"],
        "train-sasrec": lambda d: ["train", *SEQ, "head=sasrec", f"data.cache_dir={cache}", f"run_dir={d}"],
        "evaluate": lambda d: ["evaluate", str(src), "--split", "test"],
        "export": lambda d: ["export", str(src), "--items", str(items), "--out", str(d)],
        "extract-features": lambda d: ["extract-features", *tiny, "--out", str(d), "--multihot", "genres"],
        "transfer": lambda d: ["transfer", "--from", str(src), "--mode", "frozen", *tiny, *SHORT, f"run_dir={d}"],
        # its own cache each launch: the ranks decode their shares of the stand-in trailers and
        # rank 0 merges the frame store and writes --out
        "preprocess": lambda d: ["preprocess", "--config", "configs/tiny_video_text.yaml",
                                 f"data.cache_dir={d / 'cache'}", "--out", str(d / "out")],
    }


def set_up(out: Path, cache: str) -> None:
    src = out / "source-run"
    if not (src / "metrics.json").exists():
        r = subprocess.run([sys.executable, "-m", "mmrec", "train", "--config", "configs/tiny.yaml",
                            f"data.cache_dir={cache}", *SHORT, f"run_dir={src}"],
                           cwd=ROOT, env=env(), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"set-up run failed:\n{r.stderr[-3000:]}")
    items = out / "items.parquet"
    if not items.exists():
        sys.path.insert(0, str(ROOT))
        from mmrec.data.readers import read_ml100k
        read_ml100k({}).items.iloc[:150].to_parquet(items, index=False)


def launch(backend: str, args: list[str], timeout: float) -> tuple[int, str, float]:
    cmd = [ACCELERATE, "launch", "--config_file", str(BACKENDS[backend]), "--num_processes", "2",
           "--main_process_port", str(free_port()), "--mixed_precision", "no", "-m", "mmrec", *args]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"timed out after {timeout:g} s\n{(e.stdout or b'')[-2000:]}{(e.stderr or b'')[-4000:]}"
    return rc, text if isinstance(text, str) else text.decode(errors="replace"), time.perf_counter() - t


def last_lines(text: str, n: int = 15) -> str:
    """The ranks' own last lines: what comes before torchrun's closing error summary."""
    lines = text.strip().splitlines()
    cut = next((i for i, line in enumerate(lines) if line.startswith("=====") or "ChildFailedError" in line),
               len(lines))
    cut = cut if cut > 0 else len(lines)
    return "\n".join(lines[max(0, cut - n):cut])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="launches per command (spread over --backends)")
    ap.add_argument("--commands", default=",".join(commands(Path("."), "")),
                    help="comma-separated subset of the commands above")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--out", default="runs/soak", help="working folder (set-up run, per-launch outputs)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = str(out / "cache")
    set_up(out, cache)
    table = commands(out, cache)
    names = [c for c in args.commands.split(",") if c]
    unknown = [c for c in names if c not in table]
    if unknown:
        ap.error(f"unknown command(s) {unknown}; known: {list(table)}")
    t0 = time.time()
    stats = {(name, b): {"launches": 0, "failures": 0, "first": None, "seconds": 0.0}
             for name in names for b in args.backends}
    # Round by round over the commands, so that a soak stopped early has soaked each alike.
    for i in range(args.n):
        for name in names:
            backend = args.backends[i % len(args.backends)]
            d = out / "launches" / f"{name}-{backend}-{i:03d}"
            rc, text, secs = launch(backend, table[name](d), args.timeout)
            s = stats[(name, backend)]
            s["launches"] += 1
            s["seconds"] += secs
            bad = rc != 0 or any(sign in text for sign in BAD_SIGNS)
            if bad:
                s["failures"] += 1
                log = d.with_name(d.name + ".log")
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(text)
                s["first"] = s["first"] or f"exit {rc} (whole output: {log})\n" + last_lines(text)
            print(f"[{time.time() - t0:7.0f} s] {name:17s} {backend:5s} #{i + 1:3d}: "
                  f"{'FAIL exit ' + str(rc) if bad else 'ok'} ({secs:.1f} s)", flush=True)
    rows = [(name, b, s) for (name, b), s in stats.items()]
    print("\n| command | backend | launches | failures | mean s/launch |\n| --- | --- | --- | --- | --- |")
    for name, b, s in rows:
        mean = s["seconds"] / s["launches"] if s["launches"] else 0.0
        print(f"| {name} | {b} | {s['launches']} | {s['failures']} | {mean:.1f} |")
    total = sum(s["launches"] for _, _, s in rows)
    failed = sum(s["failures"] for _, _, s in rows)
    print(f"\n{total} launches, {failed} failures")
    for name, b, s in rows:
        if s["first"]:
            print(f"\n--- first failure of {name} ({b}) ---\n{s['first']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
