"""Precomputed per-item features: the `features` content modality and `mmrec extract-features`.

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
import torch.nn.functional as F

from mmrec import assets
from mmrec.data.content import TextContent, register_content
from mmrec.data.fields import register_modality, render_texts
from mmrec.data.tables import DataError, MultiModalDataset

FEATURE_SOURCES = ("file", "frozen_text", "multihot")

register_modality("features", {
    "source": "file",        # file: <path>/<name>.npy + <path>/item_ids.txt (mmrec extract-features)
                             # | frozen_text: a frozen pretrained BERT over `template` | multihot: `column`
    "path": None,            # file: the features folder
    "name": None,            # file: which <name>.npy (null: the field's name)
    "template": "{title}",   # frozen_text: item columns rendered to one text
    "checkpoint": "minilm",  # frozen_text: 'minilm' (installed) or a local HF BERT path
    "pooling": "mean",       # frozen_text: mean | cls
    "max_length": 64,        # frozen_text: WordPiece tokens
    "column": "genres",      # multihot: an item column of category lists (or single categories)
    "normalize": True,       # L2-normalise every item's vector (as the official CLCRec code does)
})


class FeatureContent:
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


# ------------------------------------------------------------------------- run / timm extraction
@torch.no_grad()
def run_field_features(run_dir: str | Path, ds: MultiModalDataset, fields: list[str] | None = None,
                       batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-field z vectors (the encoder's aggregate after projection, before fusion) of a trained
    mmrec run, for every item of `ds`; video fields: the mean over the S evaluation segments."""
    from mmrec.data.content import collate_items
    from mmrec.data.pipeline import build_content
    from mmrec.export import load_trained
    cfg, _, model = load_trained(run_dir)
    if not hasattr(model, "item_encoder"):
        raise DataError(f"{run_dir}: head '{cfg['head']}' has no content encoders to extract from")
    names = fields or list(cfg["fields"])
    unknown = [n for n in names if n not in cfg["fields"]]
    if unknown:
        raise DataError(f"--run-fields: {unknown} are not fields of {run_dir} ({list(cfg['fields'])})")
    content = build_content(cfg, ds)
    outs: dict[str, list] = {n: [] for n in names}
    for s in range(0, len(ds.items), batch_size):
        rows = np.arange(s, min(s + batch_size, len(ds.items)))
        out = model.item_encoder(collate_items(content, rows, "eval"))
        for n in names:
            z = out.z[n].float()
            outs[n].append((z.mean(1) if z.dim() == 3 else z).numpy())
    return {n: (np.concatenate(outs[n]), np.asarray(content[n].present, dtype=bool)) for n in names}


def load_timm_model(name: str, weights: str | Path):
    """A timm model with its classifier removed, weights from a local file (.safetensors/.pth)."""
    import timm
    weights = Path(weights)
    if not weights.exists():
        raise DataError(f"--timm-weights {weights}: file not found")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}       # the classifier head is dropped
    missing = [k for k in own if k not in state]
    if missing:
        raise DataError(f"--timm-weights {weights}: {len(missing)} parameters of timm '{name}' are "
                        f"missing, e.g. {missing[:3]} (is this the right model?)")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise DataError(f"--timm-weights {weights}: shape mismatch for {bad[:3]} in timm '{name}'")
    model.load_state_dict(state)
    return model.eval()


