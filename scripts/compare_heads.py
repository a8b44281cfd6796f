"""The MovieLens-100k cold-item table, one command: baselines, CLCRec trained to convergence, the
paper's end-to-end method, each piece of issue 16 added alone, and the default config.

Every row of a seed is trained on the same cold-item split (model seed = split seed = s; the
script stops if two runs of a seed saved different splits). Rows:

  random, kNN        the baselines in the default run's metrics.json (same split): random scores,
                     and cosine kNN of frozen mean-pooled MiniLM text to the user's training items
  clcrec             `configs/clcrec_ml100k.yaml` for 30 epochs, the best epoch by validation, with
                     the ablations' best lambda and eta (docs/results/clcrec.md)
  paper              `configs/ml100k_paper.yaml`: Eq. 1 alone, MiniLM's top 2 layers fine-tuned for
                     2 epochs at one learning rate (the default until issue 16)
  tower              the default's text tower and budget (frozen layers cached, separate learning
                     rates, its epochs) with Eq. 1 alone: the tower piece added alone
  tower + logQ | + mixed negatives | + distillation
                     one sampling/distillation piece added to that
  default            `configs/ml100k.yaml` as shipped

Each run is a process of its own in OUT/<cell>/seed-<s>/; a finished run is skipped and an
interrupted one resumes from its checkpoint, so re-running continues. The table (cold test, mean
± std over seeds, then every seed's value) is written to docs/results/ml100k_cold_items.md and
.csv (`--results`; the CSV has one line per row and metric: mean, std, n, each seed), and to stdout.
Collecting, the table and the files are mmrec.sweep's (collect, summarise, markdown_table,
csv_table, write_results), shared with the other drivers.

    python scripts/compare_heads.py --out runs/compare-ml100k --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmrec import sweep as runner
from mmrec.sweep import run_cell, same_split

DEFAULT_CFG = "configs/ml100k.yaml"
PAPER_CFG = "configs/ml100k_paper.yaml"
CLCREC_CFG = "configs/clcrec_ml100k.yaml"
PIECES_OFF = ["loss.logq_correction=false", "loss.mixed_negatives=0", "distill.id_embedding=false"]

# name, label, config, overrides
CELLS = [
    ("clcrec", "CLCRec, frozen MiniLM features (30 epochs, best by validation; λ 0.5, η 0.1)",
     CLCREC_CFG, ["train.epochs=30", "eval.every_epochs=1", "eval.baselines=[random]"]),
    ("paper", "mmrec, the paper's method (Eq. 1; MiniLM top 2 layers fine-tuned 2 epochs)", PAPER_CFG, []),
    ("tower", "mmrec, + text tower that trains enough (Eq. 1 alone)", DEFAULT_CFG, PIECES_OFF),
    ("tower+logq", "mmrec, tower + logQ correction", DEFAULT_CFG, PIECES_OFF + ["loss.logq_correction=true"]),
    ("tower+mixed", "mmrec, tower + mixed negatives", DEFAULT_CFG, PIECES_OFF + ["loss.mixed_negatives=128"]),
    ("tower+distill", "mmrec, tower + collaborative distillation", DEFAULT_CFG,
     PIECES_OFF + ["distill.id_embedding=true"]),
    ("default", "mmrec, the default config (configs/ml100k.yaml)", DEFAULT_CFG, []),
]
BASELINES = [("random", "Random"), ("knn_frozen_text", "Frozen MiniLM text, kNN (no training)")]
METRICS = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10"}


def collect(out: Path, seeds: list[int], cells: list[str]) -> dict[str, dict[int, dict]]:
    """row -> seed -> cold-test metrics, for the finished runs; the baselines are the default run's."""
    return runner.collect(out, cells, seeds, "test", baselines_from="default" if "default" in cells else None)


