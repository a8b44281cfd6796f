"""Inference with S evenly spaced segments (score = max over segments, KDD'24 Eq. 4) versus a single
centre segment, on the SAME trained models: each run's best model is re-evaluated on its own
cold-test split with `fields.<field>.segments` set to each value.

Usage (after `mmrec sweep --config configs/world_motion.yaml --grid
configs/grids/world_motion_temporal.yaml --out runs/sweep-world-motion-v3 --seeds 0 1 2`):
  python scripts/compare_segments.py runs/sweep-world-motion-v3/vivit/seed-* --segments 6 1
A path that is not a run directory (no config.yaml in it: the sweep's seed-<s>.log files, which
that glob also matches) is skipped and named.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmrec.config import load_config
from mmrec.export import evaluate_run

METRICS = ("ndcg@10", "recall@10", "precision@10")


def video_field(run_dir: Path) -> str:
    cfg = load_config(run_dir / "config.yaml")
    names = [n for n, f in cfg["fields"].items() if f["modality"] == "video"]
    if not names:
        raise SystemExit(f"{run_dir}: the run has no video field")
    return names[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--segments", type=int, nargs="+", default=[6, 1])
    a = p.parse_args(argv)
    skipped = [r for r in a.runs if not (r / "config.yaml").is_file()]
    if skipped:
        print(f"skipped {len(skipped)} paths that are not run directories (no config.yaml): "
              + ", ".join(map(str, skipped)))
    a.runs = [r for r in a.runs if r not in skipped]
    if not a.runs:
        raise SystemExit("compare_segments: no run directory among the paths given")
    table: dict[int, dict[str, list[float]]] = {s: {m: [] for m in METRICS} for s in a.segments}
    for run in a.runs:
        field = video_field(run)
        for s in a.segments:
            res = evaluate_run(run, ("test",), [f"fields.{field}.segments={s}"])["test"]
            for m in METRICS:
                table[s][m].append(res[m])
    (a.runs[0].parent.parent / "segments.json").write_text(json.dumps(
        {"runs": [str(r) for r in a.runs], "test": {str(s): v for s, v in table.items()}}, indent=1))
    print("| inference | runs | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for s in a.segments:
        name = "centre segment (S=1)" if s == 1 else f"max over S={s} segments"
        cells = [f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.2f}"
                 for v in table[s].values()]
        print(f"| {name} | {len(a.runs)} | " + " | ".join(cells) + " |")
    print("\ncold-test metrics in %, mean ± std over the runs; the same trained models in every row")
    for s in a.segments:   # paired: the same model scored both ways, run by run
        print(f"S={s} ndcg@10 per run: " + ", ".join(f"{100 * v:.2f}" for v in table[s]["ndcg@10"]))


if __name__ == "__main__":
    main()
