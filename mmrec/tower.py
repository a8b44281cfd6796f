"""The Python API of a trained item tower, and its portable folder (docs/api.md).

    import mmrec
    tower = mmrec.ItemTower.from_pretrained("runs/ml100k-text")   # a run dir or a saved tower folder
    out = tower.encode(items_df)             # Embeddings: .ids, .vectors [N, D] or [N, S, D], .skipped
    users = mmrec.load_user_vectors("runs/ml100k-text")            # Embeddings of the run's users
    tower.save_pretrained("towers/ml100k-text")                    # config.json, model.safetensors, ...

`encode` is what `mmrec export RUN --items ITEMS` runs (`encode_table`, one code path): the table
is read as export reads it (`read_table`), every field's content is built by the same builders,
token cache and frame store as training (`mmrec.data.pipeline.build_content`), items with no
content field at all are skipped and reported (in = encoded + skipped), the rest are encoded in
batches of `eval.item_batch_size` by the tower in eval mode, on the GPU when there is one.

A tower folder (`save_pretrained`, `mmrec export RUN --save-tower DIR`) follows huggingface_hub's
`ModelHubMixin` layout, entirely offline (nothing here ever contacts the Hub):

  config.json        format `mmrec-item-tower`, format_version, the fields (templates, columns,
                     fps/size/clip_frames/segments), the encoders, model (dim, token_dim, fusion),
                     the output shape, what it was trained on and its metrics (`trained`)
  model.safetensors  the tower's tensors: the run's `item_encoder.*` WITHOUT the prefix
  encoders/<name>/   per text encoder: its tokenizer files (copied) and its BertConfig (config.json)
  README.md          the model card

`from_pretrained(folder)` needs nothing else: no run directory, no dataset, no pretrained
checkpoint (a pretrained BERT is rebuilt from its saved BertConfig, then loaded with the
folder's weights). Only the token cache and frame store of the items it encodes are written,
under `cache_dir` (default: `data.cache_dir` of configs/base.yaml, `.mmrec_cache`).
"""
from __future__ import annotations

import copy
import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmrec.config import ConfigError, load_config
from mmrec.data.content import collate_items
from mmrec.data.csv_rows import read_keyed_csv
from mmrec.data.fields import template_columns
from mmrec.data.pipeline import build_content
from mmrec.data.tables import DataError, MultiModalDataset, read_parquet_table
from mmrec.models import UserColdStartHead, load_run
from mmrec.runs import (TOWER_CARD, TOWER_CONFIG, TOWER_ENCODERS, TOWER_FORMAT, TOWER_VERSION,
                        TOWER_WEIGHTS, TowerError, is_run_dir, is_tower_dir, read_tower_config,
                        tower_weights)
from preprocessing.files import storage_failure, write_dir_atomic

# The tokenizer files copied from a text encoder's tokenizer folder (those present).
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# BertConfig entries that are not architecture (or come from the saved config.json itself).
_NOT_ARCHITECTURE = {"vocab_size", "pad_token_id", "transformers_version", "architectures", "model_type",
                     "_name_or_path", "dtype", "torch_dtype", "use_cache", "gradient_checkpointing",
                     "_attn_implementation", "_attn_implementation_autoset", "return_dict",
                     "output_hidden_states", "output_attentions", "id2label", "label2id"}
_OWNED = {TOWER_CONFIG, TOWER_WEIGHTS, TOWER_CARD, TOWER_ENCODERS}   # what a tower folder may hold


# ---------------------------------------------------------------------------------- results
@dataclass
class Embeddings:
    """Vectors with their ids, row r = `ids[r]`.

    ids:      str [N], in the input's order (items: minus the skipped ones)
    vectors:  float32 [N, D], or [N, S, D] with a video field (one vector per evaluation segment;
              score = max_s u . v_s)
    skipped:  the ids that were not encoded (items with no content field at all)
    report:   counts (items_read = items_encoded + items_skipped_no_content), skipped ids, the
              fields' reports (e.g. trailers that could not be decoded), the shape
    weights:  adaptive fusion only: the per-field weights [N(, S), C] (columns: `field_names`)
    """
    ids: np.ndarray
    vectors: np.ndarray
    skipped: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    weights: np.ndarray | None = None
    field_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.vectors.shape)

    def __array__(self, dtype=None, copy=None):
        return self.vectors if dtype is None else self.vectors.astype(dtype)