def _pixel_batches(content, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pictures [B, k, H, W, 3] and their mask [B, k] of an image field (the stills) or a
    video field (the centre frame of the middle evaluation segment)."""
    batch = content.collate(rows, "eval")
    if "images" in batch:
        return batch["images"], batch["image_mask"] & batch["present"][:, None]
    frames = batch["frames"]                       # [B, S, F, H, W, 3]
    S, Fr = frames.shape[1], frames.shape[2]
    return frames[:, S // 2, Fr // 2][:, None], batch["present"][:, None]


@torch.no_grad()
def timm_features(model, content, n_items: int, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """([n, model.num_features], present): the model's pooled features, mean over an item's pictures."""
    cfg = model.pretrained_cfg or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    out = np.zeros((n_items, int(model.num_features)), dtype=np.float32)
    present = np.zeros(n_items, dtype=bool)
    for s in range(0, n_items, batch_size):
        rows = np.arange(s, min(s + batch_size, n_items))
        pics, mask = _pixel_batches(content, rows)
        B, k = mask.shape
        x = pics.reshape(B * k, *pics.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        feats = model((x - mean) / std).float().view(B, k, -1)
        m = mask.float().unsqueeze(-1)
        out[rows] = ((feats * m).sum(1) / m.sum(1).clamp_min(1.0)).numpy()
        present[rows] = mask.any(1).numpy()
    return out, present


# ------------------------------------------------------------------------------- writing
def write_feature_set(out: Path, name: str, x: np.ndarray, present: np.ndarray, info: dict,
                      vocab: list[str] | None = None) -> dict:
    x = np.asarray(x, dtype=np.float32)
    x[~present] = 0.0
    np.save(out / f"{name}.npy", x)
    np.save(out / f"{name}.present.npy", np.asarray(present, dtype=bool))
    if vocab is not None:
        (out / f"{name}.vocab.txt").write_text("".join(f"{c}\n" for c in vocab))
    return {**info, "file": f"{name}.npy", "dim": int(x.shape[1]),
            "items_without_input": int((~present).sum())}


def extract_features(cfg: dict, out: str | Path, text: bool = False, pooling: str | None = None,
                     run: str | None = None, run_fields: list[str] | None = None,
                     timm_model: str | None = None, timm_weights: str | None = None,
                     timm_field: str | None = None, multihot: list[str] | None = None,
                     clcrec_layout: bool = False, layout_map: dict[str, list[str]] | None = None,
                     warm_holdout: float = 0.0) -> dict:
    """Write the requested feature sets for every item of the config's data source (see module doc).

    text: each text field of the config through its encoder's pretrained BERT, frozen (`pooling`
    or the encoder's own). run: a trained mmrec run's per-field z vectors. timm: any timm model with
    local weights over the stills/centre frames of the config's image/video field. multihot: item
    columns of categories. clcrec_layout: also the official CLCRec files, from the config's split."""
    from mmrec.data.pipeline import build_content, load_source
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_source(cfg["data"])
    items = ds.items
    info: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    if text:
        names = [n for n, f in cfg["fields"].items() if f["modality"] == "text"]
        if not names:
            raise DataError("--text: the config has no text field (fields.<name>.modality: text)")
        for n in names:
            spec = cfg["fields"][n]
            enc = cfg["encoders"][spec["encoder"]]
            pool = pooling or enc.get("pooling", "mean")
            x, present = frozen_text_features(items, spec["template"], enc.get("checkpoint") or "minilm",
                                              pool, int(spec["max_length"]), cfg["data"]["cache_dir"], n)
            info[n] = write_feature_set(out, n, x, present, {"extractor": "frozen_bert", "pooling": pool,
                                                             "checkpoint": enc.get("checkpoint") or "minilm",
                                                             "template": spec["template"]})
            kinds[n] = "t"
    if run:
        for n, (x, present) in run_field_features(run, ds, run_fields).items():
            name = f"run_{n}"
            info[name] = write_feature_set(out, name, x, present, {"extractor": "mmrec_run", "run": str(run),
                                                                   "field": n})
            kinds[name] = "t" if "text" in n else "v"
    if timm_model:
        if not timm_weights:
            raise DataError("--timm-model needs --timm-weights (a local weights file; nothing is downloaded)")
        vis = [n for n, f in cfg["fields"].items() if f["modality"] in ("image", "video")]
        field = timm_field or (vis[0] if vis else None)
        if field is None or field not in vis:
            raise DataError(f"--timm-field: the config needs an image or video field to read pictures "
                            f"from (its image/video fields: {vis or 'none'})")
        content = build_content({**cfg, "fields": {field: cfg["fields"][field]}}, ds)[field]
        model = load_timm_model(timm_model, timm_weights)
        x, present = timm_features(model, content, len(items))
        name = f"timm_{timm_model}".replace("/", "_")
        info[name] = write_feature_set(out, name, x, present, {"extractor": "timm", "model": timm_model,
                                                               "weights": str(timm_weights), "field": field})
        kinds[name] = "v"
    for column in multihot or []:
        x, present, vocab = multihot_features(items, column, column)
        info[column] = write_feature_set(out, column, x, present, {"extractor": "multihot", "column": column},
                                         vocab)
        kinds[column] = "m"
    if not info:
        raise DataError("extract-features: nothing to extract (give --text, --run, --timm-model or --multihot)")
    (out / "item_ids.txt").write_text("".join(f"{i}\n" for i in items["item_id"].astype(str)))
    report = {"dataset": ds.name, "items": int(len(items)), "features": info}
    if clcrec_layout:
        from mmrec.data.clcrec_format import write_official
        from mmrec.data.pipeline import prepare
        mapping = layout_map or {}
        if not mapping:
            for name, kind in kinds.items():
                if kind in ("t", "v"):
                    mapping.setdefault(kind, []).append(name)
        if not mapping:
            raise DataError("--clcrec-layout: say which feature sets go to feat_t/feat_v/feat_a "
                            "(e.g. --feat t=genres)")
        for letter, names in mapping.items():
            unknown = [n for n in names if n not in info]
            if letter not in ("t", "v", "a") or unknown:
                raise DataError(f"--feat {letter}={','.join(names)}: letters are t, v, a and names must be "
                                f"extracted feature sets ({list(info)})")
        prepared = prepare(cfg)
        ids = items["item_id"].astype(str).to_numpy()
        pos = {i: r for r, i in enumerate(ids)}
        rows = np.array([pos[i] for i in prepared.split.item_ids.astype(str)])
        feats = {}
        for letter, names in mapping.items():
            parts = [np.load(out / f"{n}.npy")[rows] for n in names]
            feats[letter] = np.concatenate(parts, axis=1)
        layout = write_official(prepared.split, out / "clcrec", feats, warm_holdout=warm_holdout,
                                seed=int(cfg["split"]["seed"]))
        report["clcrec_layout"] = {"folder": "clcrec", "features": {f"feat_{k}": v for k, v in mapping.items()},
                                   **layout}
    (out / "features.json").write_text(json.dumps(report, indent=1))
    return report
