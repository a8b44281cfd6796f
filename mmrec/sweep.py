"""`mmrec sweep`: a base config x a grid of overrides x several seeds, resumable, summarised as a
Markdown table of mean ± std (like the paper's ablation tables).

Each (cell, seed) is one `mmrec train` run in its own process, in <out>/<cell>/seed-<s>/; a run
whose metrics.json exists is skipped, so an interrupted sweep resumes where it stopped: a cell
killed mid-training continues from its last checkpoint (`mmrec train --resume`, exact), one killed
before its first checkpoint is moved aside to <seed-s>.interrupted and started again; either way
the table equals an uninterrupted sweep's. On Linux the training process is killed with the sweep
(even by SIGKILL: PR_SET_PDEATHSIG), so a re-run never races an orphan on the same run directory.
A seed sets both the model seed and the split seed, so every cell is compared on the same splits;
the baselines stored by each run (random, frozen-text kNN) are reported on those same splits.

Grid file (YAML): either a mapping key -> list of values (the product is taken), or a list
`cells:` of {name: ..., set: {key: value, ...}} for hand-picked cells.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from mmrec.config import ConfigError, load_yaml, resolve_config_path
from preprocessing.files import write_text_atomic

DEFAULT_METRICS = ("ndcg@10", "recall@10", "precision@10")


def _fmt_value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def grid_cells(grid: dict | None) -> list[tuple[str, dict]]:
    """[(cell name, {dotted key: value})]; the empty grid is one cell named 'base'."""
    if not grid:
        return [("base", {})]
    if "cells" in grid:
        out = []
        for c in grid["cells"]:
            if "name" not in c:
                raise ConfigError(f"sweep grid: every cell needs a name ({c})")
            out.append((str(c["name"]), dict(c.get("set") or {})))
        return out
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"sweep grid: '{k}' must map to a non-empty list of values")
    cells = []
    for values in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in zip(keys, values))
        cells.append((name.replace("/", "_"), dict(zip(keys, values))))
    return cells


def _die_with_parent(parent: int):
    """preexec_fn (Linux): the child gets SIGKILL when the sweep dies, however it dies. The libc
    function is looked up here, in the parent; the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import signal
        prctl, sigkill = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGKILL)
    except (OSError, AttributeError):
        return None

    def arm():
        prctl(1, sigkill)            # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:   # the sweep died before the line above
            os._exit(1)
    return arm


def run_cell(config: str | None, overrides: list[str], cell: dict, seed: int, run_dir: Path,
             launcher: list[str] | None = None) -> bool:
    """Train one (cell, seed) unless it already finished. Returns True if it ran now."""
    if (run_dir / "metrics.json").exists():
        return False
    resume = (run_dir / "checkpoints").is_dir() and (run_dir / "config.yaml").exists()
    if not resume and (run_dir / "config.yaml").exists():
        # Started, but killed before its first checkpoint: nothing to resume. Move it aside, or
        # `mmrec train` would write the fresh run to <run_dir>-2, where the table never looks.
        stale = run_dir.with_name(run_dir.name + ".interrupted")
        if stale.exists():
            shutil.rmtree(stale)
        run_dir.rename(stale)
    cmd = (launcher or [sys.executable, "-m", "mmrec"]) + ["train"]
    if resume:
        cmd += ["--resume", str(run_dir)]
    else:
        if config:
            cmd += ["--config", str(config)]
        cmd += list(overrides) + [f"{k}={_fmt_value(v)}" for k, v in cell.items()]
        cmd += [f"seed={seed}", f"split.seed={seed}", f"run_dir={run_dir}", "train.progress=false"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"seed-{seed}.log", "a") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=os.environ.copy(),
                              preexec_fn=_die_with_parent(os.getpid()))
    if proc.returncode != 0:
        raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(cmd)}; "
                           f"see {run_dir.parent / f'seed-{seed}.log'}")
    return True



def same_split(dirs: list[Path]) -> None:
    """Every row of one seed must be scored on the same items and users: stop otherwise."""
    ref = np.load(dirs[0] / "split.npz", allow_pickle=True)
    for d in dirs[1:]:
        other = np.load(d / "split.npz", allow_pickle=True)
        for k in ref.files:
            if k in other.files and not np.array_equal(ref[k], other[k]):
                raise SystemExit(f"{d}: its split ('{k}') differs from {dirs[0]}'s; the rows would "
                                 "not be comparable")

def collect(out: Path, cells: list[tuple[str, dict]], seeds: list[int], part: str = "test") -> dict:
    """{row name: {metric: [values over seeds]}} for the cells and the stored baselines."""
    rows: dict[str, dict[str, list[float]]] = {}
    for name, _ in cells:
        for s in seeds:
            f = out / name / f"seed-{s}" / "metrics.json"
            if not f.exists():
                continue
            m = json.loads(f.read_text())
            for key, vals in (m.get(part) or {}).items():
                rows.setdefault(name, {}).setdefault(key, []).append(vals)
            for b, parts in (m.get("baselines") or {}).items():
                if part in parts and name == cells[0][0]:   # the same splits for every cell
                    for key, vals in parts[part].items():
                        rows.setdefault(f"baseline: {b}", {}).setdefault(key, []).append(vals)
    return rows


def markdown_table(rows: dict, metrics=DEFAULT_METRICS, scale: float = 100.0) -> str:
    head = "| run | seeds | " + " | ".join(metrics) + " |"
    sep = "|---|---|" + "---|" * len(metrics)
    lines = [head, sep]
    order = [r for r in rows if r.startswith("baseline: ")] + [r for r in rows if not r.startswith("baseline: ")]
    for r in order:
        vals = rows[r]
        n = len(next(iter(vals.values()))) if vals else 0
        cells = []
        for m in metrics:
            v = np.asarray(vals.get(m, []), dtype=float) * scale
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}" if len(v) else "-")
        lines.append(f"| {r} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep(config: str | None, out: str | Path, seeds: list[int], grid: dict | None = None,
          overrides: list[str] | None = None, metrics=DEFAULT_METRICS, part: str = "test",
          launcher: list[str] | None = None) -> str:
    out = Path(out)
    cells = grid_cells(grid)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.json", json.dumps({"config": config, "seeds": seeds, "grid": grid,
                                                      "overrides": overrides or []}, indent=1))
    total = len(cells) * len(seeds)
    done = 0
    for name, cell in cells:
        for s in seeds:
            ran = run_cell(config, overrides or [], cell, s, out / name / f"seed-{s}", launcher)
            done += 1
            print(f"[{done}/{total}] {name} seed {s}: {'done' if ran else 'already finished, skipped'}",
                  flush=True)
    table = markdown_table(collect(out, cells, seeds, part), metrics)
    note = (f"{part} metrics in %, mean ± std over seeds {seeds} (seed = model seed = split seed); "
            f"config {config}, overrides {overrides or []}")
    text = f"{table}\n\n{note}\n"
    write_text_atomic(out / "results.md", text)
    return text


def load_grid(path: str | None) -> dict | None:
    if not path:
        return None
    return load_yaml(resolve_config_path(path))
