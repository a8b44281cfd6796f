"""The prepared GPU check: the paper-size video + text config on stand-in trailers, a few hundred
steps per setting, within about 8 minutes on one CUDA GPU.

Settings: bf16 with and without gradient checkpointing, and both frame-store formats (npy,
jpeg), with W DataLoader workers. For each it prints samples/s of the training step, peak GPU
memory, the loader's clips/s on its own, and whether the loader keeps up (its clips/s >= the
clips the step consumes per second). Every setting runs in this one process, so the figures are
comparable.

    python scripts/gpu_check.py                      # on a CUDA machine: the paper's sizes
    python scripts/gpu_check.py --steps 2            # without CUDA: the tiny config (the CI test)

Without CUDA it runs the same code on `configs/tiny_video_text.yaml` (no bf16: fp32) for the
given steps; tests/test_gpu_check.py runs that.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = [  # (name, mixed precision on CUDA, gradient checkpointing, store format)
    ("bf16", "bf16", False, "npy"),
    ("bf16+checkpointing", "bf16", True, "npy"),
    ("bf16, jpeg store", "bf16", False, "jpeg"),
]


def run_setting(config: str, overrides: list[str], precision: str, checkpointing: bool, store: str,
                steps: int, workers: int) -> dict:
    import torch
    from accelerate import Accelerator

    from mmrec.config import load_config
    from mmrec.models import head_class
    from mmrec.training.trainer import make_sampler, param_groups
    cfg = load_config(config, overrides + [f"train.gradient_checkpointing={str(checkpointing).lower()}",
                                           f"fields.trailer.store_format={store}", f"train.num_workers={workers}"])
    cuda = torch.cuda.is_available()
    acc = Accelerator(mixed_precision=precision if cuda else "no", cpu=not cuda)
    head = head_class(cfg["head"])
    prepared = head.load_data(cfg, None, acc)
    model = head.build(cfg, prepared)
    dataset, collate = model.train_data(prepared)
    tc = cfg["train"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(tc["batch_size"]),
                                         sampler=make_sampler(dataset, tc, int(cfg["seed"]), cfg["head"]),
                                         collate_fn=collate, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    opt = torch.optim.Adam(param_groups(model, tc), lr=float(tc["lr"]))
    model, opt, loader = acc.prepare(model, opt, loader)
    clips_per_batch = int(tc["batch_size"])

    def batches(n):
        it = iter(loader)
        for _ in range(n):
            try:
                yield next(it)
            except StopIteration:
                it = iter(loader)
                yield next(it)

    # the loader alone: clips/s it can deliver
    t = time.perf_counter()
    for _ in batches(steps):
        pass
    loader_s = time.perf_counter() - t
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    warm = min(2, steps)
    t, done = None, 0
    for i, batch in enumerate(batches(steps + warm)):
        if i == warm:
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
        with acc.autocast():
            loss = model(batch)["loss"]
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        done += i >= warm
    if cuda:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t
    samples_per_s = done * clips_per_batch / step_s
    loader_clips_per_s = steps * clips_per_batch / loader_s
    return {"samples_per_s": round(samples_per_s, 2), "loader_clips_per_s": round(loader_clips_per_s, 2),
            "loader_keeps_up": loader_clips_per_s >= samples_per_s, "steps": done,
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
            "loss": float(loss.detach())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per setting (default: 200 on CUDA, 2 without)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 8 on CUDA, 0 without)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--config", default=None, help="instead of the paper-size (CUDA) or tiny (CPU) config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    config = args.config or ("configs/ml100k_video_text_paper.yaml" if cuda else "configs/tiny_video_text.yaml")
    steps = args.steps or (200 if cuda else 2)
    workers = args.workers if args.workers is not None else (8 if cuda else 0)
    base = ["train.progress=false"] + list(args.overrides)
    device = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA: the tiny config, fp32)"
    print(f"gpu_check on {device}: {config}, {steps} steps per setting, {workers} DataLoader workers", flush=True)
    results = {}
    for name, precision, ckpt, store in SETTINGS:
        t = time.perf_counter()
        r = run_setting(config, base, precision, ckpt, store, steps, workers)
        r["seconds"] = round(time.perf_counter() - t, 1)
        results[name] = r
        print(f"  {name:22s} {r['samples_per_s']:9.1f} samples/s  peak GPU "
              f"{r['peak_gpu_mib'] if r['peak_gpu_mib'] is not None else '-':>8} MiB  loader "
              f"{r['loader_clips_per_s']:9.1f} clips/s  keeps up: {'yes' if r['loader_keeps_up'] else 'NO'}"
              f"  ({r['seconds']} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "config": config, "steps": steps,
                                               "workers": workers, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