# ------------------------------------------------------------------------------ item tables
def read_table(source, kind: str = "item") -> pd.DataFrame:
    """An item (or user) table with a unique, non-empty `<kind>_id` column, ids as strings:
    a DataFrame (copied), a .parquet/.csv/.tsv file or a canonical dataset directory. A bad
    table is a one-line DataError naming the file (and the row)."""
    return read_table_with_root(source, kind)[0]


def read_table_with_root(source, kind: str = "item") -> tuple[pd.DataFrame, Path | None]:
    """(table, root): root is the folder relative content paths (trailers, images) are read from:
    a file's folder, a dataset directory's recorded root, None (the working directory) for a
    DataFrame."""
    key = f"{kind}_id"
    if isinstance(source, pd.DataFrame):
        where, df, root = "the item table" if kind == "item" else "the user table", source.copy(), None
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if path.is_dir():
            ds = MultiModalDataset.load(path)
            if kind == "item":
                df, root = ds.items, ds.root
            elif ds.users is None:
                raise DataError(f"{path}: the dataset has no users table")
            else:
                df, root = ds.users.copy(), ds.root
        elif path.suffix == ".parquet":
            df, root = read_parquet_table(path), path.parent
        elif path.suffix in (".csv", ".tsv"):   # bad rows are a DataError naming the line (csv_rows)
            df, root = read_keyed_csv(path, key, "\t" if path.suffix == ".tsv" else ","), path.parent
        else:
            raise DataError(f"{path}: {kind} table must be .parquet, .csv, .tsv or a processed dataset directory")
    if key not in df.columns:
        raise DataError(f"{where}: missing column '{key}' (columns: {list(df.columns)})")
    # (CSV rows were checked line by line in read_keyed_csv; here Parquet, dataset and DataFrame tables)
    empty = (df[key].isna() | (df[key].astype(object).where(df[key].notna(), "").astype(str).str.strip() == "")).to_numpy()
    df[key] = df[key].astype(str)
    dup = df[key].duplicated().to_numpy() & ~empty
    if empty.any() or dup.any():   # the earliest bad row, counted from 1
        r = int(np.flatnonzero(empty | dup)[0])
        raise DataError(f"{where} row {r + 1}: " + (f"empty {key}" if empty[r] else f"duplicate {key} {df[key].iloc[r]!r}"))
    return df, root


# ------------------------------------------------------------------------------ encoding
class _TowerModel:
    """An item encoder seen as the heads' scoring interface (`item_vectors_and_weights`), so the
    tower and a run's head go through the same `encode_items`."""

    def __init__(self, encoder: torch.nn.Module):
        self.encoder = encoder

    def item_vectors(self, content: dict) -> torch.Tensor:
        return self.encoder(content).v

    def item_vectors_and_weights(self, content: dict):
        out = self.encoder(content)
        return out.v, out.weights


