"""Serving a catalogue of new items: embeddings from a trained run, and optional top-K lists.

`mmrec export RUN --items ITEMS` reads an item table with content only (no ratings needed: the
items may be brand new), encodes it with the run's best model and writes to the output folder:

  item_embeddings.npy      float32 [N, D] (or [N, S, D]: S per-segment vectors of video items)
  item_embeddings.parquet  item_id, embedding (list of float32; [S*D] flattened for segments)
  item_ids.txt             one id per line
  user_embeddings.npy      float32 [U, D], the run's users; user_ids.txt gives their ids
  topk.parquet             (with --top-k) user_id, rank (1 = best), item_id, score
  export_report.json       counts: items read, exported, skipped (no content) with their ids

Row r of every item file is the same item: the input table's order, minus the skipped items.
Score an item for a user as u . v. With a video field the item file is [N, S, D], one vector per
evaluation segment, and the score is max_s u . v_s (KDD'24 Eq. 4):
`(np.einsum("d,nsd->ns", u, V)).max(axis=1)`; `mmrec.evaluation.evaluator.DotScorer` does this.
An item without a trailer still gets S (identical) vectors from its other fields.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmrec.config import load_config
from mmrec.data.content import collate_items
from mmrec.data.pipeline import build_content
from mmrec.data.split import Split
from mmrec.data.tables import DataError, MultiModalDataset
from mmrec.evaluation.evaluator import DotScorer
from mmrec.models import HEADS


def load_trained(run_dir: str | Path, overrides: list[str] | None = None):
    """(config, split, model in eval mode with the best epoch's weights) of a finished run."""
    from safetensors.torch import load_file
    from mmrec.models import mmrec_model  # noqa: F401  (registers the head)
    from mmrec.models import clcrec  # noqa: F401  (registers 'clcrec')
    run_dir = Path(run_dir)
    weights = run_dir / "model" / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{run_dir}: no trained model (model/model.safetensors); train first")
    cfg = load_config(run_dir / "config.yaml", overrides)
    split = Split.load(run_dir / "split.npz")
    model = HEADS[cfg["head"]](cfg, split.n_users, split.n_items, None)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return cfg, split, model


def read_items(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return MultiModalDataset.load(path).items
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    else:
        raise DataError(f"{path}: item table must be .parquet, .csv, .tsv or a processed dataset directory")
    if "item_id" not in df.columns:
        raise DataError(f"{path}: missing column 'item_id' (columns: {list(df.columns)})")
    df["item_id"] = df["item_id"].astype(str)
    dup = df["item_id"].duplicated()
    if dup.any():
        raise DataError(f"{path}: duplicate item_id {df['item_id'][dup].iloc[0]!r}")
    return df


@torch.no_grad()
def export(run_dir: str | Path, items_path: str | Path, out_dir: str | Path | None = None,
           users: list[str] | None = None, top_k: int = 0, batch_size: int | None = None) -> Path:
    """Works on one or many processes (`accelerate launch -m mmrec export ...`): the items are
    encoded in batch-aligned blocks per process and gathered once; the main process writes."""
    from mmrec.evaluation.ranking import encode_items, user_vectors
    from mmrec.training.trainer import make_accelerator
    acc = make_accelerator()
    cfg, split, model = load_trained(run_dir)
    batch_size = int(batch_size or cfg["eval"]["item_batch_size"])   # video items are heavy: the run's size
    model.to(acc.device)
    out = Path(out_dir or Path(run_dir) / "export")
    items = read_items(items_path)
    empty = pd.DataFrame({"user_id": [], "item_id": [], "rating": [], "timestamp": []})
    ds = MultiModalDataset("export", items, empty, root=Path(items_path).parent)
    with acc.main_process_first():
        content = build_content(cfg, ds)
    keep = np.stack([c.present for c in content.values()], axis=1).any(axis=1)
    rows = np.flatnonzero(keep)
    V, W = encode_items(model, None, rows, batch_size, acc.device, acc.autocast,
                        collate=lambda r, mode: collate_items(content, r, mode), with_weights=True)
    if len(rows) == 0:
        V = torch.zeros(0, int(cfg["model"]["dim"]))
    U = user_vectors(model, split.n_users, acc.device)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ids = items["item_id"].to_numpy()[rows]
        np.save(out / "item_embeddings.npy", V.numpy())
        (out / "item_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        pd.DataFrame({"item_id": ids, "embedding": list(V.flatten(1).numpy())}).to_parquet(
            out / "item_embeddings.parquet", index=False)
        np.save(out / "user_embeddings.npy", U.numpy())
        if W is not None:   # adaptive fusion: which field mattered for each item
            w = W.mean(1) if W.dim() == 3 else W          # segments: their mean weight
            table = pd.DataFrame(w.numpy(), columns=list(model.item_encoder.field_names))
            table.insert(0, "item_id", ids)
            table.to_csv(out / "fusion_weights.csv", index=False)
        (out / "user_ids.txt").write_text("".join(f"{u}\n" for u in split.user_ids))
        report = {"run": str(run_dir), "items_file": str(items_path), "items_read": int(len(items)),
                  "items_exported": int(len(rows)), "items_skipped_no_content": int((~keep).sum()),
                  "skipped_item_ids": [str(i) for i in items["item_id"][~keep]],
                  "fields": {n: c.report for n, c in content.items() if getattr(c, "report", None)},
                  "embedding_shape": list(V.shape),
                  "processes": acc.num_processes}
        if top_k:
            report["topk"] = write_topk(out / "topk.parquet", U, V, split.user_ids, ids, users, int(top_k))
        (out / "export_report.json").write_text(json.dumps(report, indent=1))
    acc.wait_for_everyone()
    return out


def write_topk(path: Path, U: torch.Tensor, V: torch.Tensor, user_ids: np.ndarray,
               item_ids: np.ndarray, wanted: list[str] | None, k: int) -> dict:
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
        chunk = torch.from_numpy(np.asarray(pos[s:s + 4096], dtype=np.int64))
        top = torch.topk(scorer(chunk), k, dim=1)
        for r, u in enumerate(chunk.tolist()):
            for rank, (score, j) in enumerate(zip(top.values[r].tolist(), top.indices[r].tolist()), 1):
                rows.append((str(user_ids[u]), rank, str(item_ids[j]), float(score)))
    pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"]).to_parquet(path, index=False)
    return {"users": int(len(pos)), "k": int(k)}


def evaluate_run(run_dir: str | Path, parts=("val", "test"), overrides: list[str] | None = None) -> dict:
    """Re-evaluate a run's best model on its saved split (on one or many processes)."""
    from mmrec.models import head_class
    cfg_file = Path(run_dir) / "config.yaml"
    head = head_class(load_config(cfg_file, overrides)["head"]) if cfg_file.exists() else None
    if hasattr(head, "evaluate_run"):   # heads with their own split (sasrec, cmclrec)
        return head.evaluate_run(run_dir, parts, overrides)
    from mmrec.data.pipeline import prepare
    from mmrec.evaluation.ranking import evaluate_model_part
    from mmrec.training.trainer import make_accelerator
    acc = make_accelerator()
    cfg, split, model = load_trained(run_dir, overrides)
    prepared = prepare(cfg, split, acc)
    model.to(acc.device)
    out = {}
    for part in parts:
        res = evaluate_model_part(model, prepared, part, cfg["eval"], acc.device, acc.autocast)
        out[part] = {**res.means(), "users": int(len(res.users))}
    if acc.is_main_process:
        (Path(run_dir) / "evaluation.json").write_text(json.dumps(out, indent=1))
    return out

