"""The MovieLens-100k cold-item table, one command: baselines, CLCRec trained to convergence, the
paper's end-to-end method, each piece of issue 16 added alone, and the default config.

Every row of a seed is trained on the same cold-item split (model seed = split seed = s; the
script stops if two runs of a seed saved different splits). `--model-seeds M ...` also trains
each chosen row with model seeds M on every split (OUT/<cell>/seed-<s>-model-<m>/); a split's
value is then the mean over its model seeds, and the table says how far they spread. One model
seed per split measures the split and the model seed's luck together: on these 126-item parts,
a row's model seeds differ by several points on one split. Rows:

  random, kNN        the baselines in the default run's metrics.json (same split): random scores,
                     and cosine kNN of frozen mean-pooled MiniLM text to the user's training items
  clcrec             `configs/clcrec_ml100k.yaml` until 20 epochs in a row bring no better validation
                     (`train.patience`, at most 100: at a fixed 30, 6 of 15 runs still peaked in
                     epochs 28-30, and its validation can stall for 18 epochs before rising
                     again), the best epoch by validation, with the ablations' best lambda and eta
                     (docs/results/clcrec.md)
  paper              `configs/ml100k_paper.yaml`: Eq. 1 alone, MiniLM's top 2 layers fine-tuned for
                     2 epochs at one learning rate (the default until issue 16)
  tower              the default's text tower (frozen layers cached, separate learning rates) with
                     Eq. 1 alone, at the first budget (lr 1e-3, 10 epochs): the tower piece alone
  tower + logQ | + mixed negatives | + distillation
                     one sampling/distillation piece added to that, same budget
  default-lr1e-3     all pieces at that budget (the default until 2026-12-04)
  default            `configs/ml100k.yaml` as shipped: all pieces, lr 2e-4 until 15 epochs bring
                     no better validation (at most 60)

Each run is a process of its own in OUT/<cell>/seed-<s>/; a finished run is skipped and an
interrupted one resumes from its checkpoint, so re-running continues. The table (cold test, mean
± std over seeds, then every seed's value) is written to docs/results/ml100k_cold_items.md and
.csv (`--results`; the CSV has one line per row and metric: mean, std, n, each seed), and to stdout.
Collecting, the table and the files are mmrec.sweep's (collect, summarise, markdown_table,
csv_table, write_results), shared with the other drivers.

The record (<results>.runs.json) keeps every collected run's metrics under its row's config
fingerprint (a hash of the resolved config, seed and paths aside). A later call whose OUT lacks a
run (a fresh checkout: runs/ is not in git) takes that row and seed from the record when the
fingerprint is unchanged, and the table says which values were carried; such a run is not
trained again (`--retrain` trains it), and a row whose config changed is re-run. So one row can be
added or re-run without training all the others again.

    python scripts/compare_heads.py --out runs/compare-ml100k --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmrec import sweep as runner
from mmrec.config import ENTRY_SECTIONS, entry_defaults, flatten, load_config
from mmrec.sweep import run_cell, same_split
from preprocessing.files import write_text_atomic

DEFAULT_CFG = "configs/ml100k.yaml"
PAPER_CFG = "configs/ml100k_paper.yaml"
CLCREC_CFG = "configs/clcrec_ml100k.yaml"
PIECES_OFF = ["loss.logq_correction=false", "loss.mixed_negatives=0", "distill.id_embedding=false"]
# The ablation's budget: the tower's first one (10 epochs at lr 1e-3, no patience rule; the default
# until 2026-12-04), not the default's 60-epoch patience rule at lr 2e-4. At that rule the rows
# without dropout-limited over-fitting run to the cap (60 epochs, 6-20 minutes a run on the shared
# cores), and the 20 runs did not fit the session that adopted it; the pieces are compared at one
# budget either way, and the `default-lr1e-3` row says what the slower schedule adds on top.
FIRST_BUDGET = ["train.lr=1.0e-3", "train.epochs=10", "train.patience=0"]

# name, label, config, overrides
CELLS = [
    ("clcrec", "CLCRec, frozen MiniLM features (until 20 epochs bring no better validation, ≤ 100; λ 0.5, η 0.1)",
     CLCREC_CFG, ["train.epochs=100", "train.patience=20", "eval.every_epochs=1", "eval.baselines=[random]"]),
    ("paper", "mmrec, the paper's method (Eq. 1; MiniLM top 2 layers fine-tuned 2 epochs)", PAPER_CFG, []),
    ("tower", "mmrec, + text tower that trains enough (Eq. 1 alone; lr 1e-3, 10 epochs)", DEFAULT_CFG,
     PIECES_OFF + FIRST_BUDGET),
    ("tower+logq", "mmrec, tower + logQ correction", DEFAULT_CFG,
     PIECES_OFF + FIRST_BUDGET + ["loss.logq_correction=true"]),
    ("tower+mixed", "mmrec, tower + mixed negatives", DEFAULT_CFG,
     PIECES_OFF + FIRST_BUDGET + ["loss.mixed_negatives=128"]),
    ("tower+distill", "mmrec, tower + collaborative distillation", DEFAULT_CFG,
     PIECES_OFF + FIRST_BUDGET + ["distill.id_embedding=true"]),
    ("default-lr1e-3", "mmrec, all pieces (lr 1e-3, 10 epochs: the default until 2026-12-04)", DEFAULT_CFG,
     FIRST_BUDGET),
    ("default", "mmrec, the default config (configs/ml100k.yaml)", DEFAULT_CFG, []),
]
BASELINES = [("random", "Random"), ("knn_frozen_text", "Frozen MiniLM text, kNN (no training)")]
METRICS = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10"}


def collect(out: Path, seeds: list[int], cells: list[str], model_seeds=()) -> dict[str, dict]:
    """row -> run key -> cold-test metrics, for the finished runs; the baselines are the default
    run's. A run key is the split seed s (model seed s) or 's/m' (model seed m on split s)."""
    found = runner.collect(out, cells, seeds, "test", baselines_from="default" if "default" in cells else None)
    for row in cells:
        for s in seeds:
            for m in model_seeds:
                f = out / row / run_name(s, m) / "metrics.json"
                part = json.loads(f.read_text()).get("test") if f.exists() else None
                if part is not None and m != s:
                    found.setdefault(row, {})[run_key(s, m)] = part
    return found


