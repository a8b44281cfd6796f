"""`mmrec extract-features`: per-item feature sets from a frozen BERT, a trained run's towers, a
timm image model or multi-hot columns, written as a features folder (layout: mmrec/features.py)
for the heads that work on precomputed features (CLCRec), optionally in the official CLCRec
layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrec.data.tables import DataError, MultiModalDataset
from mmrec.features import frozen_text_features, multihot_features


@torch.no_grad()
def run_field_features(run_dir: str | Path, ds: MultiModalDataset, fields: list[str] | None = None,
                       batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-field z vectors (the encoder's aggregate after projection, before fusion) of a trained
    mmrec run, for every item of `ds`; video fields: the mean over the S evaluation segments."""
    from mmrec.data.content import collate_items
    from mmrec.data.pipeline import build_content
    from mmrec.models import load_run
    cfg, _, model = load_run(run_dir)
    if model.item_tower() is None:
        raise DataError(f"{run_dir}: head '{cfg['head']}' has no content encoders to extract from")
    names = fields or list(cfg["fields"])
    unknown = [n for n in names if n not in cfg["fields"]]
    if unknown:
        raise DataError(f"--run-fields: {unknown} are not fields of {run_dir} ({list(cfg['fields'])})")
    content = build_content(cfg, ds)
    outs: dict[str, list] = {n: [] for n in names}
    for s in range(0, len(ds.items), batch_size):
        rows = np.arange(s, min(s + batch_size, len(ds.items)))
        out = model.item_tower()(collate_items(content, rows, "eval"))
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
            if pool == "attention":   # a frozen BERT has no learned query; attention pooling starts as mean
                pool = "mean"
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
