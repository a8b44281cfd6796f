"""Precomputed per-item features: the `features` content modality (writing them is
`mmrec extract-features`, mmrec/extract_features.py).

A features folder (what `mmrec extract-features --out DIR` writes) holds

  item_ids.txt          one item id per line: row r of every feature file is this item
  <name>.npy            float32 [n_items, dim], one file per feature set
  <name>.present.npy    bool [n_items]: False where the item had no input for it (its row is zeros)
  <name>.vocab.txt      multi-hot features only: the category of each column
  features.json         what each file is (extractor, model, pooling, dim, items without input)

and, with `--clcrec-layout`, the official CLCRec layout in `DIR/clcrec/` (mmrec/data/clcrec_format.py).

A field of modality `features` feeds such vectors to a head that works on precomputed features
(the CLCRec head, `mmrec/models/clcrec.py`):

  fields:
    text_feat: {modality: features, source: frozen_text, template: "{title} ({year}). {genres}"}
    genre_feat: {modality: features, source: multihot, column: genres}
    clip_feat: {modality: features, source: file, path: features/ml100k, name: timm_resnet}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mmrec import assets
from mmrec.data.content import FieldContent, TextContent, register_content
from mmrec.data.fields import render_texts
from mmrec.data.tables import DataError, MultiModalDataset

FEATURE_SOURCES = ("file", "frozen_text", "multihot")

# The `features` field defaults: configs/defaults/modalities/features.yaml


class FeatureContent(FieldContent):
    """Precomputed vectors by dataset row: collate gives {"x": [B, dim] float32, "present": [B]}."""

    def __init__(self, name: str, x: np.ndarray, present: np.ndarray, report: dict | None = None):
        self.name = name
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.present = np.asarray(present, dtype=bool)
        self.report = report or {}
        if self.x.ndim != 2 or len(self.x) != len(self.present):
            raise DataError(f"fields.{name}: features must be [items, dim], got {self.x.shape}")

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        items = np.asarray(items, dtype=np.int64)
        return {"x": torch.from_numpy(self.x[items]), "present": torch.from_numpy(self.present[items])}


# ------------------------------------------------------------------------------- extractors
def frozen_text_features(items, template: str, checkpoint: str = "minilm", pooling: str = "mean",
                         max_length: int = 64, cache_dir: str | Path = ".mmrec_cache",
                         field: str = "text", batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """([n, H] float32, present [n]) from the frozen pretrained BERT (`frozen_text_embeddings`),
    mean or [CLS] pooled over `template` rendered per item; cached by texts, model and pooling."""
    from encoders.text import frozen_text_embeddings
    from preprocessing.text import cached_tokenize
    if pooling not in ("mean", "cls"):
        raise DataError(f"fields.{field}.pooling must be 'mean' or 'cls', got {pooling!r}")
    ckpt = assets.resolve_checkpoint(checkpoint)
    if ckpt is None:
        raise DataError(f"fields.{field}.checkpoint: frozen text features need a pretrained BERT")
    texts, present = render_texts(items, field, template)
    present = np.asarray(present, dtype=bool)
    tokens = cached_tokenize(texts, ckpt, max_length, cache_dir)
    h = hashlib.sha256(tokens.ids.tobytes() + tokens.offsets.tobytes())
    h.update(json.dumps({"ckpt": str(ckpt), "pooling": pooling}).encode())
    weights = Path(ckpt) / "model.safetensors"
    if weights.exists():
        h.update(f"{weights.stat().st_size}".encode())
    path = Path(cache_dir) / "features" / f"frozen_text-{h.hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path), present
    content = TextContent(field, tokens, present)
    rows = np.arange(len(texts))
    batches = (content.collate(rows[s:s + batch_size]) for s in range(0, len(rows), batch_size))
    x = frozen_text_embeddings(ckpt, batches, pooling).float().numpy() if len(rows) else np.zeros((0, 1))
    x[~present] = 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    from preprocessing.files import atomic_path
    with atomic_path(path) as tmp:   # pid-named: runs started side by side share the cache
        np.save(tmp, x.astype(np.float32))
    return x.astype(np.float32), present


def _categories(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return [str(v) for v in value if v is not None and str(v).strip()]


def multihot_features(items, column: str, field: str = "features",
                      vocabulary: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Categorical metadata as multi-hot: ([n, |vocabulary|], present, vocabulary sorted)."""
    if column not in items.columns:
        raise DataError(f"fields.{field}.column: the items have no column '{column}' "
                        f"(columns: {list(items.columns)})")
    lists = [_categories(v) for v in items[column].tolist()]
    vocab = list(vocabulary) if vocabulary is not None else sorted({c for lst in lists for c in lst})
    index = {c: j for j, c in enumerate(vocab)}
    x = np.zeros((len(lists), max(len(vocab), 1)), dtype=np.float32)
    for r, lst in enumerate(lists):
        for c in lst:
            if c in index:
                x[r, index[c]] = 1.0
    return x, x.any(axis=1), vocab


