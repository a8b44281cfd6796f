"""From a config to everything training needs: tables, content fields, split, content providers.

The canonical tables of a source are cached under `data.cache_dir`, keyed by the reader options
and the source files' sizes and modification times, so large sources (MovieLens-25M) are parsed
once. Items none of whose content fields is present are dropped, counted and reported.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrec import features as _features  # noqa: F401  (registers the `features` builder)
from mmrec.data import visual as _visual  # noqa: F401  (registers the video and image builders)
from mmrec.data.content import CONTENT_BUILDERS, TextContent, collate_items, register_content
from mmrec.data.fields import render_texts
from mmrec.data.readers import read_dataset, reader_of
from mmrec.plugins import load_plugins
from mmrec.registry import Registry
from mmrec.data.split import Split, make_split
from mmrec.data.tables import DataError, MultiModalDataset

READER_KEYS = ("source", "path", "synopsis_file", "trailer_dir", "on_bad_row")


# Bumped whenever a reader's output can change for the same files, so old caches are not reused
# (2: the row-checked pyarrow CSV path, which no longer shifts columns on an extra first-row field;
# 3: ml25m ids are integers, so '007' comes out as '7').
READER_VERSION = 3


def source_key(data_cfg: dict) -> str:
    keys = {k: data_cfg.get(k) for k in READER_KEYS}
    keys["reader_version"] = READER_VERSION
    h = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    for p in reader_of(data_cfg).source_files(data_cfg):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# `data.<key>: true` -> hook(dataset, data_cfg), run on the canonical tables after reading (e.g.
# mmrec.synthetic's `standin_trailers`). A plug-in adds one with `register_dataset_hook`.
DATASET_HOOKS = Registry("dataset hook")


def register_dataset_hook(key: str):
    return DATASET_HOOKS.register(key)


def load_source(data_cfg: dict, use_cache: bool = True) -> MultiModalDataset:
    """The source as canonical tables, read once and cached (plus stand-in trailers if asked)."""
    if not reader_of(data_cfg).cached:   # already a canonical directory
        ds = read_dataset(data_cfg)
    else:
        cache = Path(data_cfg["cache_dir"]) / "datasets" / f"{data_cfg['source']}-{source_key(data_cfg)}"
        if use_cache and (cache / "report.json").exists():
            ds = MultiModalDataset.load(cache)
        else:
            ds = read_dataset(data_cfg)
            if use_cache:   # atomically (a killed run leaves no half cache), and read back, so a
                # cache hit and a miss give the same tables, dtypes included, byte for byte
                ds = MultiModalDataset.load(ds.save_atomic(cache))
    load_plugins()
    for key in DATASET_HOOKS:
        if data_cfg.get(key):
            DATASET_HOOKS[key](ds, data_cfg)
    return ds


@register_content("text")
def build_text_content(name: str, spec: dict, ds: MultiModalDataset, cfg: dict) -> TextContent:
    from encoders.text import tokenizer_path
    from preprocessing.text import cached_tokenize
    texts, present = render_texts(ds.items, name, spec["template"])
    enc = cfg["encoders"].get(spec["encoder"])
    if enc is None:
        raise DataError(f"fields.{name}.encoder: no encoder named '{spec['encoder']}'")
    tokens = cached_tokenize(texts, tokenizer_path(enc), spec["max_length"], cfg["data"]["cache_dir"])
    return TextContent(name, tokens, np.asarray(present))


@dataclass
class PreparedData:
    dataset: MultiModalDataset
    split: Split
    content: dict                  # field name -> provider indexed by dataset row
    item_rows: np.ndarray          # split item index -> dataset row
    report: dict = field(default_factory=dict)
    warm: dict = field(default_factory=dict)   # part -> CSR of warm items' held-out interactions,
                                               # where the source has them (official CLCRec folders)

    def collate(self, items: np.ndarray, mode: str = "eval", seeds: np.ndarray | None = None) -> dict:
        return collate_items(self.content, self.item_rows[np.asarray(items, dtype=np.int64)], mode, seeds)

    def field_present(self, name: str) -> np.ndarray:
        return self.content[name].present[self.item_rows]


def build_content(cfg: dict, ds: MultiModalDataset) -> dict:
    content = {}
    for name, spec in cfg["fields"].items():
        builder = CONTENT_BUILDERS.get(spec["modality"])
        if builder is None:
            raise DataError(f"fields.{name}: no content builder for modality '{spec['modality']}'")
        content[name] = builder(name, spec, ds, cfg)
    return content


# Modalities whose content every process of a launch builds together, each its share
# (`prepare(across_processes=True)`): decoding trailers is the cost worth spreading.
SHARED_MODALITIES = ("video",)


def prepare(cfg: dict, split: Split | None = None, accelerator=None,
            across_processes: bool = False) -> PreparedData:
    """Everything a run needs. With an accelerator, the main process builds caches first.
    across_processes (`mmrec preprocess` under a launcher, its process group started): the main
    process reads the source and builds the other caches first, then every process decodes its
    share of the trailers into the shared frame store (mmrec/data/visual.py)."""
    from mmrec.distributed import is_distributed
    if across_processes and is_distributed():
        ds, content = _content_across_processes(cfg)
    else:
        first = accelerator.main_process_first() if accelerator is not None else nullcontext()
        with first:
            ds = load_source(cfg["data"])
            content = build_content(cfg, ds)
    present = np.stack([c.present for c in content.values()], axis=1)
    keep = present.any(axis=1)
    report = {"dataset": ds.summary_lines(),
              "fields_present": {n: int(c.present.sum()) for n, c in content.items()},
              "items_without_content": {"count": int((~keep).sum()),
                                        "examples": [str(x) for x in ds.items["item_id"][~keep][:20]]},
              "fields": {n: c.report for n, c in content.items() if c.report}}
    if split is None:
        split = make_split(ds, cfg["data"], cfg["split"], keep)
    rows = np.flatnonzero(keep)
    if len(rows) != split.n_items or not np.array_equal(ds.items["item_id"].to_numpy()[rows].astype(str),
                                                       split.item_ids.astype(str)):
        raise DataError("the saved split does not match the dataset's items; was the data changed?")
    report["split"] = split.stats
    return PreparedData(ds, split, content, rows, report)


def _content_across_processes(cfg: dict) -> tuple[MultiModalDataset, dict]:
    """The source and content of every field, built by the processes of a launch: the source
    and the caches of the other fields on rank 0 first (its errors reach every rank), then read
    from those caches by the others; the video fields by all ranks together."""
    from mmrec.data.visual import across_processes
    from mmrec.distributed import run_on_main
    fields = cfg["fields"]
    shared = {n: s for n, s in fields.items() if s["modality"] in SHARED_MODALITIES}
    alone = {**cfg, "fields": {n: s for n, s in fields.items() if n not in shared}}
    built = {}

    def first():
        built["ds"] = load_source(cfg["data"])
        built["content"] = build_content(alone, built["ds"])
    run_on_main(first)
    if not built:   # not rank 0: the caches are there now
        first()
    with across_processes():
        built["content"].update(build_content({**cfg, "fields": shared}, built["ds"]))
    return built["ds"], {n: built["content"][n] for n in fields}
