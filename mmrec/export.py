"""Serving: embeddings from a trained run, and optional top-K lists (`mmrec export RUN ...`).

**Item-content heads** (`mmrec`, `clcrec`): `mmrec export RUN --items ITEMS` reads an item table
with content only (no ratings needed: the items may be brand new), encodes it with the run's best
model and writes to the output folder (default RUN/export):

  item_embeddings.npy      float32 [N, D] (or [N, S, D]: S per-segment vectors of video items)
  item_embeddings.parquet  item_id, embedding (list of float32; [S*D] flattened for segments)
  item_ids.txt             one id per line
  user_embeddings.npy      float32 [U, D], the run's users; user_ids.txt gives their ids
  topk.parquet             (with --top-k) user_id, rank (1 = best), item_id, score
  index/                   (with --index faiss) an `mmrec.serving.ItemIndex` of the item vectors:
                           index.faiss, ids.txt, index.json (`mmrec query`)
  export_report.json       counts: items read, exported, skipped (no content) with their ids;
                           the index's metadata; `tower_fingerprint` (`mmrec.tower.tower_fingerprint`)

Row r of every item file is the same item: the input table's order, minus the skipped items.
Relative trailer / image paths are read from the table's folder (a canonical dataset directory:
its recorded root). The encoding is `mmrec.tower.encode_table`, which `mmrec.ItemTower.encode`
runs too (one code path; docs/api.md). `--save-tower DIR` (head `mmrec`) also writes the run's
item tower as a portable folder (`ItemTower.save_pretrained`: config.json, model.safetensors,
tokenizer files, README.md), alone when no --items is given.
Score an item for a user as u . v. With a video field the item file is [N, S, D], one vector per
evaluation segment, and the score is max_s u . v_s (KDD'24 Eq. 4):
`(np.einsum("d,nsd->ns", u, V)).max(axis=1)`; `mmrec.evaluation.evaluator.DotScorer` does this.
An item without a trailer still gets S (identical) vectors from its other fields. CLCRec's item
vectors are its feature encoder's f_j (every item is embedded as a cold item, from its features).
The top-K lists rank all exported items (nothing is excluded: the items are new).
`mmrec export [RUN] --append EXPORT --items NEW [--replace]` (`append`) adds NEW's items to an
earlier export, encoding only them, refusing ids it already has (unless --replace) and a tower
whose fingerprint is not the export's; it equals a full export of old + new items.

**User cold-start heads** (`sasrec`, `cmclrec`): the items are the run's catalogue (embedded by
ID, so no new items), the users are what is cold. `mmrec export RUN` writes:

  item_embeddings.npy      float32 [N, d]: the rows of the model's item embedding table (SASRec's
                           shared input/output embeddings) for the run's items (all of them, in
                           split order; with --items ITEMS only that table's ids, in its order;
                           ids not in the run's catalogue are skipped); item_ids.txt,
                           item_embeddings.parquet as above
  user_embeddings.npy      float32 [U, d]: each user's sequence state, i.e. what the model scores
                           items with at evaluation: the last state of SASRec over the user's
                           last `sasrec.max_len` KNOWN items (a training user's whole sequence, a
                           warm val/test user's sequence without its held-out targets). A cold
                           user has no known item: cmclrec decodes a simulated sequence from its
                           features, plain SASRec reads an all-padding sequence (the same vector
                           for every cold user). Rows: the run's users (split order), then the
                           brand-new users of --user-table; user_ids.txt
  users.csv                user_id, part (train | val_warm | val_cold | test_warm | test_cold |
                           new), known_items (how many items the vector was computed from and
                           are excluded from the user's top-K; 0 for cold and new users), state
                           (sequence | features | padding)
  topk.parquet             (with --top-k) user_id, rank, item_id, score over the exported items,
                           each user's known items excluded exactly as evaluation excludes them
                           (a user with fewer than K other items gets fewer rows)
  export_report.json       items (catalogue, read, exported, skipped with reasons and ids), users
                           (in = exported + skipped, per reason with ids), unseen feature values
                           of new users per field, the embedding shapes

Score = user . item: `U @ V.T` reproduces the head's evaluation scores for the run's users
(`mmrec.models.sasrec.StateScorer`, which evaluation uses). --user-table T (.csv/.tsv/.parquet
with `user_id` and the run's `user_split.features` columns, raw values as in the dataset's users
table) adds brand-new users known only by their features, exported as cold users: cmclrec
encodes them with the run's feature vocabulary (rebuilt from the run's dataset; a value the run
never saw counts as missing and is reported), plain SASRec gives them the cold vector. New users
are skipped (with the reason in the report) when their id is already one of the run's users
(their vector is the run's), and, for cmclrec, when they have no feature value at all.

Both kinds work on one or many processes (`accelerate launch -m mmrec export ...`); the main
process writes.

The folder is written atomically: every file goes into a temporary sibling `.<name>.<pid>.tmp/`
that is swapped onto the output folder only when all are written, so a killed export leaves the
previous folder (or none), never a half one, and running it again gives the same files (the
next export removes temporaries of processes that are gone). A failed write (a full disk) removes
the temporary and raises `StorageError` naming the file. `--out` must be a new folder, an empty
one or an earlier export (it is replaced whole).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmrec.config import load_config
from mmrec.data.split import CSR
from mmrec.data.tables import DataError
from mmrec.evaluation.evaluator import DotScorer, ragged_rows
from mmrec.models import UserColdStartHead, head_class, load_run
from mmrec.serving import INDEX_DIR
from mmrec.tower import ItemTower, encode_table, read_table, read_table_with_root, run_fingerprint
from preprocessing.files import pid_alive, stale_tmp, storage_failure


class ExportFolder:
    """Paths of an export's files inside its temporary folder; remembers the one being written."""

    def __init__(self, tmp: Path, out: Path):
        self.tmp, self.out, self.current = tmp, out, out

    def __call__(self, name: str) -> Path:
        self.current = self.out / name
        return self.tmp / name


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "export_report.json").exists():
        raise DataError(f"--out {out}: the folder exists and is not an earlier export (no "
                        f"export_report.json); give a new or empty folder (it is replaced whole)")


