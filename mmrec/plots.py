"""`mmrec plot RUN`: pictures of a finished run (PNG, matplotlib), written to RUN/plots/.

- curves.png       training loss per epoch (mean over the epoch's steps) and cold-validation metrics
- tsne.png         t-SNE of every item's vector, coloured by a metadata column (e.g. genre);
                   training items as dots, cold (val/test) items as crosses
- user_<id>.png    for one user, cosine similarities between the items they liked in training,
                   the cold items they liked, and the items they disliked (rating < threshold),
                   as in the KDD'24 paper's Table 10; the group means go to plots.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

COLOUR_CANDIDATES = ("genres", "genre", "attr_colour", "category")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no history.jsonl (not a run directory, or no epoch finished)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path, out: Path, metrics=("ndcg@10", "recall@10")) -> Path:
    plt = _plt()
    hist = read_history(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in hist if "train" in h]
    for key in sorted({k for h in hist for k in h.get("train", {}) if k.startswith("loss")}):
        axes[0].plot(ep, [h["train"].get(key, np.nan) for h in hist if "train" in h], marker="o", label=key)
    axes[0].set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training")
    if ep:
        axes[0].legend()
    ev = [h for h in hist if "val" in h]
    for m in metrics:
        axes[1].plot([h["epoch"] for h in ev], [100 * h["val"][m] for h in ev], marker="o", label=m)
    axes[1].set(xlabel="epoch", ylabel="%", title="cold validation")
    axes[1].legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def item_vectors(run_dir: Path):
    """(cfg, prepared, item vectors [N, D] in split order; segments averaged)."""
    from mmrec.evaluation.ranking import encode_items
    from mmrec.models import load_run_data
    cfg, prepared, model = load_run_data(run_dir)
    split = prepared.split
    with torch.no_grad():
        V = encode_items(model, prepared, np.arange(split.n_items), int(cfg["eval"]["item_batch_size"]))
    return cfg, prepared, (V.mean(1) if V.dim() == 3 else V)


def colour_labels(items: pd.DataFrame, column: str | None) -> tuple[str, np.ndarray]:
    if column is None:
        column = next((c for c in COLOUR_CANDIDATES if c in items.columns), None)
        if column is None:
            raise ValueError(f"plot: no metadata column to colour by; pass --color-by "
                             f"(item columns: {list(items.columns)})")
    if column not in items.columns:
        raise ValueError(f"plot: --color-by {column!r} is not an item column ({list(items.columns)})")
    vals = items[column].map(lambda v: (v[0] if len(v) else "none") if isinstance(v, (list, np.ndarray))
                             else ("none" if v is None or v != v else v))
    return column, vals.astype(str).to_numpy()


def plot_tsne(cfg, prepared, V: torch.Tensor, out: Path, column: str | None, seed: int = 0,
              max_classes: int = 10) -> Path:
    from sklearn.manifold import TSNE
    plt = _plt()
    items = prepared.dataset.items.iloc[prepared.item_rows].reset_index(drop=True)
    column, labels = colour_labels(items, column)
    xy = TSNE(n_components=2, init="pca", random_state=seed,
              perplexity=min(30.0, max(2.0, (len(V) - 1) / 3))).fit_transform(F.normalize(V, dim=-1).numpy())
    names, counts = np.unique(labels, return_counts=True)
    top = list(names[np.argsort(-counts)][:max_classes])
    cold = prepared.split.item_part != 0
    fig, ax = plt.subplots(figsize=(7.5, 6))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(top + ["other"]):
        sel = np.isin(labels, top, invert=True) if name == "other" else labels == name
        if not sel.any():
            continue
        colour = "lightgrey" if name == "other" else cmap(k % 10)
        ax.scatter(xy[sel & ~cold, 0], xy[sel & ~cold, 1], s=6, color=colour, label=name, alpha=0.7)
        ax.scatter(xy[sel & cold, 0], xy[sel & cold, 1], s=22, color=colour, marker="x", alpha=0.9)
    ax.set(title=f"t-SNE of item vectors ({cfg['name']}), colour: {column}; x = cold items",
           xticks=[], yticks=[])
    ax.legend(markerscale=2.5, fontsize=8, loc="best")
    fig.tight_layout()
    path = out / "tsne.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def user_groups(cfg, prepared, user: str | None) -> tuple[str, dict[str, np.ndarray]]:
    """A user's item groups (split indices): liked in training, liked among cold items, disliked.
    Default user: the evaluated test user with the most cold positives."""
    split = prepared.split
    if user is None:
        users = split.eval_users("test")
        n = split.positives["test"].row_lengths()[users]
        u = int(users[np.argmax(n)])
    else:
        where = np.flatnonzero(split.user_ids.astype(str) == str(user))
        if not len(where):
            raise ValueError(f"plot: user {user!r} is not in the run's split")
        u = int(where[0])
    uid = str(split.user_ids[u])
    item_pos = {str(i): k for k, i in enumerate(split.item_ids)}
    inter = prepared.dataset.interactions
    mine = inter[inter["user_id"].astype(str) == uid]
    idx = mine["item_id"].astype(str).map(item_pos)
    ok = idx.notna().to_numpy()
    idx = idx[ok].astype(int).to_numpy()
    liked = mine["rating"].to_numpy()[ok] >= float(cfg["data"]["positive_threshold"])
    cold = split.item_part[idx] != 0
    return uid, {"liked (train)": idx[liked & ~cold], "liked (cold)": idx[liked & cold],
                 "disliked": idx[~liked]}


def _similarity(V: torch.Tensor, groups: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    order = np.concatenate(list(groups.values())).astype(np.int64)
    Z = F.normalize(V[torch.from_numpy(order)], dim=-1)
    return (Z @ Z.T).numpy(), np.cumsum([0] + [len(g) for g in groups.values()])


def plot_user(cfg, prepared, V: torch.Tensor, out: Path, user: str | None,
              max_per_group: int = 40, seed: int = 0) -> tuple[Path, dict]:
    """Group means use every item; the picture shows at most `max_per_group` per group (a seeded
    random subset), so heavy users stay readable."""
    plt = _plt()
    uid, groups = user_groups(cfg, prepared, user)
    S, bounds = _similarity(V, groups)
    names = list(groups)
    means = {}
    for a in range(len(names)):
        for b in range(a, len(names)):
            blk = S[bounds[a]:bounds[a + 1], bounds[b]:bounds[b + 1]]
            if a == b:
                blk = blk[~np.eye(len(blk), dtype=bool)] if len(blk) > 1 else np.array([])
            means[f"{names[a]} vs {names[b]}"] = float(blk.mean()) if blk.size else None
    rng = np.random.default_rng(seed)
    shown = {n: (np.sort(rng.choice(g, max_per_group, replace=False)) if len(g) > max_per_group else g)
             for n, g in groups.items()}
    S, bounds = _similarity(V, shown)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(S, cmap="coolwarm", vmin=-1, vmax=1)
    for x in bounds[1:-1]:
        ax.axhline(x - 0.5, color="k", lw=1)
        ax.axvline(x - 0.5, color="k", lw=1)
    ticks = [(bounds[i] + bounds[i + 1]) / 2 for i in range(len(names))]
    labels = [f"{n}\n({len(shown[n])} of {len(g)})" if len(g) > len(shown[n]) else f"{n}\n({len(g)})"
              for n, g in groups.items()]
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_title(f"user {uid}: cosine similarity of item vectors")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    path = out / f"user_{uid}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, {"user": uid, "group_sizes": {n: int(len(g)) for n, g in groups.items()},
                  "mean_cosine": means}


def plot_run(run_dir: str | Path, color_by: str | None = None, user: str | None = None,
             out_dir: str | Path | None = None) -> dict:
    run_dir = Path(run_dir)
    out = Path(out_dir or run_dir / "plots")
    out.mkdir(parents=True, exist_ok=True)
    written = {"curves": str(plot_curves(run_dir, out))}
    cfg, prepared, V = item_vectors(run_dir)
    written["tsne"] = str(plot_tsne(cfg, prepared, V, out, color_by, seed=int(cfg["seed"])))
    path, summary = plot_user(cfg, prepared, V, out, user, seed=int(cfg["seed"]))
    written["user"] = str(path)
    report = {"files": written, "user_similarity": summary}
    (out / "plots.json").write_text(json.dumps(report, indent=1))
    return report