def run_name(s: int, m: int) -> str:
    return f"seed-{s}" if m == s else f"seed-{s}-model-{m}"


def run_key(s: int, m: int):
    return s if m == s else f"{s}/{m}"


def models_of(s: int, model_seeds) -> list[int]:
    """The model seeds a row runs on split s: s itself, then the extra ones."""
    return list(dict.fromkeys([s, *model_seeds]))


def by_split(found: dict[str, dict], seeds: list[int], model_seeds=()) -> tuple[dict, dict]:
    """(row -> split seed -> the mean of each metric over the split's finished model seeds,
    row -> split seed -> [NDCG@10 of each of them]). Without model seeds, `found` as it is."""
    if not model_seeds:
        return found, {}
    means, each = {}, {}
    for row, runs in found.items():
        for s in seeds:
            got = [runs[run_key(s, m)] for m in models_of(s, model_seeds) if run_key(s, m) in runs]
            if got:
                keys = [k for k in got[0] if all(isinstance(g.get(k), (int, float)) for g in got)]
                means.setdefault(row, {})[s] = {k: float(np.mean([g[k] for g in got])) for k in keys}
                each.setdefault(row, {})[s] = [float(g["ndcg@10"]) for g in got if "ndcg@10" in g]
    return means, each


def spread_notes(each: dict) -> list[str]:
    """'row: n runs on k splits; within a split, model seeds spread by ± x NDCG@10 points (the
    mean over splits of their sample std)' per row that had model seeds."""
    notes = []
    for row, per_split in each.items():
        stds = [np.std(v, ddof=1) * 100 for v in per_split.values() if len(v) > 1]
        if stds:
            runs = sum(len(v) for v in per_split.values())
            notes.append(f"{row}: {runs} runs on {len(per_split)} splits; within a split its model seeds "
                         f"spread by ± {np.mean(stds):.2f} NDCG@10 points (mean over splits of the sample std)")
    return notes


_NOT_THE_RUN = ("run_dir", "name", "seed", "split.seed", "train.progress")
# what the baselines (random scores, frozen-text kNN) depend on: the split and the text
_BASELINE_KEYS = ("data.", "split.", "fields.", "eval.ks", "eval.knn_pooling", "encoders.")


def run_config(config: str, overrides: list[str], keep=None) -> dict:
    """The flat config a row's runs are trained with, whatever the seed or run directory (other
    heads' sections are already dropped by load_config), as JSON holds it. keep: key prefixes."""
    flat = {k: v for k, v in flatten(load_config(config, list(overrides))).items()
            if k not in _NOT_THE_RUN and (keep is None or k.startswith(keep))}
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def fingerprint(config: str, overrides: list[str], keep=None) -> str:
    """A hash of `run_config`: what the record keeps a row's runs under."""
    return digest(run_config(config, overrides, keep))


def digest(flat: dict) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def base_defaults() -> dict:
    """base.yaml's values, flat and as JSON holds them (what a key added since a record means)."""
    import yaml
    from mmrec.config import BASE_CONFIG
    return json.loads(json.dumps(flatten(yaml.safe_load(BASE_CONFIG.read_text())), default=str))


