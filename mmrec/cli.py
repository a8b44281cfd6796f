"""`mmrec preprocess | train | transfer | evaluate | export | sweep`: each takes `--config FILE` and `key=value`
overrides (see configs/base.yaml for every key). `mmrec train` with no config runs the default
MovieLens-100k configuration (configs/ml100k.yaml)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_libraries() -> None:
    import warnings
    # torch.distributed deprecation notices, repeated by DeepSpeed at every step.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.distributed.*deprecated.*")
    # transformers reads these when (and if) a command imports it: no import here, so a
    # command that stops at a config mistake does not pay for loading it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _config(args) -> dict:
    from mmrec.config import DEFAULT_CONFIG, load_config
    return load_config(args.config or DEFAULT_CONFIG, args.overrides)


def cmd_preprocess(args) -> int:
    from mmrec.data.pipeline import prepare
    from mmrec.data.preprocess_report import (REPORT_FILE, preprocess_report, summary_lines,
                                              write_preprocess_output)
    from mmrec.data.tables import DataError
    cfg = _config(args)
    # Under `accelerate launch` (any number of nodes) every rank decodes its share of the
    # trailers into the shared frame store; rank 0 merges it, prints and writes --out.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        from mmrec.distributed import join_cpu_processes
        join_cpu_processes()
    from mmrec.distributed import run_on_main
    prepared = prepare(cfg, across_processes=launched)
    main = _is_main_process()
    if main:
        for line in prepared.report["dataset"]:
            print(line)
        print("fields present:", prepared.report["fields_present"])
        print("split:", json.dumps(prepared.split.stats))
    report = preprocess_report(prepared, cfg["fields"])
    if main:
        for line in summary_lines(report):
            print(line)
    if args.out:
        def write():   # atomically: a killed preprocess leaves --out as it was; a re-run finishes it
            try:
                write_preprocess_output(prepared, args.out, report)
            except FileExistsError as e:
                raise DataError(f"--out: {e}") from None
        run_on_main(write)
        if main:
            print(f"canonical dataset and {REPORT_FILE} written to {args.out}")
    return 0


def cmd_train(args) -> int:
    if args.resume:
        from mmrec.training.trainer import load_run_config
        cfg = load_run_config(args.resume, args.overrides)
    else:
        cfg = _config(args)   # a config mistake stops here, before the trainer's imports
    from mmrec.training.trainer import train
    run_dir, metrics = train(cfg, args.resume)
    return 0


def cmd_transfer(args) -> int:
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    from mmrec.transfer import transfer_overrides
    extra = transfer_overrides(args.from_run, args.mode, args.encoder_lr_scale)
    cfg = load_config(args.config, list(args.overrides) + extra)
    train(cfg)
    return 0


def cmd_evaluate(args) -> int:
    from mmrec.export import evaluate_run
    parts = ("val", "test") if args.split == "both" else (args.split,)
    out = evaluate_run(args.run_dir, parts, args.overrides)
    if _is_main_process():
        print(json.dumps(out, indent=1))
    return 0


def _user_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    p = Path(text)
    return p.read_text().split() if p.exists() else [u for u in text.split(",") if u]


def _index_params(items: list[str] | None) -> dict:
    """`--index-param nlist=1024` -> {"nlist": 1024} (integers)."""
    from mmrec.data.tables import DataError
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise DataError(f"--index-param {item!r}: expected KEY=INTEGER (nlist, nprobe, m, "
                            f"ef_construction, ef_search, pq_m, ...)") from None
        if not sep:
            raise DataError(f"--index-param {item!r}: expected KEY=INTEGER")
    return out


def cmd_export(args) -> int:
    from mmrec.data.tables import DataError
    from mmrec.export import append, export
    if args.append:
        if not args.items:
            raise DataError("--append: --items NEW (the items to add) is required")
        if args.index or args.top_k or args.users or args.save_tower or args.user_table or args.out:
            raise DataError("--append: takes only [RUN] --items and --replace (the export's own index, "
                            "top-K users and K are kept)")
        out = append(args.append, args.items, args.run_dir, replace=args.replace)
        if _is_main_process():
            print(f"appended to {out}")
            print((out / "export_report.json").read_text())
        return 0
    if args.run_dir is None:
        raise DataError("export: RUN_DIR is required (or --append EXPORT_DIR)")
    if args.replace:
        raise DataError("--replace: only with --append")
    users = _user_list(args.users)
    out = export(args.run_dir, args.items, args.out, users, args.top_k, user_table=args.user_table,
                 save_tower=args.save_tower, index=args.index, index_type=args.index_type,
                 index_params=_index_params(args.index_param))
    if _is_main_process():
        if (out / "export_report.json").is_file():
            print(f"exported to {out}")
            print((out / "export_report.json").read_text())
        if args.save_tower:
            print(f"item tower saved to {args.save_tower} (load it with mmrec.ItemTower.from_pretrained)")
    return 0


def cmd_query(args) -> int:
    from mmrec.data.tables import DataError
    from mmrec.serving import query
    users = _user_list(args.users)
    if not users:
        raise DataError("--users: at least one user id (comma-separated, or a file of ids)")
    table = query(args.source, users, args.top_k, exclude_seen=args.exclude_seen, **_index_params(args.search_param))
    if args.out:
        from preprocessing.files import atomic_path
        out = Path(args.out)
        if out.suffix not in (".csv", ".parquet"):
            raise DataError(f"--out {out}: must end in .csv or .parquet")
        with atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False) if out.suffix == ".parquet" else table.to_csv(tmp, index=False)
        print(f"{len(table)} rows written to {out}")
    else:
        print(table.to_csv(sep="\t", index=False), end="")
    return 0


def cmd_sweep(args) -> int:
    from mmrec.config import parse_overrides
    from mmrec.sweep import load_grid, sweep
    grid = load_grid(args.grid) or {}
    for item in args.vary or []:
        flat = parse_overrides([item])
        key = item.split("=", 1)[0]
        node = flat
        for part in key.split("."):
            node = node[part]
        grid[key] = node if isinstance(node, list) else [node]
    metrics = tuple(args.metrics.split(","))
    print(sweep(args.config, args.out, args.seeds, grid or None, args.overrides, metrics, args.part))
    return 0


def cmd_plot(args) -> int:
    from mmrec.plots import plot_run
    report = plot_run(args.run_dir, args.color_by, args.user, args.out)
    print(json.dumps(report, indent=1))
    return 0


def cmd_extract_features(args) -> int:
    from mmrec.extract_features import extract_features
    layout = {}
    for item in args.feat or []:
        letter, _, names = item.partition("=")
        layout[letter.strip()] = [n for n in names.split(",") if n]
    cfg = _config(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under a launcher rank 0 extracts and writes (once); the others wait for its result.
        from mmrec.distributed import make_accelerator
        make_accelerator()
    from mmrec.distributed import run_on_main
    report = run_on_main(lambda: extract_features(cfg, args.out, text=args.text, pooling=args.pooling,
                              run=args.run, run_fields=args.run_fields.split(",") if args.run_fields else None,
                              timm_model=args.timm_model, timm_weights=args.timm_weights,
                              timm_field=args.timm_field, multihot=args.multihot,
                              clcrec_layout=args.clcrec_layout, layout_map=layout or None,
                              warm_holdout=args.warm_holdout))
    if _is_main_process():
        print(json.dumps(report, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmrec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", help="YAML config (default: configs/ml100k.yaml)")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        return sp

    sp = with_config(sub.add_parser("preprocess", help="read the data source, build caches, report"))
    sp.add_argument("--out", help="also write the canonical dataset (Parquet tables) here")
    sp.set_defaults(fn=cmd_preprocess)
    sp = with_config(sub.add_parser("train", help="train (or --resume) a model"))
    sp.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    sp.set_defaults(fn=cmd_train)
    sp = sub.add_parser("transfer", help="train on dataset B starting from a run's item encoder "
                        "(trained on dataset A); `mmrec train --resume` continues it")
    sp.add_argument("--from", dest="from_run", required=True, metavar="RUN_DIR|TOWER_DIR",
                    help="finished run on dataset A (its model/model.safetensors), or an item-tower "
                         "folder saved from one (`mmrec export A --save-tower DIR`: its model.safetensors)")
    sp.add_argument("--config", required=True, help="config for dataset B; fields, encoders and "
                    "model must give the same item tower as the source run's")
    sp.add_argument("--mode", choices=["frozen", "finetune"], required=True,
                    help="frozen: only B's user embeddings learn; finetune: the item encoder learns too")
    sp.add_argument("--encoder-lr-scale", type=float, metavar="X",
                    help="finetune: the item encoder's LR is X times train.lr (train.lr_scale.item_encoder)")
    sp.add_argument("overrides", nargs="*", help="key.sub=value overrides for B's config")
    sp.set_defaults(fn=cmd_transfer)
    sp = sub.add_parser("evaluate", help="re-evaluate a run's best model")
    sp.add_argument("run_dir")
    sp.add_argument("--split", choices=["val", "test", "both"], default="both")
    sp.add_argument("--config", help=argparse.SUPPRESS)
    sp.add_argument("overrides", nargs="*")
    sp.set_defaults(fn=cmd_evaluate)
    sp = sub.add_parser("export", help="embed a catalogue of (new) items, or the users and items of a "
                                       "user cold-start run, with a trained run")
    sp.add_argument("run_dir", nargs="?", help="the run (or, with --append, a run or tower folder; default "
                    "the export's own run)")
    sp.add_argument("--items", help="item table: .parquet/.csv/.tsv or a dataset dir (required for "
                                    "item-content heads unless --save-tower is given; sasrec/cmclrec: "
                                    "restrict to these ids)")
    sp.add_argument("--save-tower", metavar="DIR", help="head mmrec: also write the run's item tower as a "
                    "portable folder (config.json, model.safetensors, tokenizer files, README.md), "
                    "loadable with mmrec.ItemTower.from_pretrained(DIR) and `mmrec transfer --from DIR`")
    sp.add_argument("--user-table", help="sasrec/cmclrec: brand-new users (user_id + the run's user "
                                         "feature columns) to export as cold users")
    sp.add_argument("--out", help="output folder (default RUN_DIR/export)")
    sp.add_argument("--users", help="user ids (comma-separated, or a file) for top-K lists")
    sp.add_argument("--top-k", type=int, default=0, help="write each user's top-K of these items")
    sp.add_argument("--index", choices=["faiss"], help="also build a FAISS inner-product index of the items "
                    "in OUT/index/ (`mmrec query`, mmrec.ItemIndex)")
    sp.add_argument("--index-type", choices=["flat", "ivf", "hnsw", "ivfpq"], default="flat",
                    help="flat (exact, default), ivf, hnsw or ivfpq (compressed); see docs/cli.md")
    sp.add_argument("--index-param", action="append", metavar="KEY=N", help="override an index parameter: "
                    "nlist, nprobe, train_size, niter, m, ef_construction, ef_search, pq_m, pq_bits")
    sp.add_argument("--append", metavar="EXPORT_DIR", help="add the --items to this earlier export (its "
                    "embeddings, ids, top-K and index), encoding only them; the tower must be the same")
    sp.add_argument("--replace", action="store_true", help="--append: ids already in the export get the "
                    "new vectors (without it they are refused)")
    sp.set_defaults(fn=cmd_export)
    sp = sub.add_parser("query", help="top-K items of users from an export's FAISS index")
    sp.add_argument("source", metavar="RUN_OR_EXPORT", help="a run directory (its export/), an export "
                    "folder or an index folder")
    sp.add_argument("--users", required=True, help="user ids, comma-separated, or a file of ids")
    sp.add_argument("--top-k", type=int, default=10, help="items per user (default 10)")
    sp.add_argument("--exclude-seen", action="store_true", help="leave out each user's training interactions")
    sp.add_argument("--search-param", action="append", metavar="KEY=N", help="nprobe=N (ivf, ivfpq) or "
                    "ef_search=N (hnsw) for this query")
    sp.add_argument("--out", help="write the table here (.csv or .parquet) instead of printing it")
    sp.set_defaults(fn=cmd_query)
    sp = with_config(sub.add_parser("sweep", help="a grid of overrides x seeds, resumable, as a table"))
    sp.add_argument("--out", required=True, help="sweep folder (re-run the same command to resume)")
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sp.add_argument("--grid", help="YAML grid: key -> [values], or cells: [{name, set}]")
    sp.add_argument("--vary", action="append", metavar="KEY=[V1,V2]", help="add a grid axis")
    sp.add_argument("--metrics", default="ndcg@10,recall@10,precision@10")
    sp.add_argument("--part", choices=["val", "test"], default="test")
    sp.set_defaults(fn=cmd_sweep)
    sp = sub.add_parser("plot", help="t-SNE of item vectors, training curves, one user's similarities (PNG)")
    sp.add_argument("run_dir")
    sp.add_argument("--color-by", help="item column for the t-SNE colours (default: genres / attr_colour)")
    sp.add_argument("--user", help="user id for the similarity plot (default: the test user with most cold positives)")
    sp.add_argument("--out", help="output folder (default RUN_DIR/plots)")
    sp.set_defaults(fn=cmd_plot)
    sp = with_config(sub.add_parser("extract-features", help="per-item features from frozen encoders "
                                    "(.npy + item_ids.txt), optionally in the official CLCRec layout"))
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--text", action="store_true", help="each text field through its frozen pretrained BERT")
    sp.add_argument("--pooling", choices=["mean", "cls"], help="BERT pooling (default: the encoder's)")
    sp.add_argument("--run", metavar="RUN_DIR", help="a trained mmrec run: its per-field encodings z")
    sp.add_argument("--run-fields", help="comma-separated fields of --run (default: all)")
    sp.add_argument("--timm-model", help="a timm architecture name, applied to stills / centre frames")
    sp.add_argument("--timm-weights", help="local weights file for --timm-model (.safetensors or .pth)")
    sp.add_argument("--timm-field", help="the config's image or video field to read (default: the first)")
    sp.add_argument("--multihot", nargs="+", metavar="COLUMN", help="item columns of categories, multi-hot")
    sp.add_argument("--clcrec-layout", action="store_true", help="also write OUT/clcrec/ (official CLCRec files)")
    sp.add_argument("--feat", action="append", metavar="t=NAME[,NAME]",
                    help="which feature sets make feat_t / feat_v / feat_a (default: text -> t, visual -> v)")
    sp.add_argument("--warm-holdout", type=float, default=0.0,
                    help="official layout: move this fraction of training interactions to val_warm/test_warm")
    sp.set_defaults(fn=cmd_extract_features)
    # `--debug` before or after the subcommand; SUPPRESS keeps a subcommand from resetting it.
    p.add_argument("--debug", action="store_true", help="user errors show their traceback "
                   "(also: MMREC_DEBUG=1)")
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's mistake (a config, a command line, an input file, the
    disk), each with a message naming what to fix; anything else is a bug and keeps its traceback."""
    from mmrec.assets import MissingAsset
    from mmrec.config import ConfigError
    from mmrec.data.tables import DataError
    from preprocessing.files import StorageError
    return ConfigError, DataError, FileNotFoundError, MissingAsset, StorageError


