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

The runner shared by `mmrec sweep` and the experiment drivers under scripts/ (compare_heads,
transfer_table, compare_trailer_features, ablate):

  run_cell(config, overrides, cell, seed, run_dir, launcher, command)   one run of any subcommand
  same_split(run dirs)                       stop unless the runs of a seed share their split
  collect(out, rows, seeds, part, baselines_from, baselines, baseline_prefix)
                                             {row: {seed: metrics}} from the finished runs
  summarise(found, rows, seeds, metrics)     per-row mean, std (ddof=1), n, each seed's value, in %
  markdown_table(summary, seeds, metrics, title, per_seed) / csv_table(summary, seeds, metrics)
  write_results(stem, markdown, csv, command)   docs/results/<stem>.md and .csv, atomically
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
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
             launcher: list[str] | None = None, command: list[str] | tuple[str, ...] = ("train",),
             model_seed: int | None = None) -> bool:
    """Run one (cell, seed) as `mmrec <command> --config CONFIG OVERRIDES CELL seed=S split.seed=S
    run_dir=RUN_DIR train.progress=false` unless it already finished. Returns True if it ran now.
    `model_seed`: another model seed on split S (`seed=M split.seed=S`).

    `command`: the subcommand and its own arguments, e.g. ("train",) or ("transfer", "--from", A,
    "--mode", "frozen"). A finished run (metrics.json) is skipped; an interrupted one (config.yaml
    and checkpoints/) continues with `mmrec train --resume RUN_DIR`, whatever started it (a
    transfer run's saved config holds the transfer); one started but killed before its first
    checkpoint is moved aside to <run_dir>.interrupted and started again. The output goes to
    <run_dir>.log, beside it (appended; each command is written first); the child dies with this
    process; a failure raises RuntimeError naming the log."""
    run_dir = Path(run_dir)
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
    cmd = list(launcher or [sys.executable, "-m", "mmrec"])
    if resume:
        cmd += ["train", "--resume", str(run_dir)]
    else:
        cmd += list(command)
        if config:
            cmd += ["--config", str(config)]
        cmd += list(overrides) + [f"{k}={_fmt_value(v)}" for k, v in cell.items()]
        cmd += [f"seed={seed if model_seed is None else model_seed}", f"split.seed={seed}",
                f"run_dir={run_dir}", "train.progress=false"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "a") as logf:
        logf.write(f"$ {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=os.environ.copy(),
                              preexec_fn=_die_with_parent(os.getpid()), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(cmd)}; see {log}")
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


# ---- results: collect the finished runs, summarise over seeds, write tables -----------------------

def _pairs(items) -> dict:
    """A mapping, a list of (key, value) pairs or a list of keys (value = key) -> {key: value}."""
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    out = {}
    for x in items:
        k, v = (x, x) if isinstance(x, str) else x
        out[str(k)] = v
    return out


def collect(out: str | Path, rows, seeds: list[int], part: str = "test",
            baselines_from: str | None = None, baselines=None,
            baseline_prefix: str = "") -> dict[str, dict[int, dict]]:
    """{row: {seed: metric dict}} from the finished runs: `part` ('test', 'val') of
    <folder>/seed-<s>/metrics.json for each row, and of the baselines stored in `baselines_from`'s
    metrics.json (a row, or a folder under `out`) for the same seed, named baseline_prefix + name.

    rows: row names (folder = out/<row>) or {row: folder}; a relative folder is under `out`, an
    absolute one is taken as it is (a reused sweep's runs). Rows computed in-process (e.g. kNN over
    a trained tower) are rows like any other once they wrote their metrics.json. baselines: the
    stored baselines to keep (None: all); a skipped baseline (no `part`) is left out. Missing runs
    (or runs without `part`) are left out: a row with no finished seed is absent."""
    out = Path(out)
    folders = {r: out / f for r, f in _pairs(rows).items()}
    keep = None if baselines is None else set(baselines)
    found: dict[str, dict[int, dict]] = {}
    for s in seeds:
        for row, folder in folders.items():
            f = folder / f"seed-{s}" / "metrics.json"
            m = json.loads(f.read_text()).get(part) if f.exists() else None
            if m is not None:
                found.setdefault(row, {})[s] = m
        if baselines_from is not None:
            f = folders.get(baselines_from, out / baselines_from) / f"seed-{s}" / "metrics.json"
            stored = (json.loads(f.read_text()).get("baselines") or {}) if f.exists() else {}
            for b, parts in stored.items():
                if (keep is None or b in keep) and isinstance(parts, dict) and part in parts:
                    found.setdefault(baseline_prefix + b, {})[s] = parts[part]
    return found


