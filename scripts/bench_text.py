"""Benchmark: training steps/s of a pretrained text tower with and without the frozen-bottom
cache (`encoders.text.cache_frozen`), measured in one run on the same config, seed and steps.

For each frozen depth (`--freeze`, default 4 and 5 of MiniLM's 6 layers; `all`: `freeze: true`,
nothing of BERT trains) the same config trains `--steps` steps twice in this process with mmrec's
Trainer, uncached then cached. steps/s is the trainer's own training-loop time
(`resources.train_seconds`: no start-up, no evaluation, no cache build); the one-time cache
build is printed on its own. With the cache a step still runs the unfrozen layers forward and
backward (a backward costs about two forwards), so the speed-up grows with the frozen depth:
with 4 of 6 layers frozen a step goes from about 6 + 2x2 layer-forwards of work to 2 + 2x2,
i.e. at most ~1.7x; with 5 frozen from 6 + 1x2 to 1 + 1x2, ~2.7x; only with everything frozen
(`all`) is a step left with the projection and the rest of the model.

"Equal metrics": the cold-validation NDCG@10 of both runs after those steps (not identical:
uncached, the frozen layers run MiniLM's 0.1 dropout in training; cached they run without), and
the max |difference| of the eval-mode vectors of every item for one set of weights (the cached
run's) through the cached and the uncached forward.

Usage:
  python scripts/bench_text.py                           # configs/ml100k_paper.yaml, 20 steps, freeze 4,5 (~10 min on 2 cores)
  python scripts/bench_text.py --steps 60 --freeze 4,5,all train.batch_size=64
  python scripts/bench_text.py --config configs/ml100k.yaml data.cache_dir=.mmrec_cache
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def train_once(config: str, overrides: list[str]) -> dict:
    from mmrec.config import load_config
    from mmrec.training.trainer import Trainer
    cfg = load_config(config, overrides)
    trainer = Trainer(cfg)
    caches = trainer.accelerator.unwrap_model(trainer.model).text_caches
    metrics = trainer.fit()
    return {"cfg": cfg, "prepared": trainer.prepared, "run_dir": trainer.run_dir, "caches": caches,
            "resources": metrics["resources"], "ndcg": metrics["val"]["ndcg@10"]}


def vector_difference(run: dict, batch_size: int) -> tuple[float, int]:
    """Max |cached - uncached| over the eval-mode vectors of every item, for the weights the
    cached run saved (the same model, the two forwards). Every item, not only the validation
    ones: batches padded shorter than the cache's longest text are where rounding can differ."""
    from safetensors.torch import load_file
    from mmrec.evaluation.ranking import encode_items
    from mmrec.models import build_model
    prepared = run["prepared"]
    model = build_model(run["cfg"], prepared)   # re-attaches the (reused) cache
    model.load_state_dict(load_file(str(Path(run["run_dir"]) / "model" / "model.safetensors")))
    model.eval()
    items = np.arange(prepared.split.n_items)
    cached = encode_items(model, prepared, items, batch_size)
    for name in run["caches"]:
        prepared.content[name].use_frozen_cache(None)
    plain = encode_items(model, prepared, items, batch_size)
    return float((cached - plain).abs().max()), len(items)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ml100k_paper.yaml")
    p.add_argument("--steps", type=int, default=20, help="training steps per setting")
    p.add_argument("--freeze", default="4,5", help="frozen depths (encoders.text.freeze_layers) to measure; "
                   "'all': encoders.text.freeze=true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every setting")
    a = p.parse_args()
    depths = [x.strip() for x in a.freeze.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh data cache unless one is given, so the cache build below is a real build
        has_cache_dir = any(o.startswith("data.cache_dir=") for o in a.overrides)
        base = ["train.epochs=1", f"train.max_steps_per_epoch={a.steps}", "eval.baselines=[]",
                "train.progress=false", "train.log_every_steps=1000", "train.checkpoint_every_steps=0",
                *([] if has_cache_dir else [f"data.cache_dir={tmp}/cache"]), *a.overrides]
        rows = []
        for depth in depths:
            runs = {}
            for cached in (False, True):
                tag = f"freeze{depth}-{'cached' if cached else 'plain'}"
                frozen = (["encoders.text.freeze=true"] if depth == "all" else
                          ["encoders.text.freeze=false", f"encoders.text.freeze_layers={int(depth)}"])
                runs[cached] = train_once(a.config, base + frozen + [
                    f"encoders.text.cache_frozen={str(cached).lower()}", f"run_dir={tmp}/{tag}"])
                print(f"  measured: freeze_layers={depth}, {'cached' if cached else 'uncached'}", flush=True)
            diff, n_items = vector_difference(runs[True], int(runs[True]["cfg"]["eval"]["item_batch_size"]))
            rows.append((depth, runs, diff, n_items))
    cfg = rows[0][1][False]["cfg"]
    enc = cfg["encoders"][cfg["fields"]["text"]["encoder"]]
    layers = enc["num_layers"]
    if not layers:
        from transformers import BertConfig
        from mmrec import assets
        layers = BertConfig.from_pretrained(assets.resolve_checkpoint(enc["checkpoint"])).num_hidden_layers
    print()
    print(f"config {a.config}: checkpoint {enc['checkpoint']} ({layers} layers), pooling {enc['pooling']}, "
          f"batch {cfg['train']['batch_size']}, {a.steps} steps per setting, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print()
    print("| freeze_layers | uncached steps/s | cached steps/s | speed-up | val NDCG@10 uncached | "
          "val NDCG@10 cached | max abs diff of item vectors (cached vs uncached forward) | cache build |")
    print("|---|---|---|---|---|---|---|---|")
    for depth, runs, diff, n_items in rows:
        plain, cached = runs[False], runs[True]
        sp, sc = plain["resources"]["steps_per_s"], cached["resources"]["steps_per_s"]
        info = next(iter(cached["caches"].values()))
        build = (f"{info['seconds']:.1f} s, {info['bytes'] / 2 ** 20:.0f} MiB" if info["built"]
                 else f"reused ({info['bytes'] / 2 ** 20:.0f} MiB)")
        print(f"| {depth} | {sp:.3f} | {sc:.3f} | {sc / sp:.2f}x | {plain['ndcg']:.4f} | {cached['ndcg']:.4f} | "
              f"{diff:.2e} ({n_items} items) | {build} |")


if __name__ == "__main__":
    main()