def read_feature_file(folder: str | Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, x, present) of one feature set of an extract-features folder, checked."""
    folder = Path(folder)
    ids_path, x_path = folder / "item_ids.txt", folder / f"{name}.npy"
    for p in (ids_path, x_path):
        if not p.exists():
            have = sorted(q.stem for q in folder.glob("*.npy") if ".present" not in q.name) if folder.is_dir() else []
            raise DataError(f"{p}: file not found (feature sets in {folder}: {have or 'none'})")
    ids = np.asarray(ids_path.read_text().split("\n")[:-1] if ids_path.read_text() else [], dtype=object)
    try:
        x = np.load(x_path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{x_path}: not a numeric .npy array ({e})") from None
    if x.ndim != 2 or len(x) != len(ids):
        raise DataError(f"{x_path}: shape {x.shape} does not match the {len(ids)} ids of {ids_path} "
                        f"(expected [{len(ids)}, dim])")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(f"{x_path}: non-finite values in rows of items {list(ids[bad[:5]])}")
    pres_path = folder / f"{name}.present.npy"
    present = np.load(pres_path) if pres_path.exists() else np.ones(len(ids), dtype=bool)
    if len(set(ids)) != len(ids):
        raise DataError(f"{ids_path}: duplicate item ids")
    return ids, x.astype(np.float32), present.astype(bool)


@register_content("features")
def build_feature_content(name: str, spec: dict, ds: MultiModalDataset, cfg: dict) -> FeatureContent:
    source = spec["source"]
    items = ds.items
    report: dict = {"source": source}
    if source == "frozen_text":
        x, present = frozen_text_features(items, spec["template"], spec["checkpoint"], spec["pooling"],
                                          int(spec["max_length"]), cfg["data"]["cache_dir"], name)
    elif source == "multihot":
        x, present, vocab = multihot_features(items, spec["column"], name)
        report["vocabulary"] = vocab
    elif source == "file":
        if not spec.get("path"):
            raise DataError(f"fields.{name}.path: source 'file' needs the features folder")
        fname = spec.get("name") or name
        ids, fx, fpresent = read_feature_file(spec["path"], fname)
        pos = {str(i): r for r, i in enumerate(ids)}
        rows = np.array([pos.get(str(i), -1) for i in items["item_id"].astype(str)], dtype=np.int64)
        x = np.zeros((len(items), fx.shape[1]), dtype=np.float32)
        found = rows >= 0
        x[found] = fx[rows[found]]
        present = np.zeros(len(items), dtype=bool)
        present[found] = fpresent[rows[found]]
        report.update({"file": str(Path(spec["path"]) / f"{fname}.npy"),
                       "items_not_in_file": int((~found).sum()),
                       "examples_not_in_file": [str(i) for i in items["item_id"][~found][:5]]})
    else:
        raise DataError(f"fields.{name}.source: unknown source '{source}' ({' | '.join(FEATURE_SOURCES)})")
    if spec["normalize"]:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.where(n > 0, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)
    report.update({"dim": int(x.shape[1]), "items_with_features": int(present.sum())})
    return FeatureContent(name, x, present, report)