def summarise(found: dict[str, dict[int, dict]], rows, seeds: list[int], metrics=DEFAULT_METRICS,
              scale: float = 100.0) -> list[dict]:
    """One record per row, in the order of `rows` ([(key, label)], {key: label} or [key]):
    {"row", "label", "seeds": the number of seeds found, and per metric m "m_mean", "m_std"
    (ddof=1; None with fewer than 2 values), "m_n", "m_seed<s>" for each seed (None if missing)},
    every value times `scale` (100: in %). A row absent from `found` gets n 0 and None values."""
    out = []
    for key, label in _pairs(rows).items():
        per_seed = found.get(key, {})
        rec = {"row": key, "label": label, "seeds": sum(1 for s in seeds if s in per_seed)}
        for m in _pairs(metrics):
            by_seed = {s: float(per_seed[s][m]) * scale for s in seeds
                       if s in per_seed and per_seed[s].get(m) is not None}
            v = np.array(list(by_seed.values()), dtype=float)
            rec[f"{m}_mean"] = float(v.mean()) if len(v) else None
            rec[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
            rec[f"{m}_n"] = len(v)
            for s in seeds:
                rec[f"{m}_seed{s}"] = by_seed.get(s)
        out.append(rec)
    return out


def _mean_std(rec: dict, m: str) -> str:
    mean, std = rec.get(f"{m}_mean"), rec.get(f"{m}_std")
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(summary: list[dict], seeds: list[int], metrics=DEFAULT_METRICS, title: str = "run",
                   per_seed=()) -> str:
    """`summarise`'s records as a Markdown table: | title | seeds | each metric's mean ± std
    (a single seed: the value alone; none: -) | then, for each metric in `per_seed`, one column
    per seed ("<header> s<seed>") |. metrics: keys, or {key: column header}."""
    heads = _pairs(metrics)
    per = _pairs(per_seed)
    per = {m: heads.get(m, h) for m, h in per.items()}
    cols = [title, "seeds", *heads.values(), *(f"{h} s{s}" for h in per.values() for s in seeds)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary:
        vals = [r["label"], str(r["seeds"]), *(_mean_std(r, m) for m in heads)]
        vals += ["-" if r.get(f"{m}_seed{s}") is None else f"{r[f'{m}_seed{s}']:.2f}"
                 for m in per for s in seeds]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def csv_table(summary: list[dict], seeds: list[int], metrics=DEFAULT_METRICS) -> str:
    """`summarise`'s records as CSV, one line per row and metric: row, label, metric, mean, std,
    n, then one column per seed (seed<s>); values as in the records (scaled), full precision, empty
    where there is none."""
    def cell(v):
        return "" if v is None else repr(float(v)) if isinstance(v, float) else v
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "label", "metric", "mean", "std", "n", *(f"seed{s}" for s in seeds)])
    for r in summary:
        for m in _pairs(metrics):
            w.writerow([r["row"], r["label"], m, cell(r.get(f"{m}_mean")), cell(r.get(f"{m}_std")),
                        r.get(f"{m}_n", 0), *(cell(r.get(f"{m}_seed{s}")) for s in seeds)])
    return buf.getvalue()


RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "results"


def _script_of(command: str) -> str:
    """'OMP_NUM_THREADS=1 python scripts/x.py --out o' -> 'scripts/x.py'; 'mmrec sweep ...' ->
    'mmrec sweep'."""
    try:
        words = shlex.split(command)
    except ValueError:   # unbalanced quotes
        words = command.split()
    while words and ("=" in words[0] and not words[0].startswith("-")
                     or Path(words[0]).name.startswith("python")):
        words = words[1:]
    if words[:1] == ["-m"]:
        words = words[1:]
    if not words:
        return command
    return " ".join(words[:2]) if words[0] == "mmrec" and len(words) > 1 else words[0]


def write_results(stem: str | Path, markdown_text: str, csv_text: str, command: str,
                  script: str | None = None) -> tuple[Path, Path]:
    """Write <stem>.md and <stem>.csv atomically; a bare name goes to docs/results/. The .md's
    first line names the command that regenerates it and the script that wrote it (default: the
    command's script) and says not to edit it by hand. Returns the two paths."""
    stem = Path(stem)
    if stem.parent == Path("."):
        stem = RESULTS_DIR / stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".csv")
    head = (f"Regenerate: `{command}` (written by {script or _script_of(command)}, do not edit by "
            "hand)\n\n")
    write_text_atomic(md, head + markdown_text.rstrip("\n") + "\n")
    write_text_atomic(csv_path, csv_text)
    return md, csv_path


def baseline_rows(found: dict, prefix: str = "baseline: ") -> list[str]:
    """The rows of `found` that are stored baselines (named with `prefix`), in their order."""
    return [r for r in found if r.startswith(prefix)]


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
    names = [name for name, _ in cells]
    # the baselines of the first cell's runs: every cell of a seed has the same split
    found = collect(out, names, seeds, part, baselines_from=names[0], baseline_prefix="baseline: ")
    table = markdown_table(summarise(found, baseline_rows(found) + [n for n in names if n in found],
                                     seeds, metrics), seeds, metrics)
    note = (f"{part} metrics in %, mean ± std over seeds {seeds} (seed = model seed = split seed); "
            f"config {config}, overrides {overrides or []}")
    text = f"{table}\n\n{note}\n"
    write_text_atomic(out / "results.md", text)
    return text


def load_grid(path: str | None) -> dict | None:
    if not path:
        return None
    return load_yaml(resolve_config_path(path))
