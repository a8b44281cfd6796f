"""Do stand-in trailer features help CLCRec? MovieLens-100k, one command: random vs frozen-text kNN
vs CLCRec (frozen text features; frozen text + stand-in-trailer features) vs end-to-end mmrec.
(The main cold-item table, with CLCRec trained to convergence and the issue-16 ablation, is
scripts/compare_heads.py.)

For each seed s every row is trained on the same cold-item split (model seed = split seed = s;
checked: the script stops if two runs of a seed saved different splits):

  mmrec              `mmrec train --config configs/ml100k_paper.yaml`: end-to-end on REAL text (MiniLM,
                     fine-tuned). Its metrics.json also holds the random and frozen-MiniLM kNN
                     baselines computed on split s (the first two rows).
  clcrec-text        `configs/clcrec_ml100k.yaml`: CLCRec over frozen mean-pooled MiniLM features.
  trailer-encoder    `configs/ml100k_video.yaml`: end-to-end mmrec on the STAND-IN trailers only
                     (rendered from genres and year; not real trailers). Reported as its own row.
  trailer-features   `mmrec extract-features --run trailer-encoder/seed-s`: that run's frozen
                     trailer vectors (mean over segments). The encoder saw split s's training
                     interactions only, so the cold items' features carry no test information.
  clcrec-text+trailer  CLCRec over the frozen text features and those trailer features.

Each run is a process of its own in OUT/<cell>/seed-<s>/; a finished run (metrics.json) is
skipped and an interrupted one continues from its checkpoint, so re-running resumes.
`--reuse CELL=DIR` takes the runs of a cell from an earlier sweep (DIR/seed-<s>/) instead of
training them again; their resolved config must equal this command's (else an error names the
differing keys). The table (cold test, mean ± std over seeds) goes to OUT/table.md and stdout.

    python scripts/compare_trailer_features.py --out runs/compare-trailers --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mmrec import sweep as runner
from mmrec.config import flatten, load_config
from mmrec.sweep import run_cell, same_split
from preprocessing.files import write_text_atomic

TEXT_CFG = "configs/ml100k_paper.yaml"
CLCREC_CFG = "configs/clcrec_ml100k.yaml"
VIDEO_CFG = "configs/ml100k_video.yaml"
FEATURE = "run_trailer"          # the file `extract-features --run` writes for the field `trailer`

ROWS = [("random", "Random"),
        ("knn_frozen_text", "Frozen MiniLM text features, kNN (no training)"),
        ("clcrec-text", "CLCRec, frozen text features"),
        ("clcrec-text+trailer", "CLCRec, frozen text + stand-in-trailer features"),
        ("trailer-encoder", "mmrec end-to-end, stand-in trailers only"),
        ("mmrec", "mmrec end-to-end, text (MiniLM fine-tuned)")]
METRICS = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10"}


def trailer_field(feature_dir: Path) -> list[str]:
    spec = {"modality": "features", "source": "file", "path": str(feature_dir), "name": FEATURE}
    return [f"fields.trailer_feat={json.dumps(spec)}"]


def cells(out: Path, seed: int, overrides: list[str]) -> dict[str, tuple[str, list[str]]]:
    """cell -> (config, overrides) for one seed (the trailer features depend on the seed)."""
    return {"mmrec": (TEXT_CFG, overrides),
            "clcrec-text": (CLCREC_CFG, overrides),
            "trailer-encoder": (VIDEO_CFG, overrides),
            "clcrec-text+trailer": (CLCREC_CFG, overrides + trailer_field(
                (out / "trailer-features" / f"seed-{seed}").resolve()))}


def check_reused(run_dir: Path, config: str, overrides: list[str], seed: int) -> None:
    """A reused run must be the run this command would train (run_dir, progress and other heads'
    sections aside)."""
    want = flatten(load_config(config, overrides + [f"seed={seed}", f"split.seed={seed}"]))
    have = flatten(load_config(run_dir / "config.yaml"))
    skip = ("run_dir", "train.progress")
    other_heads = {"clcrec", "cmclrec", "sasrec"} - {want["head"]}   # sections this head never reads
    diff = sorted(k for k in set(want) | set(have) if k not in skip and k.split(".")[0] not in other_heads
                  and want.get(k) != have.get(k))
    if diff:
        raise SystemExit(f"--reuse: {run_dir} was trained with a different config; differing keys: "
                         + ", ".join(f"{k} ({have.get(k)!r} there, {want.get(k)!r} here)" for k in diff[:8]))


def extract(run_dir: Path, feature_dir: Path) -> None:
    if (feature_dir / f"{FEATURE}.npy").exists():
        return
    cmd = [sys.executable, "-m", "mmrec", "extract-features", "--config", str(run_dir / "config.yaml"),
           "--out", str(feature_dir), "--run", str(run_dir), "--run-fields", "trailer"]
    feature_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(feature_dir.parent / f"{feature_dir.name}.log", "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"feature extraction failed: {' '.join(cmd)}; see {log.name}")


def table(found: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    return runner.markdown_table(runner.summarise(found, ROWS, seeds, METRICS), seeds, METRICS,
                                 "Item representation")


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare-trailers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--reuse", action="append", default=[], metavar="CELL=DIR",
                    help="take CELL's runs from DIR/seed-<s>/ (e.g. mmrec=runs/sweep-ml100k-text/base)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. a smaller budget)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    unknown = set(reuse) - {"mmrec", "clcrec-text", "trailer-encoder"}
    if unknown:
        raise SystemExit(f"--reuse: {sorted(unknown)} (reusable cells: mmrec, clcrec-text, trailer-encoder)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(vars(args), indent=1))
    folders: dict[str, Path] = {}
    for s in args.seeds:
        dirs = {}
        for cell, (config, overrides) in cells(out, s, list(args.overrides)).items():
            run_dir = (Path(reuse[cell]) if cell in reuse else out / cell) / f"seed-{s}"
            if cell in reuse:
                check_reused(run_dir, config, overrides, s)
            if cell == "clcrec-text+trailer":
                extract(dirs["trailer-encoder"], out / "trailer-features" / f"seed-{s}")
            ran = run_cell(config, overrides, {}, s, run_dir)
            print(f"{cell} seed {s}: {'done' if ran else 'already finished'} ({run_dir})", flush=True)
            dirs[cell] = run_dir
            folders[cell] = run_dir.parent.absolute()     # a reused folder is not under OUT
        same_split(list(dirs.values()))
    # the baselines are the mmrec run's (every row of a seed has its split)
    found = runner.collect(out, folders, args.seeds, "test", baselines_from="mmrec")
    text = (table(found, args.seeds) + f"\n\ncold-item test metrics in %, mean ± std over seeds {args.seeds} "
            f"(seed = model seed = split seed); MovieLens-100k ratings and text are REAL, the trailers are "
            f"STAND-INS rendered from genres and year; overrides {args.overrides}\n")
    write_text_atomic(out / "table.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
