"""Cached output of the frozen bottom of pretrained text encoders (issue 16, item 4).

With `encoders.<name>.cache_frozen: true`, a BERT whose embeddings and first layers are frozen
(`freeze_layers`, or everything with `freeze`) computes their output for every item once per run,
here, instead of at every step; a step then runs only the trainable layers above (a 6-layer
MiniLM with 4 frozen runs 2 of its 6 layers forward). The hidden states of every dataset row are
stored as one memory-mapped .npy, float32 [n_rows, max_len, H], under
`<data.cache_dir>/text_frozen/`; `TextContent` then serves them as `frozen_hidden`, in
training and in evaluation alike.

Every row is computed padded to the field's longest text, as one batch of the uncached path pads
to its own longest: a padding position's state does not depend on how far the padding goes (it
only attends to real tokens), so a cut row equals what the uncached path computes for that batch,
padding positions included, up to the float summation order of the longer padded length.

The file is named by a hash of everything its bytes depend on: the frozen weights themselves
(`BertTextEncoder.frozen_fingerprint`: checkpoint, `num_layers`, a from-scratch seed, a transferred
tower), the frozen depth, the token content of the field, the layout and the torch and
transformers versions.
So a re-run, another config sharing the field's texts and frozen bottom, or a resumed run reuse
it, and anything else gets its own file.

Ranks: model building runs on every process of a launch and has no barrier, so every process
that finds no valid file computes it and renames it into place through a pid-named temporary
(preprocessing/files.py). The bytes are the same function of the same inputs, a reader sees one
complete file or another, and a worker keeps the file it opened even if a later rename replaces it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.config import ConfigError
from preprocessing.files import atomic_path, stale_tmp

log = logging.getLogger("mmrec")

# Bumped when the file's layout or its computation changes, so old files are not reused.
CACHE_FORMAT = 1
BUILD_BATCH = 64   # rows per frozen forward while building


def attach_text_caches(item_encoder, prepared, cfg: dict) -> dict:
    """Build (or reuse) the frozen-bottom cache of every text field whose encoder has
    `cache_frozen`, and attach it to the field's provider in `prepared.content`; providers of
    the other text fields are detached, so a prepared dataset reused for a model without the
    cache gets plain token batches. Returns field -> {path, layers, bytes, built, seconds}."""
    from encoders.text import BertTextEncoder
    from mmrec.data.content import TextContent
    attached: dict[str, dict] = {}
    for name, fspec in cfg["fields"].items():
        provider = prepared.content.get(name)
        if fspec.get("modality") != "text" or not isinstance(provider, TextContent):
            continue
        enc_name = item_encoder.field_encoder[name]
        encoder = item_encoder.encoders[enc_name]
        flag = cfg["encoders"][enc_name].get("cache_frozen", False)
        if not isinstance(flag, bool):
            raise ConfigError(f"encoders.{enc_name}.cache_frozen={flag!r} must be true or false")
        if not flag or not isinstance(encoder, BertTextEncoder):
            provider.use_frozen_cache(None)
            continue
        layers = encoder.cacheable_layers()
        if layers == 0:
            raise ConfigError(f"encoders.{enc_name}.cache_frozen: true needs a frozen bottom to cache; set "
                              f"encoders.{enc_name}.freeze_layers > 0 or encoders.{enc_name}.freeze: true "
                              f"(or cache_frozen: false)")
        _load_transferred_bottom(encoder, enc_name, cfg)
        t0 = time.perf_counter()
        path, shape, built = build_frozen_cache(encoder, provider.tokens, Path(cfg["data"]["cache_dir"]),
                                                provider.pad_id)
        provider.use_frozen_cache(path, shape)
        attached[name] = {"path": str(path), "layers": layers, "bytes": int(np.prod(shape)) * 4,
                          "shape": list(shape), "built": built,
                          "seconds": round(time.perf_counter() - t0, 3)}
    if attached:
        log.info("frozen text cache: " + "; ".join(
            f"{n}: {a['layers']} frozen layers, {a['bytes'] / 2 ** 20:.1f} MiB, "
            f"{'built' if a['built'] else 'reused'} in {a['seconds']:.1f}s ({a['path']})"
            for n, a in attached.items()))
    return attached


def cache_key(encoder, tokens, max_len: int, pad_id: int) -> str:
    import transformers
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "torch": torch.__version__,
                                   "transformers": transformers.__version__, "dtype": "float32",
                                   "layers": encoder.cacheable_layers(), "max_len": int(max_len),
                                   "pad_id": int(pad_id), "n": len(tokens)}, sort_keys=True).encode())
    h.update(encoder.frozen_fingerprint().encode())
    h.update(np.ascontiguousarray(tokens.offsets, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(tokens.ids, dtype=np.int32).tobytes())
    return h.hexdigest()[:24]


def _valid(path: Path, shape: tuple[int, ...]) -> bool:
    """A complete cache file of this shape (a truncated or foreign file is rebuilt)."""
    try:
        mm = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    ok = mm.shape == shape and mm.dtype == np.float32
    del mm
    return ok


def build_frozen_cache(encoder, tokens, cache_dir: Path, pad_id: int = 0,
                       batch_size: int = BUILD_BATCH) -> tuple[Path, tuple[int, ...], bool]:
    """(path, shape, built): the cache file of these tokens through the encoder's frozen bottom,
    computed unless a valid one is already there."""
    lengths = tokens.lengths()
    n, max_len = len(lengths), int(lengths.max()) if len(lengths) else 1
    shape = (n, max_len, int(encoder.bert.config.hidden_size))
    path = cache_dir / "text_frozen" / f"bert{encoder.cacheable_layers()}-{cache_key(encoder, tokens, max_len, pad_id)}.npy"
    if _valid(path, shape):
        return path, shape, False
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f"{path.name}.*.tmp.npy"):   # left by killed builds (GBs at scale)
        if stale_tmp(old):
            old.unlink(missing_ok=True)
    param = next(encoder.parameters())
    home = param.device
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else home
    encoder.to(device)
    try:
        with atomic_path(path, "set data.cache_dir to a disk with room, or encoders.*.cache_frozen: false") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for s in range(0, n, batch_size):
                rows = range(s, min(s + batch_size, n))
                ids = np.full((len(rows), max_len), pad_id, dtype=np.int64)
                mask = np.zeros((len(rows), max_len), dtype=np.int64)
                for r, i in enumerate(rows):
                    seq = tokens.get(i)
                    ids[r, :len(seq)] = seq
                    mask[r, :len(seq)] = 1
                hidden = encoder.frozen_forward(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                out[s:s + len(rows)] = hidden.float().cpu().numpy()
            out.flush()
            del out
    finally:
        encoder.to(home)
    return path, shape, True


def _load_transferred_bottom(encoder, enc_name: str, cfg: dict) -> None:
    """With `transfer.from_run`, the trainer loads the source run's item tower only after the
    model is built, i.e. after this cache; its frozen bottom is loaded into the encoder here
    first, so the cache is computed from the weights the run will have (on `--resume` too: the
    run's checkpoint holds the same transferred weights). A source that does not fit is left to
    the transfer's own error."""
    src = (cfg.get("transfer") or {}).get("from_run")
    if not src:
        return
    from mmrec.runs import source_item_state
    state = source_item_state(src)
    prefix = f"encoders.{enc_name}."
    own = {}
    for i, module in enumerate(encoder.frozen_modules()):
        sub = "bert.embeddings." if i == 0 else f"bert.encoder.layer.{i - 1}."
        own.update({prefix + sub + k: t for k, t in module.state_dict().items()})
    if any(k not in state or state[k].shape != t.shape for k, t in own.items()):
        return
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(t.dtype))