def defaults_of(now: dict) -> dict:
    """What every key of a flat row config defaults to, as JSON holds it: base.yaml, its head's
    sections (configs/defaults/heads/<head>.yaml) and each `fields`/`encoders` entry's type
    (configs/defaults/encoders/bert.yaml, ...), none of which base.yaml holds."""
    flat = flatten(load_config(None, [f"head={now.get('head', 'mmrec')}"]))
    for section, (kind_key, _, _) in ENTRY_SECTIONS.items():
        for key, kind in now.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == section and parts[2] == kind_key:
                entry = flatten(entry_defaults(section, {kind_key: kind}))
                flat.update({f"{section}.{parts[1]}.{k}": v for k, v in entry.items()})
    return json.loads(json.dumps(flat, default=str))


def same_run_config(old: dict | None, now: dict, defaults: dict) -> bool:
    """A recorded row config still describes today's runs: every recorded key has today's value,
    none is gone, and a key added to the configs since is at its default (`defaults`, base.yaml's,
    completed by `defaults_of`). New switches ship off (docs/method.md), so a run from before a
    key existed is a run at its default."""
    if old is None or set(old) - set(now) or any(now[k] != v for k, v in old.items()):
        return False
    defaults = {**defaults, **defaults_of(now)}
    return all(k in defaults and now[k] == defaults[k] for k in set(now) - set(old))


def config_changes(record: dict, configs: dict[str, dict], defaults: dict | None = None) -> list[str]:
    """'row (new: ...; gone: ...; changed: ...)' for each row whose recorded config (kept since
    2026-12-03) differs from today's (`same_run_config`): why its runs are not carried."""
    out = []
    for row, now in configs.items():
        old = (record.get(row) or {}).get("config")
        if old is None or same_run_config(old, now, defaults or {}):
            continue
        parts = [(what, keys) for what, keys in (
            ("new", sorted(set(now) - set(old))), ("gone", sorted(set(old) - set(now))),
            ("changed", sorted(k for k in set(now) & set(old) if now[k] != old[k]))) if keys]
        out.append(f"{row} ({'; '.join(f'{what}: ' + ', '.join(keys) for what, keys in parts)})")
    return out


def _still_holds(old: dict | None, fp: str, now: dict, defaults: dict) -> bool:
    """The record's entry `old` for a row describes today's runs of it (fingerprint `fp`, config `now`)."""
    return old is not None and (old.get("fingerprint") == fp or same_run_config(old.get("config"), now, defaults))


def recorded(record: dict, prints: dict[str, str], configs: dict, defaults: dict) -> dict[str, set[str]]:
    """Per row, the run keys (str: 's' or 's/m') the record holds under today's config: what
    `carry` would fill in, so what a call need not train again."""
    return {row: set(record[row]["seeds"]) for row, fp in prints.items()
            if _still_holds(record.get(row), fp, configs.get(row, {}), defaults)}


def carry(found: dict, record: dict, prints: dict[str, str], seeds: list, configs: dict | None = None,
          defaults: dict | None = None) -> list[str]:
    """Fill the rows and seeds (run keys: s, or 's/m' for model seed m on split s) missing from
    `found` from `record` where the row's fingerprint is unchanged, or its recorded config is
    today's but for keys added since at their defaults (`same_run_config`; configs: row -> today's
    config); then store every found value in `record`. Returns 'row (seeds ...)' per carried row."""
    carried = []
    for row, fp in prints.items():
        old = record.get(row)
        same = _still_holds(old, fp, (configs or {}).get(row, {}), defaults or {})
        if same:
            took = [s for s in seeds if s not in found.get(row, {}) and str(s) in old["seeds"]]
            for s in took:
                found.setdefault(row, {})[s] = old["seeds"][str(s)]
            if took:
                carried.append(f"{row} (seed{'s' if len(took) > 1 else ''} {', '.join(map(str, took))})")
        if row in found:
            kept = old["seeds"] if same else {}
            record[row] = {"fingerprint": fp, "seeds": {**kept, **{str(s): m for s, m in found[row].items()}}}
    return carried


def rows(found: dict, seeds: list[int], labels: dict[str, str]) -> list[dict]:
    """One record per row (mmrec.sweep.summarise): mean, std, n and every seed's value, in %."""
    return runner.summarise(found, labels, seeds, METRICS)