def rows(found: dict, seeds: list[int], labels: dict[str, str]) -> list[dict]:
    """One record per row (mmrec.sweep.summarise): mean, std, n and every seed's value, in %."""
    return runner.summarise(found, labels, seeds, METRICS)


def markdown(table: list[dict], seeds: list[int], command: str | None = None) -> str:
    lines = runner.markdown_table(table, seeds, METRICS, "Item representation", per_seed=["ndcg@10"])
    by = {r["row"]: r for r in table}
    notes = []
    def per_seed(row):
        r = by.get(row, {})
        return {s: r.get(f"ndcg@10_seed{s}") for s in seeds if r.get(f"ndcg@10_seed{s}") is not None}

    d, c, k = per_seed("default"), per_seed("clcrec"), per_seed("knn_frozen_text")
    for other, name in ((c, "CLCRec"), (k, "frozen-text kNN")):
        both = sorted(set(d) & set(other))   # a ratio only over the splits both rows ran on
        if both:
            ratio = np.mean([d[s] for s in both]) / np.mean([other[s] for s in both])
            wins = sum(d[s] > other[s] for s in both)
            notes.append(f"default / {name} NDCG@10: {ratio:.2f}x on the mean of the {len(both)} split(s) both "
                         f"ran on; the default is ahead on {wins} of them")
    t = by.get("tower", {}).get("ndcg@10_mean")
    for piece in ("tower+logq", "tower+mixed", "tower+distill"):
        p = by.get(piece, {}).get("ndcg@10_mean")
        if p is not None and t is not None:
            notes.append(f"{piece}: {p - t:+.2f} NDCG@10 points over tower")
    return (lines + "\n\nCold-item test metrics in %, mean ± std over seeds " + str(seeds)
            + " (seed = model seed = split seed); REAL MovieLens-100k ratings and text.\n\n"
            + "".join(f"- {n}\n" for n in notes) + (f"\nRegenerate: `{command}`\n" if command else ""))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare-ml100k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cells", default=",".join(c[0] for c in CELLS), help="comma-separated subset of the rows")
    ap.add_argument("--results", default="docs/results/ml100k_cold_items",
                    help="the table's path without extension (.md and .csv are written)")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: the table from the runs that finished (a row's `seeds` says how many)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. a smaller budget)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    chosen = [c for c in CELLS if c[0] in args.cells.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    for s in ([] if args.collect_only else args.seeds):
        dirs = []
        for name, _, config, overrides in chosen:
            run_dir = out / name / f"seed-{s}"
            ran = run_cell(config, overrides + list(args.overrides), {}, s, run_dir)
            print(f"{name} seed {s}: {'done' if ran else 'already finished'} ({run_dir})", flush=True)
            dirs.append(run_dir)
        same_split(dirs)
    if args.collect_only:   # the rows of a seed must still share its split
        for s in args.seeds:
            done = [out / c[0] / f"seed-{s}" for c in chosen if (out / c[0] / f"seed-{s}" / "metrics.json").exists()]
            if len(done) > 1:
                same_split(done)
    labels = {**dict(BASELINES), **{c[0]: c[1] for c in chosen}}
    table = rows(collect(out, args.seeds, [c[0] for c in chosen]), args.seeds, labels)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--collect-only"]
    command = shlex.join(["python", "scripts/compare_heads.py", *given])
    text = markdown(table, args.seeds)
    if args.collect_only:
        missing = [c[0] for c in chosen if any(not (out / c[0] / f"seed-{s}" / "metrics.json").exists()
                                               for s in args.seeds)]
        text += (f"\nCollected from the finished runs (`--collect-only`); not finished yet: "
                 f"{', '.join(missing) or 'none'} (the command resumes them).\n")
    md, _ = runner.write_results(args.results, "# MovieLens-100k cold items\n\n" + text,
                                 runner.csv_table(table, args.seeds, METRICS), command, "scripts/compare_heads.py")
    print(md.read_text())
    return text


if __name__ == "__main__":
    main()