@torch.no_grad()
def encode_table(model, cfg: dict, items: pd.DataFrame, root: Path | None, batch_size: int,
                 device="cpu", autocast=None, main_first=None, progress: bool = False,
                 field_names: list[str] | None = None) -> Embeddings:
    """Encode an item table (ids already checked, `read_table`) with `model`, anything with the
    item heads' `item_vectors_and_weights` (a run's head, or a tower). The content of `cfg`'s
    fields is built as in training; items with no field are skipped and reported. On many
    processes (`mmrec export` under a launcher) each encodes a block of batches, gathered once;
    `main_first`: a context in which the main process builds the caches first."""
    from mmrec.evaluation.ranking import encode_items
    empty = pd.DataFrame({"user_id": [], "item_id": [], "rating": [], "timestamp": []})
    ds = MultiModalDataset("items", items, empty, root=root)
    with (main_first() if main_first is not None else nullcontext()):
        content = build_content(cfg, ds)
    keep = np.stack([c.present for c in content.values()], axis=1).any(axis=1)
    rows = np.flatnonzero(keep)
    V, W = encode_items(model, None, rows, int(batch_size), device, autocast, progress=progress,
                        collate=lambda r, mode: collate_items(content, r, mode), with_weights=True)
    if len(rows) == 0:
        V = torch.zeros(0, int(cfg["model"]["dim"]))
    ids = items["item_id"].to_numpy()[rows]
    skipped = [str(i) for i in items["item_id"][~keep]]
    report = {"items_read": int(len(items)), "items_encoded": int(len(rows)),
              "items_skipped_no_content": int((~keep).sum()), "skipped_item_ids": skipped,
              "blank_lines_dropped": list(items.attrs.get("empty_rows", [])),   # CSV/TSV lines
              "fields": {n: c.report for n, c in content.items() if c.report},
              "embedding_shape": list(V.shape)}
    if report["items_encoded"] + report["items_skipped_no_content"] != report["items_read"]:
        raise AssertionError(f"encode: item counts do not add up: {report}")
    return Embeddings(ids, V.numpy(), skipped, report, None if W is None else W.numpy(),
                      list(field_names or cfg["fields"]))


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ------------------------------------------------------------------------------ the tower
class ItemTower:
    """A trained content item tower (every field's encoder and the fusion) with the
    preprocessing of its fields: raw item columns in, item vectors out.

    Build it with `from_pretrained` (a run directory or a saved tower folder). Attributes:
    `encoder` (the `encoders.item_encoder.ItemEncoder`, in eval mode), `config` (what
    config.json holds), `cfg` (the resolved mmrec config its preprocessing reads), `device`."""

    def __init__(self, encoder: torch.nn.Module, cfg: dict, config: dict, device=None, source: str | None = None):
        self.encoder = encoder.eval()
        self.cfg, self.config, self.source = cfg, config, source
        self.device = _device(device)
        self.encoder.to(self.device)

    # ------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device=None,
                        cache_dir: str | Path | None = None) -> "ItemTower":
        """The tower of a finished run directory (its best model; head `mmrec`) or of a saved
        tower folder. Local paths only: nothing is downloaded. `device`: default the GPU if
        there is one. `cache_dir`: where the token cache and frame store of encoded items go
        (default: the run's `data.cache_dir`, or for a folder configs/base.yaml's)."""
        path = Path(pretrained_model_name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory or item-tower folder "
                                    f"(ItemTower.from_pretrained reads local folders only)")
        if is_run_dir(path):
            return cls.from_run(path, device=device, cache_dir=cache_dir)
        return cls._from_folder(path, device, cache_dir)

    @classmethod
    def from_run(cls, run_dir: str | Path, *, device=None, cache_dir: str | Path | None = None) -> "ItemTower":
        """The best model's item tower of a finished run (what `mmrec export RUN` encodes with)."""
        cfg, _, model = load_run(run_dir)
        return cls.from_loaded(run_dir, cfg, model, device=device, cache_dir=cache_dir)

    @classmethod
    def from_loaded(cls, run_dir: str | Path, cfg: dict, model, device=None,
                    cache_dir: str | Path | None = None) -> "ItemTower":
        """The tower of a run already loaded (`load_run`); a head without a content tower (clcrec,
        sasrec, cmclrec) is a one-line ConfigError."""
        encoder = model.item_tower()
        if encoder is None:
            kind = ("its items are rows of an ID embedding table" if isinstance(model, UserColdStartHead)
                    else "it scores items from precomputed feature vectors")
            raise ConfigError(f"{run_dir}: head '{cfg['head']}' has no portable content item tower "
                              f"({kind}, not from raw content); `mmrec export {run_dir} --items ITEMS` "
                              f"embeds its items")
        cfg = copy.deepcopy(cfg)   # the head keeps its own
        if cache_dir is not None:
            cfg["data"]["cache_dir"] = str(cache_dir)
        return cls(encoder, cfg, _tower_config(Path(run_dir), cfg, encoder), device, str(run_dir))

    @classmethod
    def _from_folder(cls, folder: Path, device, cache_dir) -> "ItemTower":
        from encoders.item_encoder import ItemEncoder
        tc = read_tower_config(folder)
        config_file = folder / TOWER_CONFIG
        encoders = copy.deepcopy(tc["encoders"])
        for name, spec in encoders.items():
            if spec.get("type") == "bert":
                sub = folder / str(spec.get("tokenizer") or f"{TOWER_ENCODERS}/{name}")
                for needed in ("config.json", "vocab.txt"):
                    if not (sub / needed).is_file():
                        raise TowerError(f"{sub / needed}: missing (encoders.{name}'s tokenizer and "
                                         f"BertConfig); save the tower again", sub / needed)
                spec["tokenizer"] = str(sub.resolve())
        layer = {"plugins": list(tc.get("plugins") or []), "head": tc["head"], "fields": tc["fields"],
                 "encoders": encoders, "model": tc["model"],
                 "eval": {"item_batch_size": int(tc.get("item_batch_size") or 128)},
                 "train": {"progress": False}}
        if cache_dir is not None:
            layer["data"] = {"cache_dir": str(cache_dir)}
        try:
            cfg = load_config(None, layer)
            encoder = ItemEncoder(cfg["fields"], cfg["encoders"], cfg["model"])
        except (ConfigError, ValueError, KeyError, TypeError, OSError) as e:   # OSError: a bad BertConfig
            text = " ".join(str(e).split())
            raise TowerError(f"{config_file}: does not describe a tower this mmrec can build ({text})",
                             config_file) from None
        state = tower_weights(folder)
        own = encoder.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [k for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            weights = folder / TOWER_WEIGHTS
            parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                     f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                     f"{len(shapes)} of another shape (e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)}, "
                     f"config.json gives {tuple(own[shapes[0]].shape)})" if shapes else ""]
            raise TowerError(f"{weights}: its tensors do not fit {config_file}: "
                             + "; ".join(p for p in parts if p), weights)
        encoder.load_state_dict(state)
        return cls(encoder, cfg, tc, device, str(folder))

    # ------------------------------------------------------------------------ using it
    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def segments(self) -> int | None:
        """S of the [N, S, D] output with a video field, else None ([N, D])."""
        return self.config["segments"]

    @property
    def field_names(self) -> list[str]:
        return list(self.encoder.field_names)

    @property
    def batch_size(self) -> int:
        return int(self.cfg["eval"]["item_batch_size"])

    def to(self, device) -> "ItemTower":
        self.device = _device(device)
        self.encoder.to(self.device)
        return self

    def state_dict(self) -> dict:
        return self.encoder.state_dict()

    def fingerprint(self) -> str:
        """What identifies this tower (`tower_fingerprint`): the same for a run and the folder
        saved from it, different as soon as a weight or a preprocessing setting differs."""
        return tower_fingerprint(self.encoder, self.config)

    def encode(self, items, *, batch_size: int | None = None, root: str | Path | None = None,
               progress: bool = False, autocast=None) -> Embeddings:
        """Item vectors of a table of (new) items from their content: a DataFrame, a
        .parquet/.csv/.tsv file or a canonical dataset directory, with `item_id` and the columns
        the fields read (`config["inputs"]`). Items without any content field are skipped and
        named (`.skipped`, `.report`); the rest come back in the table's order. `root`: where
        relative trailer/image paths start (default: the file's folder; for a DataFrame the
        working directory). Deterministic: the tower is in eval mode and float32 unless
        `autocast` is given; `batch_size` defaults to the run's eval.item_batch_size (the batches
        `mmrec export` uses)."""
        table, found = read_table_with_root(items, "item")
        self.encoder.eval()
        return encode_table(_TowerModel(self.encoder), self.cfg, table,
                            Path(root) if root is not None else found, batch_size or self.batch_size,
                            self.device, autocast, progress=progress, field_names=self.field_names)

    __call__ = encode

    # ------------------------------------------------------------------------- saving
    def save_pretrained(self, save_directory: str | Path, *, push_to_hub: bool = False) -> Path:
        """Write the tower folder (module docstring; docs/api.md) atomically: a temporary
        sibling renamed into place, so a killed save leaves the previous folder or none. An
        existing `save_directory` is replaced only if it holds nothing but a tower's files."""
        if push_to_hub:
            raise ValueError("save_pretrained(push_to_hub=True): mmrec never contacts the Hub; "
                             "upload the saved folder yourself")
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise TowerError(f"{out}: exists and is not a folder", out)
        try:
            write_dir_atomic(out, self._write, owned=_OWNED)
        except FileExistsError as e:
            raise TowerError(f"--save-tower / save_pretrained: {e}", out) from None
        except Exception as e:
            failure = storage_failure(e, out)
            if failure is e:
                raise
            raise failure from e
        return out

    def _write(self, tmp: Path) -> None:
        from safetensors.torch import save_file
        state = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        # one metadata entry (the safetensors convention): several would be written in a random
        # order, and the same tower saved twice would not give the same bytes
        save_file(state, str(tmp / TOWER_WEIGHTS), metadata={"format": "pt"})
        config = dict(self.config, weights=dict(self.config["weights"], tensors=len(state)))
        for name, spec in config["encoders"].items():
            if spec.get("type") != "bert":
                continue
            src = Path(_tokenizer_dir(self.cfg["encoders"][name]))   # the run's, or this folder's copy
            dst = tmp / spec["tokenizer"]
            dst.mkdir(parents=True)
            copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
            if "vocab.txt" not in copied:
                raise DataError(f"encoders.{name}: its tokenizer folder {src} has no vocab.txt to copy")
            for f in copied:
                shutil.copyfile(src / f, dst / f)
            bert = self.encoder.encoders[name].bert.config
            (dst / "config.json").write_text(bert.to_json_string(use_diff=True))
        (tmp / TOWER_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
        (tmp / TOWER_CARD).write_text(model_card(config))


FINGERPRINT_KEYS = ("fields", "encoders", "model", "dim", "token_dim", "segments")


def tower_fingerprint(encoder: torch.nn.Module, config: dict) -> str:
    """`sha256:<hex>` of a tower's preprocessing and architecture (config.json's FINGERPRINT_KEYS,
    as canonical JSON) and of every tensor (name, dtype, shape, bytes). Recorded by `mmrec export`
    so that `--append` can refuse items encoded by another tower: their vectors would live in
    another space. Provenance (`trained`, paths) is left out, so a run and its saved folder agree."""
    import hashlib
    h = hashlib.sha256()
    h.update(json.dumps({k: config.get(k) for k in FINGERPRINT_KEYS}, sort_keys=True, default=str).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def run_fingerprint(run_dir: str | Path, cfg: dict, model) -> str | None:
    """The fingerprint of a loaded run's content tower (None for heads without one)."""
    encoder = model.item_tower()
    if encoder is None:
        return None
    return tower_fingerprint(encoder, json.loads(json.dumps(_tower_config(Path(run_dir), cfg, encoder),
                                                            default=str)))


def _tokenizer_dir(spec: dict) -> str:
    from encoders.text import tokenizer_path
    return tokenizer_path(spec)


def _bert_architecture(bert_config) -> dict:
    """A BertConfig's architecture entries (what `bert_config` of a from-scratch encoder takes)."""
    return {k: v for k, v in bert_config.to_diff_dict().items() if k not in _NOT_ARCHITECTURE}


def _tower_config(run_dir: Path, cfg: dict, encoder) -> dict:
    """config.json of a run's tower: everything `from_pretrained` rebuilds it from."""
    from importlib.metadata import PackageNotFoundError, version
    try:   # (not `mmrec.__version__`: importing the package from here would be an import cycle)
        mmrec_version = version("mmrec")
    except PackageNotFoundError:
        mmrec_version = None
    used = set(encoder.field_encoder.values())
    encoders = {}
    for name in sorted(used):
        spec = dict(cfg["encoders"][name])
        if spec.get("type") == "bert":
            bert = encoder.encoders[name].bert.config
            spec.update(checkpoint=None, tokenizer=f"{TOWER_ENCODERS}/{name}", num_layers=None,
                        bert_config=_bert_architecture(bert), freeze=False, freeze_layers=0,
                        cache_frozen=False)
        if "gradient_checkpointing" in spec:
            spec["gradient_checkpointing"] = False
        encoders[name] = spec
    fields = {n: dict(s) for n, s in cfg["fields"].items()}
    inputs = {}
    for n, s in fields.items():
        cols = template_columns(s["template"]) if s.get("modality") == "text" and "template" in s \
            else [s["column"]] if "column" in s else []
        inputs[n] = {"modality": s.get("modality"), "columns": cols}
    segments = [int(s["segments"]) for s in fields.values() if s.get("modality") == "video" and "segments" in s]
    S = max(segments) if segments else None
    read = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else {}   # noqa: E731
    metrics, report = read("metrics.json"), read("data_report.json")
    trained = {"run": str(run_dir), "name": cfg.get("name"), "head": cfg["head"],
               "data_source": cfg["data"].get("source"), "seed": cfg.get("seed"),
               "dataset": report.get("dataset"), "split": report.get("split"),
               "best_epoch": metrics.get("best_epoch"), "select_metric": metrics.get("select_metric"),
               "metrics": {p: metrics[p] for p in ("val", "test") if p in metrics},
               "baselines": metrics.get("baselines") or {},
               "transfer": metrics.get("transfer"),
               "text_checkpoints": {n: {"checkpoint": cfg["encoders"][n].get("checkpoint"),
                                        "tokenizer": cfg["encoders"][n].get("tokenizer")}
                                    for n in sorted(used) if cfg["encoders"][n].get("type") == "bert"},
               "config": cfg}
    return {"format": TOWER_FORMAT, "format_version": TOWER_VERSION, "mmrec_version": mmrec_version,
            "head": cfg["head"], "plugins": list(cfg.get("plugins") or []),
            "dim": int(cfg["model"]["dim"]), "token_dim": int(cfg["model"]["token_dim"]),
            "segments": S, "output": "[N, S, D]" if S else "[N, D]",
            "score": "u . v" if not S else "max_s u . v_s",
            "inputs": inputs, "fields": fields, "encoders": encoders, "model": cfg["model"],
            "item_batch_size": int(cfg["eval"]["item_batch_size"]),
            "weights": {"file": TOWER_WEIGHTS, "prefix": "", "source_prefix": "item_encoder.",
                        "dtype": "float32"},
            "trained": trained}


# ------------------------------------------------------------------------------ model card
def model_card(config: dict) -> str:
    """README.md of a tower folder (huggingface_hub's model-card layout: YAML metadata, then
    Markdown), made from its config.json alone."""
    t = config.get("trained") or {}
    split, m = t.get("split") or {}, t.get("metrics") or {}
    name = t.get("name") or "item tower"
    lines = ["---", "library_name: mmrec", "tags: [recommendation, cold-start, item-tower, multimodal]",
             f"datasets: [{t.get('data_source')}]", "---", "",
             f"# mmrec item tower: {name}", "",
             f"The content item tower of an `mmrec` run (head `{config['head']}`): each item's content "
             f"fields through their encoders, fused into one vector of dimension {config['dim']} "
             f"(output {config['output']}; score an item for a user as {config['score']}).", "",
             "## Use", "", "```python", "import mmrec",
             "tower = mmrec.ItemTower.from_pretrained(\"path/to/this/folder\")",
             "out = tower.encode(items_df)   # out.ids, out.vectors, out.skipped", "```", "",
             "## Inputs", "", "An item table with `item_id` and these columns:", ""]
    for n, inp in (config.get("inputs") or {}).items():
        spec = config["fields"].get(n, {})
        what = f"template `{spec['template']}`" if "template" in spec else f"column `{spec.get('column')}`"
        extra = ", ".join(f"{k} {spec[k]}" for k in ("max_length", "fps", "size", "clip_frames", "segments")
                          if k in spec)
        lines.append(f"- `{n}` ({inp['modality']}): {what}" + (f"; {extra}" if extra else "")
                     + f"; encoder `{spec.get('encoder')}`")
    fusion = config["model"].get("fusion", {})
    lines += [f"- fusion: `{fusion.get('type')}`; token_dim {config['token_dim']}, dim {config['dim']}", "",
              "## Training data", "",
              f"Data source `{t.get('data_source')}`, seed {t.get('seed')}, run `{t.get('run')}`."]
    lines += [f"    {line}" for line in (t.get("dataset") or [])]
    if split:
        lines += ["", f"Cold-item split: {split.get('users')} users, items train / val / test "
                      f"{split.get('train_items')} / {split.get('val_items')} / {split.get('test_items')} "
                      f"(positives {split.get('train_positives')} / {split.get('val_positives')} / "
                      f"{split.get('test_positives')}); the val and test items were never trained on."]
    if t.get("transfer"):
        lines += ["", f"Transferred from `{t['transfer'].get('from_run')}` ({t['transfer'].get('mode')})."]
    lines += ["", "## Metrics", ""]
    if m:
        keys = [k for k in next(iter(m.values())) if k.split("@")[0] in ("ndcg", "recall", "precision")]
        lines += [f"Best epoch {t.get('best_epoch')} (selected by validation {t.get('select_metric')}); "
                  f"cold items of each part ranked for the users who rated them.", "",
                  "| split | users | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for part, vals in m.items():
            lines.append(f"| {part} | {vals.get('users', '')} | " + " | ".join(f"{vals[k]:.4f}" for k in keys) + " |")
        for b, parts in (t.get("baselines") or {}).items():
            if isinstance(parts, dict) and isinstance(parts.get("test"), dict):
                lines.append(f"| test, baseline `{b}` | | " + " | ".join(
                    f"{parts['test'][k]:.4f}" if k in parts["test"] else "" for k in keys) + " |")
    else:
        lines.append("Not recorded (the run had no metrics.json).")
    lines += ["", "## Training", "",
              "Trained with `mmrec train --config config.yaml` on this resolved config (the run's "
              "config.yaml; `trained.config` of config.json):", "", "<details><summary>config.yaml</summary>", "",
              "```yaml", _yaml(t.get("config") or {}).rstrip(), "```", "", "</details>", "",
              "## Limitations", "",
              "- Made for cold items: it embeds any item from its content alone; it has no ID embedding "
              "of the training items.",
              "- The users are not in the tower: user vectors live in the run (`mmrec.load_user_vectors(RUN)`, "
              "`mmrec export RUN`); a new dataset's users must be trained (`mmrec transfer --from THIS_FOLDER`).",
              "- Inputs must look like the training data: the same columns and templates, trailers decoded "
              "at the same fps and size; other domains or languages are untested.",
              f"- Metrics are on {t.get('data_source')}'s cold split only; text uses the tokenizer in "
              f"`{TOWER_ENCODERS}/`.", ""]
    return "\n".join(lines)


def _yaml(obj) -> str:
    import yaml
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------ users
def load_user_vectors(run_dir: str | Path, *, device=None) -> Embeddings:
    """The run's user vectors with their ids, as `mmrec export` writes them (user_embeddings.npy,
    user_ids.txt): the user table of an item cold-start head (score = u . v), each user's sequence
    state for the user cold-start heads. A tower folder holds no users: a one-line error."""
    path = Path(run_dir)
    if path.is_dir() and not is_run_dir(path):
        if is_tower_dir(path):
            raise TowerError(f"{path}: an item-tower folder holds no users (they are not part of the "
                             f"tower); pass the run directory it was saved from", path / TOWER_CONFIG)
        raise FileNotFoundError(f"{path}: not a run directory (no config.yaml)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    from mmrec.evaluation.ranking import user_vectors
    cfg, split, model = load_run(path)
    dev = _device(device)
    model.to(dev)
    if isinstance(model, UserColdStartHead):
        from mmrec.models.sasrec import StateScorer
        U = StateScorer(model, dev).states(np.arange(split.n_users))
    else:
        U = user_vectors(model, split.n_users, dev)
    ids = split.user_ids.astype(str).astype(object)   # Python str, as the item ids
    return Embeddings(ids, U.numpy(), [], {"users": int(split.n_users), "head": cfg["head"],
                                           "embedding_shape": list(U.shape)})
