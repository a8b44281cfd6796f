"""Tokenise each text field once with a BERT WordPiece vocabulary and cache the token ids.

Tokens are stored ragged (one flat int32 array plus offsets), unpadded: batches are padded to
their own longest text, which on short titles is far cheaper than padding to max_length.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.files import atomic_path

TOKENIZE_CHUNK = 4096


@dataclass
class RaggedTokens:
    ids: np.ndarray       # int32, all texts' token ids back to back
    offsets: np.ndarray   # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:   # pid-named: caches are shared by parallel runs
            np.savez(tmp, ids=self.ids, offsets=self.offsets)

    @classmethod
    def load(cls, path: Path) -> "RaggedTokens":
        z = np.load(path)
        return cls(z["ids"], z["offsets"])


def load_tokenizer(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def tokenize(texts: list[str], tokenizer_path: str, max_length: int) -> RaggedTokens:
    tok = load_tokenizer(tokenizer_path)
    ids, offsets = [], [0]
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        enc = tok(texts[start:start + TOKENIZE_CHUNK], truncation=True, max_length=int(max_length),
                  add_special_tokens=True)["input_ids"]
        for seq in enc:
            ids.append(np.asarray(seq, dtype=np.int32))
            offsets.append(offsets[-1] + len(seq))
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    return RaggedTokens(flat, np.asarray(offsets, dtype=np.int64))


def _fingerprint(texts: list[str], tokenizer_path: str, max_length: int) -> str:
    h = hashlib.sha256()
    vocab = Path(tokenizer_path) / "vocab.txt"
    h.update(vocab.read_bytes() if vocab.exists() else tokenizer_path.encode())
    h.update(json.dumps({"max_length": int(max_length), "n": len(texts)}).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def cached_tokenize(texts: list[str], tokenizer_path: str, max_length: int,
                    cache_dir: str | Path) -> RaggedTokens:
    """Tokenise, or load the cached result for exactly these texts, vocabulary and max length."""
    path = Path(cache_dir) / "tokens" / f"{_fingerprint(texts, tokenizer_path, max_length)}.npz"
    if path.exists():
        return RaggedTokens.load(path)
    tokens = tokenize(texts, tokenizer_path, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens.save(path)
    return tokens