def write_export(acc, out: Path, write) -> None:
    """`write(folder)` on the main process inside `export_folder(out)`; a failure there is raised
    on every process (none waits for the main one forever)."""
    from mmrec.training.checkpoint import fail_together
    error = None
    if acc.is_main_process:
        try:
            with export_folder(out) as f:
                write(f)
        except Exception as e:   # noqa: BLE001 - raised on every process below
            error = e
    fail_together(acc, error, out, None)
    acc.wait_for_everyone()


@contextmanager
def export_folder(out: str | Path):
    """`with export_folder(out) as f: np.save(f("x.npy"), ...)`: the files land in a temporary
    sibling swapped onto `out` at the end (module docstring); on an error it is removed."""
    from mmrec.training.checkpoint import replace_dir
    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_swapped(out)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):   # left by killed exports
        if stale.is_dir() and stale_tmp(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    folder = ExportFolder(tmp, out)
    try:
        tmp.mkdir()
        yield folder
        folder.current = out
        replace_dir(tmp, out)
    except Exception as e:
        failure = storage_failure(e, folder.current, where=tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is e:
            raise
        raise failure from e


def restore_swapped(out: Path) -> None:
    """A process killed between the two renames of `replace_dir` left `out` absent and the
    previous folder as `.old-<name>.<pid>` (its trash): put it back before anything reads `out`."""
    if out.exists():
        return
    for trash in sorted(out.parent.glob(f".old-{out.name}.*")):
        pid = trash.name.rpartition(".")[2]
        if trash.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            os.replace(trash, out)
            return


def write_index(folder: Path, vectors: np.ndarray, ids, index_type: str, params: dict | None) -> dict:
    """OUT/index/ (`mmrec.serving.ItemIndex`) of the exported vectors; its metadata for the report."""
    from mmrec.serving import ItemIndex
    index = ItemIndex.build(vectors, np.asarray(ids, dtype=object), index_type, **(params or {}))
    index.save(folder)
    return {"folder": INDEX_DIR, **{k: v for k, v in index.meta().items() if k not in ("format", "index_file", "ids_file")}}


def read_items(path: str | Path) -> pd.DataFrame:
    """The item table of `--items` (`mmrec.tower.read_table`, which `ItemTower.encode` reads with)."""
    return read_table(path, "item")


def _run_head(run_dir: str | Path, overrides: list[str] | None = None):
    cfg_file = Path(run_dir) / "config.yaml"
    return head_class(load_config(cfg_file, overrides)["head"]) if cfg_file.exists() else None


@torch.no_grad()
def export(run_dir: str | Path, items_path: str | Path | None = None, out_dir: str | Path | None = None,
           users: list[str] | None = None, top_k: int = 0, batch_size: int | None = None,
           user_table: str | Path | None = None, save_tower: str | Path | None = None,
           index: str | None = None, index_type: str = "flat", index_params: dict | None = None) -> Path:
    """Works on one or many processes (`accelerate launch -m mmrec export ...`): the items are
    encoded in batch-aligned blocks per process and gathered once; the main process writes.
    Runs of the user cold-start heads go to `export_user_cold_start` (see the module docstring).
    `save_tower`: also (or, without `items_path`, only) write the run's item tower folder there
    (`mmrec.tower.ItemTower.save_pretrained`). `index="faiss"`: also an `mmrec.serving.ItemIndex`
    of the items in OUT/index/ (`index_type`, `index_params` overriding its defaults). Returns the
    export folder, or the tower folder when nothing else was exported."""
    if index not in (None, "faiss"):
        raise DataError(f"--index: unknown index {index!r} (only 'faiss')")
    if index is not None:
        from mmrec.serving import default_params
        default_params(index_type, 0, 1)   # an unknown type stops here, before any encoding
    head = _run_head(run_dir)
    if head is not None and issubclass(head, UserColdStartHead):
        if save_tower is not None:
            raise DataError(f"--save-tower: head '{head.name}' has no content item tower (its items are "
                            f"rows of an ID embedding table); only head mmrec runs have one")
        if index is not None:
            raise DataError(f"--index: head '{head.name}' exports its own catalogue (an ID table); the "
                            f"index is for item-content heads (mmrec, clcrec)")
        return export_user_cold_start(head, run_dir, items_path, out_dir, users, top_k, user_table)
    if items_path is None and save_tower is None:
        raise DataError("--items: the item table to embed (from its content) is required for this run's head "
                        "(or --save-tower DIR alone, to write the item tower)")
    if user_table is not None:
        raise DataError("--user-table: only the user cold-start heads (sasrec, cmclrec) embed new users")
    from mmrec.evaluation.ranking import user_vectors
    from mmrec.distributed import make_accelerator
    acc = make_accelerator()
    cfg, split, model = load_run(run_dir)
    fingerprint = run_fingerprint(run_dir, cfg, model)   # --append refuses another tower's items
    batch_size = int(batch_size or cfg["eval"]["item_batch_size"])   # video items are heavy: the run's size
    tower = ItemTower.from_loaded(run_dir, cfg, model, device="cpu") if save_tower is not None else None
    model.to(acc.device)
    if items_path is None:
        _save_tower(acc, tower, Path(save_tower))
        return Path(save_tower)
    out = Path(out_dir or Path(run_dir) / "export")
    check_out(out)
    items, root = read_table_with_root(items_path, "item")   # root: of relative trailer paths
    enc = encode_table(model, cfg, items, root, batch_size, acc.device, acc.autocast,
                       main_first=acc.main_process_first, field_names=_field_names(model))
    V = torch.from_numpy(enc.vectors)
    U = user_vectors(model, split.n_users, acc.device)
    def write(f):   # on the main process, into the temporary folder
        ids = enc.ids
        np.save(f("item_embeddings.npy"), enc.vectors)
        f("item_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        pd.DataFrame({"item_id": ids, "embedding": list(V.flatten(1).numpy())}).to_parquet(
            f("item_embeddings.parquet"), index=False)
        np.save(f("user_embeddings.npy"), U.numpy())
        if enc.weights is not None:   # adaptive fusion: which field mattered for each item
            w = enc.weights.mean(1) if enc.weights.ndim == 3 else enc.weights   # segments: their mean weight
            table = pd.DataFrame(w, columns=enc.field_names)
            table.insert(0, "item_id", ids)
            table.to_csv(f("fusion_weights.csv"), index=False)
        f("user_ids.txt").write_text("".join(f"{u}\n" for u in split.user_ids))
        r = enc.report
        report = {"run": str(run_dir), "items_file": str(items_path), "items_read": r["items_read"],
                  "items_exported": r["items_encoded"], "items_skipped_no_content": r["items_skipped_no_content"],
                  "skipped_item_ids": r["skipped_item_ids"],
                  "blank_lines_dropped": r["blank_lines_dropped"],   # CSV/TSV lines
                  "fields": r["fields"],
                  "embedding_shape": r["embedding_shape"],
                  "processes": acc.num_processes}
        if top_k:
            report["topk"] = write_topk(f("topk.parquet"), U, V, split.user_ids, ids, users, int(top_k))
        if index is not None:
            report["index"] = write_index(f(INDEX_DIR), enc.vectors, ids, index_type, index_params)
        if save_tower is not None:
            report["tower"] = str(save_tower)
        report["tower_fingerprint"] = fingerprint
        f("export_report.json").write_text(json.dumps(report, indent=1))
    write_export(acc, out, write)
    if tower is not None:
        _save_tower(acc, tower, Path(save_tower))
    return out


# Files of an item export that `append` rewrites; any other file of the folder is carried over.
_APPEND_REWRITES = {"item_embeddings.npy", "item_ids.txt", "item_embeddings.parquet", "fusion_weights.csv",
                    "topk.parquet", "export_report.json", INDEX_DIR}


@torch.no_grad()
def append(export_dir: str | Path, items_path: str | Path, run_dir: str | Path | None = None,
           replace: bool = False, batch_size: int | None = None) -> Path:
    """`mmrec export [RUN] --append EXPORT_DIR --items NEW`: encode only NEW's items and add them
    to EXPORT_DIR's embeddings, id map, Parquet file, fusion weights, top-K lists (recomputed for
    the same users and K) and index (new vectors added; with --replace hits, refilled from all
    vectors, keeping its training). The tower (RUN, default the export's own run; a tower folder
    works too) must have the fingerprint the export recorded. Ids already in the export are
    refused unless `replace`: then their rows are overwritten in place. Written like an export,
    into a temporary sibling swapped in at the end: a kill at any point leaves the previous export.
    The result equals a full export of the old and new items (tests/test_append.py)."""
    out = Path(export_dir)
    report_file = out / "export_report.json"
    if not report_file.is_file():
        raise DataError(f"--append {out}: not an export folder (no export_report.json)")
    try:
        report = json.loads(report_file.read_text())
    except ValueError as e:
        raise DataError(f"{report_file}: not JSON ({e})") from None
    if "head" in report:
        raise DataError(f"--append {out}: an export of a user cold-start run ({report['head']}); its items "
                        f"are the run's catalogue, nothing can be appended")
    if not report.get("tower_fingerprint"):
        raise DataError(f"{report_file}: no tower_fingerprint (made by an older mmrec, or by a head without a "
                        f"content tower); export the whole catalogue again instead of appending")
    source = Path(run_dir) if run_dir is not None else Path(report["run"])
    tower = ItemTower.from_pretrained(source)
    if tower.fingerprint() != report["tower_fingerprint"]:
        raise DataError(f"--append {out}: the tower of {source} ({tower.fingerprint()[:19]}...) is not the one "
                        f"that made this export ({report['tower_fingerprint'][:19]}..., {report_file}); "
                        f"its vectors would not be comparable: export the whole catalogue with it instead")
    old_ids = np.array((out / "item_ids.txt").read_text().splitlines(), dtype=object)
    table = read_items(items_path)
    dup = table["item_id"][table["item_id"].isin(old_ids)].tolist()
    if dup and not replace:
        more = f" (+{len(dup) - 5} more)" if len(dup) > 5 else ""
        raise DataError(f"--append {out}: {len(dup)} item id(s) of {items_path} already in the export: "
                        f"{', '.join(repr(i) for i in dup[:5])}{more}; --replace replaces their vectors")
    enc = tower.encode(items_path, batch_size=batch_size)
    V_old = np.load(out / "item_embeddings.npy")
    if V_old.shape[1:] != enc.vectors.shape[1:]:
        raise DataError(f"--append {out}: the export's vectors are {list(V_old.shape[1:])}, the new ones "
                        f"{list(enc.vectors.shape[1:])}")
    pos = pd.Index(old_ids.astype(str)).get_indexer(enc.ids.astype(str))
    hit, fresh = pos >= 0, pos < 0
    V = np.concatenate([V_old, enc.vectors[fresh]])
    V[pos[hit]] = enc.vectors[hit]
    ids = np.concatenate([old_ids, enc.ids[fresh].astype(object)])

    def write(f):
        for p in out.iterdir():   # what append does not change, carried over as is
            if p.name not in _APPEND_REWRITES:
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, f(p.name))
        np.save(f("item_embeddings.npy"), V)
        f("item_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        flat = V.reshape(len(V), -1)
        pd.DataFrame({"item_id": ids.astype(str), "embedding": list(flat)}).to_parquet(
            f("item_embeddings.parquet"), index=False)
        if (out / "fusion_weights.csv").is_file() and enc.weights is not None:
            old_w = pd.read_csv(out / "fusion_weights.csv", dtype={"item_id": str})
            w = enc.weights.mean(1) if enc.weights.ndim == 3 else enc.weights
            new_w = pd.DataFrame(w, columns=enc.field_names)
            new_w.insert(0, "item_id", enc.ids.astype(str))
            old_w = old_w.set_index("item_id")
            old_w.loc[new_w["item_id"][hit].tolist()] = new_w[hit].set_index("item_id")
            pd.concat([old_w.reset_index(), new_w[fresh]], ignore_index=True).to_csv(f("fusion_weights.csv"), index=False)
        new_report = dict(report)
        new_report["items_exported"] = int(len(ids))
        new_report["embedding_shape"] = list(V.shape)
        new_report["appends"] = [*report.get("appends", []), {
            "items_file": str(items_path), "run": str(source), "items_read": enc.report["items_read"],
            "items_appended": int(fresh.sum()), "items_replaced": int(hit.sum()),
            "replaced_item_ids": [str(i) for i in enc.ids[hit]],
            "items_skipped_no_content": enc.report["items_skipped_no_content"],
            "skipped_item_ids": enc.skipped, "fields": enc.report["fields"]}]
        if (out / "topk.parquet").is_file():   # the same users and K, over the grown catalogue
            U = torch.from_numpy(np.load(out / "user_embeddings.npy"))
            user_ids = np.array((out / "user_ids.txt").read_text().splitlines(), dtype=object)
            wanted = pd.read_parquet(out / "topk.parquet", columns=["user_id"])["user_id"].unique().tolist()
            k = int(report.get("topk", {}).get("k") or 1)
            new_report["topk"] = write_topk(f("topk.parquet"), U, torch.from_numpy(V), user_ids, ids,
                                            wanted or None, k)
        if (out / INDEX_DIR).is_dir():
            from mmrec.serving import ItemIndex
            index = ItemIndex.load(out / INDEX_DIR)
            if hit.any():   # replaced vectors: refilled from all of them (its training kept)
                index = index.empty_like().add(V, ids)
            else:
                index.add(enc.vectors[fresh], enc.ids[fresh])
            index.save(f(INDEX_DIR))
            new_report["index"] = {"folder": INDEX_DIR, **{k: v for k, v in index.meta().items()
                                                           if k not in ("format", "index_file", "ids_file")}}
        f("export_report.json").write_text(json.dumps(new_report, indent=1))

    with export_folder(out) as f:
        write(f)
    return out


def _field_names(model) -> list[str]:
    tower = model.item_tower()
    return list(tower.field_names) if tower is not None else []


def _save_tower(acc, tower, path: Path) -> None:
    """The tower folder, written by the main process (atomically); a failure raised on every one."""
    from mmrec.training.checkpoint import fail_together
    error = None
    if acc.is_main_process:
        try:
            tower.save_pretrained(path)
        except Exception as e:   # noqa: BLE001 - raised on every process below
            error = e
    fail_together(acc, error, path, None)
    acc.wait_for_everyone()


def write_topk(path: Path, U: torch.Tensor, V: torch.Tensor, user_ids: np.ndarray,
               item_ids: np.ndarray, wanted: list[str] | None, k: int, exclude: CSR | None = None) -> dict:
    """Each user's top-k items by u . v. exclude: CSR over the rows of U of columns of V never to
    recommend (masked with -inf, as the evaluator does; a user with fewer than k others gets fewer)."""
    index = pd.Index(user_ids.astype(str))
    if wanted:
        pos = index.get_indexer([str(u) for u in wanted])
        missing = [u for u, p in zip(wanted, pos) if p < 0]
        if missing:
            raise DataError(f"--users: unknown user id(s) {missing[:5]} (not in the run's users)")
    else:
        pos = np.arange(len(user_ids))
    k = min(k, len(item_ids))
    scorer = DotScorer(U, V)
    rows = []
    for s in range(0, len(pos), 4096):
        chunk = np.asarray(pos[s:s + 4096], dtype=np.int64)
        scores = scorer(torch.from_numpy(chunk))
        if exclude is not None:
            er, ec = ragged_rows(exclude, chunk)
            scores[torch.from_numpy(er), torch.from_numpy(ec)] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        for r, u in enumerate(chunk.tolist()):
            rank = 0
            for score, j in zip(top.values[r].tolist(), top.indices[r].tolist()):
                if score == float("-inf"):
                    break
                rank += 1
                rows.append((str(user_ids[u]), rank, str(item_ids[j]), float(score)))
    pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"]).to_parquet(path, index=False)
    out = {"users": int(len(pos)), "k": int(k)}
    if exclude is not None:
        out["excluded"] = "each user's known items (as evaluation)"
    return out


# ---------------------------------------------------------------------------------------------
# user cold-start heads (sasrec, cmclrec)

SKIP_REASONS = {"already_a_run_user": "the id is one of the run's users (exported with the run's data)",
                "no_feature_values": "no value in any of the run's user feature columns"}


def new_user_codes(cfg: dict, split, table: pd.DataFrame, where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Feature codes of brand-new users in the run's vocabulary: (codes [n, F], no value at all
    [n], {field: values the run never saw, encoded as missing}).

    The run saved its users' codes, not the vocabulary, so the vocabulary is rebuilt: the run's
    dataset users and the new ones are encoded together (the same normalisation as training),
    and each joint code is mapped to the run's code through the run's users."""
    from mmrec.data.pipeline import load_source
    from mmrec.data.sequences import MISSING, encode_user_features
    names, zp = list(split.feature_names), int(cfg["user_split"]["zip_prefix"])
    new_ids = table["user_id"].astype(str).to_numpy()
    own, _, _ = encode_user_features(table, new_ids, names, zp, where)   # checks columns and values
    ds = load_source(cfg["data"])
    if ds.users is None:
        raise DataError(f"{cfg['data']['source']}: the run's dataset has no users table to rebuild "
                        f"the feature vocabulary from")
    tagged = np.array([f"\x00new\x00{u}" for u in new_ids], dtype=object)
    run_users = ds.users[["user_id", *names]].assign(user_id=lambda d: d["user_id"].astype(str).str.strip())
    both = pd.concat([run_users, table[names].assign(user_id=tagged)[["user_id", *names]]], ignore_index=True)
    ids = np.concatenate([split.user_ids.astype(str).astype(object), tagged])
    joint, _, _ = encode_user_features(both, ids, names, zp, f"{where} (with the run's users)")
    run_joint, new_joint = joint[:split.n_users], joint[split.n_users:]
    codes = np.full(own.shape, MISSING, dtype=np.int64)
    unseen = {}
    for j, name in enumerate(names):
        pairs = np.unique(np.stack([run_joint[:, j], split.features[:, j]], axis=1), axis=0)
        if len(np.unique(pairs[:, 0])) != len(pairs) or len(np.unique(pairs[:, 1])) != len(pairs):
            raise DataError(f"user feature '{name}': the run's dataset no longer gives the codes saved "
                            f"in split.npz; was the users table changed?")
        lookup = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
        mapped = np.array([lookup.get(int(c), -1) for c in new_joint[:, j]], dtype=np.int64)
        given = own[:, j] != MISSING
        unseen[name] = int((given & (mapped < 0)).sum())
        codes[:, j] = np.where(given & (mapped >= 0), mapped, MISSING)
    return codes, (own == MISSING).all(axis=1), unseen


@torch.no_grad()
def export_user_cold_start(head, run_dir, items_path=None, out_dir=None, users: list[str] | None = None,
                           top_k: int = 0, user_table=None) -> Path:
    """Item table rows, user sequence states, top-K lists without known items (module docstring)."""
    from mmrec.models.sasrec import PART_NAMES, StateScorer
    from mmrec.distributed import make_accelerator
    acc = make_accelerator()
    cfg, split, model = head.load_run(run_dir)
    model.to(acc.device)
    out = Path(out_dir or Path(run_dir) / "export")
    check_out(out)
    catalogue = split.item_ids.astype(str)
    items_report: dict = {"catalogue": int(split.n_items)}
    if items_path is None:
        item_rows = np.arange(split.n_items)
        items_report.update(read=int(split.n_items), source="the run's catalogue")
    else:
        wanted_items = read_items(items_path)["item_id"].to_numpy(dtype=str)
        at = pd.Index(catalogue).get_indexer(wanted_items)
        item_rows = at[at >= 0]
        items_report.update(read=int(len(wanted_items)), source=str(items_path),
                            skipped_not_in_catalogue=int((at < 0).sum()),
                            skipped_item_ids=[str(i) for i in wanted_items[at < 0]])
    items_report["exported"] = int(len(item_rows))
    item_ids = catalogue[item_rows]
    V = model.item_table()[torch.from_numpy(item_rows)]

    # the run's users: their states exactly as evaluation computes them
    scorer = StateScorer(model, acc.device)
    run_users = np.arange(split.n_users)
    U = scorer.states(run_users)
    known = np.array([split.known_length(int(u)) for u in run_users], dtype=np.int64)
    cold = split.is_cold(run_users)
    parts = [PART_NAMES[int(p)] for p in split.user_part]
    cold_state = "features" if model.uses_features else "padding"
    states = np.where(cold, cold_state, "sequence")
    user_ids = split.user_ids.astype(str)
    skipped: dict[str, list[str]] = {}
    users_report: dict = {"run_users": int(split.n_users)}
    if user_table is not None:
        table = read_table(user_table, "user")
        ids = table["user_id"].to_numpy(dtype=str)
        clash = np.isin(ids, user_ids)
        skipped["already_a_run_user"] = [str(i) for i in ids[clash]]
        table = table[~clash].reset_index(drop=True)
        L, nF = model.max_len, len(split.feature_names)
        if model.uses_features:
            codes, nothing, unseen = new_user_codes(cfg, split, table, str(user_table))
            skipped["no_feature_values"] = [str(i) for i in table["user_id"][nothing]]
            users_report["unseen_feature_values"] = unseen
            table, codes = table[~nothing].reset_index(drop=True), codes[~nothing]
        else:
            from mmrec.data.sequences import MISSING
            codes = np.full((len(table), nF), MISSING, dtype=np.int64)
        n_new = len(table)
        new_states = [model.sequence_states(np.zeros((min(256, n_new - s), L), np.int64), codes[s:s + 256],
                                            np.ones(min(256, n_new - s), bool), acc.device).float().cpu()
                      for s in range(0, n_new, 256)]
        if new_states:
            U = torch.cat([U, *new_states])
        user_ids = np.concatenate([user_ids, table["user_id"].to_numpy(dtype=str)])
        known = np.concatenate([known, np.zeros(n_new, np.int64)])
        parts += ["new"] * n_new
        states = np.concatenate([states, np.full(n_new, cold_state)])
        users_report.update(table=str(user_table), table_rows=int(len(ids)), new_users=int(n_new))
    users_report = {"in": int(split.n_users + users_report.get("table_rows", 0)),
                    "exported": int(len(user_ids)),
                    "skipped": {r: len(v) for r, v in skipped.items()},
                    "skipped_user_ids": {r: v for r, v in skipped.items() if v},
                    "skip_reasons": {r: SKIP_REASONS[r] for r in skipped},
                    "cold_run_users": int(cold.sum()), **users_report}
    def write(f):   # on the main process, into the temporary folder
        np.save(f("item_embeddings.npy"), V.numpy())
        f("item_ids.txt").write_text("".join(f"{i}\n" for i in item_ids))
        pd.DataFrame({"item_id": item_ids, "embedding": list(V.numpy())}).to_parquet(
            f("item_embeddings.parquet"), index=False)
        np.save(f("user_embeddings.npy"), U.numpy())
        f("user_ids.txt").write_text("".join(f"{u}\n" for u in user_ids))
        pd.DataFrame({"user_id": user_ids, "part": parts, "known_items": known, "state": states}).to_csv(
            f("users.csv"), index=False)
        report = {"run": str(run_dir), "head": cfg["head"], "items": items_report, "users": users_report,
                  "item_embedding_shape": list(V.shape), "user_embedding_shape": list(U.shape),
                  "score": "user_embeddings @ item_embeddings.T (the head's evaluation scores)",
                  "processes": acc.num_processes}
        if top_k:
            # exclude each run user's known items, as evaluation does (new users: nothing)
            known_csr = split.known(run_users)
            colmap = np.full(split.n_items, -1, dtype=np.int64)
            colmap[item_rows] = np.arange(len(item_rows))
            r, c = known_csr.pairs()
            keep = colmap[c] >= 0
            exclude = CSR.from_pairs(r[keep], colmap[c[keep]], len(user_ids))
            report["topk"] = write_topk(f("topk.parquet"), U, V, user_ids, item_ids, users, int(top_k),
                                        exclude=exclude)
        f("export_report.json").write_text(json.dumps(report, indent=1))
    write_export(acc, out, write)
    return out


def evaluate_run(run_dir: str | Path, parts=("val", "test"), overrides: list[str] | None = None) -> dict:
    """Re-evaluate a run's best model on its saved split (on one or many processes), with the
    evaluation the trainer used (`Head.evaluate_run`)."""
    head = _run_head(run_dir, overrides)
    if head is None:   # not a finished run: the error of its first missing file
        from mmrec.runs import best_weights
        best_weights(run_dir)
        load_config(Path(run_dir) / "config.yaml")
    return head.evaluate_run(run_dir, parts, overrides)
