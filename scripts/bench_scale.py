"""Benchmark: training throughput and peak memory per process, 1 process versus 2 processes (DDP)
and each DeepSpeed ZeRO stage, measured in one run on the same config.

Each setting is a real `mmrec train` launched as a user launches it (`python -m mmrec` or
`accelerate launch --config_file configs/accelerate/...`); the numbers are the `resources` the
trainer records in metrics.json (training loop only: no evaluation, no start-up). Every process
gets an equal share of the machine's cores (OMP_NUM_THREADS = cores / processes).

Usage:
  python scripts/bench_scale.py                                  # tiny config, 30 steps per setting
  python scripts/bench_scale.py --config configs/tiny_video_text.yaml --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [
    ("1 process", None, 1),
    ("2 processes, DDP (gloo)", "cpu_2proc.yaml", 2),
    ("2 processes, ZeRO-2", "deepspeed_zero2.yaml", 2),
    ("2 processes, ZeRO-2 + optimizer offload", "deepspeed_zero2_offload.yaml", 2),
    ("2 processes, ZeRO-3", "deepspeed_zero3.yaml", 2),
    ("2 processes, ZeRO-3 + optimizer offload", "deepspeed_zero3_offload.yaml", 2),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_setting(accel_cfg, procs, config, overrides, run_dir, cores):
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // procs)), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    train = ["-m", "mmrec", "train", "--config", config, f"run_dir={run_dir}", *overrides]
    if accel_cfg is None:
        cmd = [sys.executable, *train]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / accel_cfg), "--num_processes", str(procs),
               "--main_process_port", str(free_port()), "--mixed_precision", "no", *train]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return json.loads((Path(run_dir) / "metrics.json").read_text())["resources"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=30, help="training steps per setting")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    overrides = ["train.epochs=1", f"train.max_steps_per_epoch={a.steps}",
                 f"train.batch_size={a.batch_size}", "eval.baselines=[]", "train.progress=false",
                 "train.log_every_steps=1000", *a.overrides]
    print(f"config {a.config}, {a.steps} steps, batch {a.batch_size} per process, {a.cores} cores; "
          f"CPU only (gloo)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, accel_cfg, procs in SETTINGS:
            res = run_setting(accel_cfg, procs, a.config, overrides, Path(tmp) / f"r{len(rows)}", a.cores)
            rows.append((name, res))
            print(f"  measured: {name}", flush=True)
    base = rows[0][1]
    print()
    print("| setting | steps/s | samples/s | samples/s vs 1 process | peak RSS per process (MiB) | RSS vs 1 process |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        rss = r["peak_rss_mb_per_process"]
        print(f"| {name} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | "
              f"{' / '.join(f'{x:.0f}' for x in rss)} | {max(rss) / max(base['peak_rss_mb_per_process']):.2f}x |")


if __name__ == "__main__":
    main()
