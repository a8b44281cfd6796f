"""Paper-style ablation tables (KDD'24 Tables 4-8) from one command: several grids over one base
config, every cell x every seed, written as one Markdown file of mean ± std tables.

Each grid is a YAML file (`configs/grids/<name>.yaml`, or a path) in the format of `mmrec sweep
--grid`. A cell whose overrides are identical to a cell of an earlier table (e.g. the "video +
text" row of the modality table and the "late-2fc" row of the fusion table) is trained once and
shared. Runs live in <out>/runs/<cell>/seed-<s>/; re-running the same command resumes (finished
runs are skipped, interrupted ones continue from their checkpoint).

    python scripts/ablate.py --config configs/ml100k_fusion.yaml --tables modality fusion \
        --out runs/ablate-ml100k --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmrec.config import resolve_config_path
from mmrec.sweep import (
    DEFAULT_METRICS,
    baseline_rows,
    collect,
    grid_cells,
    load_grid,
    markdown_table,
    run_cell,
    summarise,
)
from preprocessing.files import write_text_atomic


def grid_path(name: str) -> str:
    p = Path(name)
    return str(p) if p.suffix in (".yaml", ".yml") else str(resolve_config_path(f"grids/{name}.yaml"))


def plan(tables: list[str], config: str, overrides: list[str]) -> tuple[dict[str, list[tuple[str, str]]], dict[str, dict]]:
    """table -> [(row name, run folder)], run folder -> overrides. Cells whose fully resolved
    configs are equal share a folder."""
    from mmrec.config import load_config
    from mmrec.sweep import _fmt_value
    folders: dict[str, dict] = {}
    by_key: dict[str, str] = {}
    out: dict[str, list[tuple[str, str]]] = {}
    for table in tables:
        rows = []
        for name, cell in grid_cells(load_grid(grid_path(table))):
            resolved = load_config(config, list(overrides) + [f"{k}={_fmt_value(v)}" for k, v in cell.items()])
            key = json.dumps(resolved, sort_keys=True, default=str)
            if key not in by_key:
                folder = name if name not in folders else f"{table}-{name}"
                by_key[key] = folder
                folders[folder] = cell
            rows.append((name, by_key[key]))
        out[table] = rows
    return out, folders


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--tables", nargs="+", required=True, help="grid names under configs/grids/, or YAML paths")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    ap.add_argument("--part", choices=["val", "test"], default="test")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tables, folders = plan(args.tables, args.config, args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablate.json").write_text(json.dumps({"config": args.config, "tables": args.tables,
                                                 "seeds": args.seeds, "overrides": args.overrides,
                                                 "runs": folders}, indent=1))
    total, done = len(folders) * len(args.seeds), 0
    for folder, cell in folders.items():
        for s in args.seeds:
            ran = run_cell(args.config, args.overrides, cell, s, out / "runs" / folder / f"seed-{s}")
            done += 1
            print(f"[{done}/{total}] {folder} seed {s}: {'done' if ran else 'already finished, skipped'}",
                  flush=True)
    metrics = tuple(args.metrics.split(","))
    parts = []
    for table, rows in tables.items():
        # the baselines of the table's first row's runs: every run of a seed has the same split
        found = collect(out / "runs", dict(rows), args.seeds, args.part, baselines_from=rows[0][0],
                        baseline_prefix="baseline: ")
        order = baseline_rows(found) + [name for name, _ in rows if name in found]
        summary = summarise(found, order, args.seeds, metrics)
        parts.append(f"### {table}\n\n{markdown_table(summary, args.seeds, metrics)}\n")
    note = (f"{args.part} metrics in %, mean ± std over seeds {args.seeds} (seed = model seed = split "
            f"seed); config {args.config}, overrides {args.overrides}")
    text = "\n".join(parts) + f"\n{note}\n"
    write_text_atomic(out / "tables.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