def markdown(table: list[dict], seeds: list[int], command: str | None = None, model_seeds=(),
             spread: list[str] = ()) -> str:
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
    a, b = (by.get(r, {}).get("ndcg@10_mean") for r in ("default-lr1e-3", "default"))
    if a is not None and b is not None:
        notes.append(f"default (lr 2e-4, patience) over default-lr1e-3: {b - a:+.2f} NDCG@10 points")
    how = (f" (split seed s; each split's value is the mean over model seeds s, {', '.join(map(str, model_seeds))})"
           if model_seeds else " (seed = model seed = split seed)")
    return (lines + "\n\nCold-item test metrics in %, mean ± std over seeds " + str(seeds)
            + how + "; REAL MovieLens-100k ratings and text.\n\n"
            + "".join(f"- {n}\n" for n in [*notes, *spread]) + (f"\nRegenerate: `{command}`\n" if command else ""))


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare-ml100k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cells", default=",".join(c[0] for c in CELLS), help="comma-separated subset of the rows")
    ap.add_argument("--model-seeds", type=int, nargs="*", default=[],
                    help="more model seeds per split for every chosen row (a split's value: their mean)")
    ap.add_argument("--results", default="docs/results/ml100k_cold_items",
                    help="the table's path without extension (.md and .csv are written)")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: the table from the runs that finished (a row's `seeds` says how many)")
    ap.add_argument("--retrain", action="store_true",
                    help="train a missing run even where the record holds it under today's config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. a smaller budget)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    chosen = [c for c in CELLS if c[0] in args.cells.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: run_config(config, overrides + list(args.overrides)) for name, _, config, overrides in chosen}
    base_config = run_config(DEFAULT_CFG, list(args.overrides), keep=_BASELINE_KEYS)   # the split's
    configs.update({b: base_config for b, _ in BASELINES})
    prints = {row: digest(c) for row, c in configs.items()}
    record_path = Path(str(args.results) + ".runs.json")
    if record_path.parent == Path("."):
        record_path = runner.RESULTS_DIR / record_path
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    defaults = base_defaults()
    held = {} if args.retrain else recorded(record, prints, configs, defaults)
    for s in ([] if args.collect_only else args.seeds):
        dirs = []
        for name, _, config, overrides in chosen:
            for m in models_of(s, args.model_seeds):
                run_dir = out / name / run_name(s, m)
                if str(run_key(s, m)) in held.get(name, ()) and not (run_dir / "metrics.json").exists():
                    print(f"{name} seed {s} model seed {m}: carried from {record_path.name} (--retrain "
                          "trains it again)", flush=True)
                    continue
                ran = run_cell(config, overrides + list(args.overrides), {}, s, run_dir, model_seed=m)
                print(f"{name} seed {s} model seed {m}: {'done' if ran else 'already finished'} ({run_dir})",
                      flush=True)
                dirs.append(run_dir)
        same_split(dirs)
    if args.collect_only:   # the rows of a seed must still share its split
        for s in args.seeds:
            done = [out / c[0] / run_name(s, m) for c in chosen for m in models_of(s, args.model_seeds)
                    if (out / c[0] / run_name(s, m) / "metrics.json").exists()]
            if len(done) > 1:
                same_split(done)
    labels = {**dict(BASELINES), **{c[0]: c[1] for c in chosen}}
    found = collect(out, args.seeds, [c[0] for c in chosen], args.model_seeds)
    changed = config_changes(record, configs, defaults)
    keys = [run_key(s, m) for s in args.seeds for m in models_of(s, args.model_seeds)]
    carried = carry(found, record, prints, keys, configs, defaults)
    for row in found:   # the config itself, so a later mismatch can name what changed
        record[row]["config"] = configs[row]
    write_text_atomic(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    per_split, each = by_split(found, args.seeds, args.model_seeds)
    table = rows(per_split, args.seeds, labels)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--collect-only", "--retrain")]
    command = shlex.join(["python", "scripts/compare_heads.py", *given])
    text = markdown(table, args.seeds, model_seeds=args.model_seeds, spread=spread_notes(each))
    if carried:
        text += (f"\nCarried from {record_path.name} (runs of an unchanged config, not in {out}): "
                 + "; ".join(carried) + ".\n")
    if changed:
        text += "\nNot carried from the record (the config changed since): " + "; ".join(changed) + ".\n"
    if args.collect_only:
        missing = [c[0] for c in chosen if any(k not in found.get(c[0], {}) for k in keys)]
        text += (f"\nCollected from the finished runs (`--collect-only`); not finished yet: "
                 f"{', '.join(missing) or 'none'} (the command resumes them).\n")
    md, _ = runner.write_results(args.results, "# MovieLens-100k cold items\n\n" + text,
                                 runner.csv_table(table, args.seeds, METRICS), command, "scripts/compare_heads.py")
    print(md.read_text())
    return text


if __name__ == "__main__":
    main()