def one_line(error: BaseException) -> str:
    """The error's message on one line. A message re-raised from a DataLoader worker (torch puts
    the worker's traceback into it) is cut back to the original message."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        name, sep, rest = last.partition(": ")
        text = rest if sep and name.replace(".", "").isidentifier() else last
    out = ""
    for line in (line.strip() for line in text.splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith((":", ",")) else "; ") + line
    return out or type(error).__name__


def debug_requested(args=None) -> bool:
    env = os.environ.get("MMREC_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def run() -> int:
    """The `mmrec` process (console script and `python -m mmrec`): `main`, then an exit that
    skips the interpreter's last garbage collections. Python's finalisation runs full collections
    over every object torch, transformers and DeepSpeed made: 3-4 s at the end of each process on
    2 cores (every rank, every command), after the command's work and its output are complete.
    Frozen, those objects are left to the OS with the process. Only here, not in `main`: other
    programs (the tests) call `main` in-process, and their later garbage must stay collectable."""
    code = main()
    import gc
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    clean = False
    try:
        code = args.fn(args)
        clean = True
        return code
    except user_errors() as e:
        # User errors exit 2 with one line, from rank 0 only (every rank of `accelerate launch`
        # meets the same mistake); --debug / MMREC_DEBUG=1: the traceback, from every rank.
        if debug_requested(args):
            import traceback
            traceback.print_exc()
        elif _is_main_process():
            print(f"mmrec: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        # Every command, on every rank, ends with its process group torn down in order.
        if "torch.distributed" in sys.modules:
            from mmrec.distributed import shutdown
            shutdown(clean)
