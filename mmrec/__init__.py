"""mmrec: cold-start item representations learned end-to-end from raw content on user activity.

The Python API (docs/api.md), loaded on first use so that `import mmrec` stays cheap (no torch):

    tower = mmrec.ItemTower.from_pretrained("runs/ml100k-text")   # a run dir or a saved tower folder
    out = tower.encode(items_df)                                   # mmrec.Embeddings: ids, vectors, skipped
    users = mmrec.load_user_vectors("runs/ml100k-text")
    index = mmrec.ItemIndex.load("runs/ml100k-text/export")       # `mmrec export ... --index faiss`
    hits = index.search(users.vectors[:2], k=10)                   # hits.ids, hits.scores
"""
__version__ = "0.1.0"

_LAZY = {"ItemTower": "tower", "Embeddings": "tower", "load_user_vectors": "tower",
         "ItemIndex": "serving"}   # name -> the mmrec module it comes from
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):   # PEP 562: mmrec.tower (torch, pandas), mmrec.serving are imported on first use
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f"mmrec.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmrec' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
