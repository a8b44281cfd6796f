"""A synthetic "rendered-trailer world" whose true user-item affinities are known (an oracle).

Items are combinations of categorical attributes (colour, shape, texture, motion direction,
speed). Each user's taste is a sparse weight vector over the values of the ``taste`` attributes,
and affinity(user, item) = sum over taste attributes of weight[attr][item's value]. Ratings are
drawn from that affinity plus noise. The item's ``video`` attributes are shown in a rendered mp4
trailer (`mmrec.synthetic.render`), its ``text`` attributes are described in a synopsis; anything
else is nuisance. Presets pick which channel carries the signal, so one can check that a model
learns taste from frames (``default``), from motion only (``motion``), or needs both channels
(``split``).

`generate_world` writes the canonical dataset (`MultiModalDataset`) plus ``oracle.npz`` (the
true factors: affinity = user_factors @ item_factors.T) and ``world.json`` (the resolved config,
``"synthetic": true``). Rendering is parallel, and resumable: trailers are written under a
temporary name and renamed, and existing ones are skipped. Two processes may generate the same
world at once (two runs starting on a fresh cache): every file is written under a pid-named
temporary and renamed, so both finish with the same directory.

A world is generated on first use by the `world` reader (`data.source: world`, options in
`data.world`), e.g. `mmrec preprocess --config configs/world.yaml`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec.config import ConfigError, resolve_world, world_defaults, world_presets
from mmrec.data.readers import register_reader
from mmrec.data.tables import DataError, MultiModalDataset, TableCount
from preprocessing.files import atomic_path, write_text_atomic

WORLD_DEFAULTS: dict = world_defaults()           # configs/defaults/world.yaml

PRESETS: dict[str, dict] = world_presets()        # configs/defaults/world_presets/*.yaml

# The words a synopsis uses for each attribute value; nothing else in a synopsis names one.
TEXT_WORDS: dict[str, dict[str, list[str]]] = {
    "colour": {c: [c] for c in ("red", "green", "blue", "yellow", "magenta", "cyan", "orange",
                                "white")},
    "shape": {"circle": ["circle"], "square": ["square"], "triangle": ["triangle"],
              "cross": ["cross"], "diamond": ["diamond"], "ring": ["ring"]},
    "texture": {"solid": ["plain", "solid"], "stripes": ["striped"],
                "checker": ["checkered", "chequered"], "dots": ["dotted", "spotted"]},
    "direction": {"left": ["left", "leftward"], "right": ["right", "rightward"],
                  "up": ["up", "upward"], "down": ["down", "downward"]},
    "speed": {"slow": ["slow", "sluggish", "leisurely"], "fast": ["fast", "quick", "swift"]},
}
_GENERIC_NOUNS = ["shape", "figure", "form", "object"]
_MOTION_VERBS = {"left": ["drifts {w}", "glides {w}", "heads {w}"],
                 "right": ["drifts {w}", "glides {w}", "heads {w}"],
                 "up": ["floats {w}", "rises {w}", "heads {w}"],
                 "down": ["sinks {w}", "falls {w}", "heads {w}"]}
_STILL_VERBS = ["moves across the screen", "wanders about", "appears on screen", "travels on"]
_OPENERS = ["", "In this film, ", "In this story, ", "Watch as ", "Tonight, "]
_FILLERS = ["A tale nobody will forget.", "Critics were divided.", "Based on a true story.",
            "A journey of a lifetime.", "Nothing is what it seems.", "The festival favourite.",
            "Some things never change.", "From the makers of the original."]


# ---------------------------------------------------------------------------------------------
# Config




def resolve_config(cfg: dict | None = None, preset: str = "default") -> dict:
    """Defaults <- preset <- cfg (mmrec.config.resolve_world), then the world's own checks;
    unknown keys are errors naming the closest known one."""
    try:
        c = resolve_world(cfg, preset, where="world options", prefix="")
    except ConfigError as e:
        raise KeyError(str(e)) from None
    _check_config(c)
    return c


def _check_config(c: dict) -> None:
    from mmrec.synthetic.render import check_vocab
    check_vocab(c["attributes"])
    for key in ("taste", "video", "text") + (("image",) if c["image"] is not None else ()):
        bad = [a for a in c[key] if a not in c["attributes"]]
        if bad:
            raise ValueError(f"world.{key}: {bad} not among the attributes {list(c['attributes'])}")
    if not c["taste"]:
        raise ValueError("world.taste: users need at least one taste attribute")
    lo, hi = c["ratings_per_user"]
    if not 1 <= lo <= hi <= c["n_items"]:
        raise ValueError(f"world.ratings_per_user={c['ratings_per_user']}: need 1 <= lo <= hi <= n_items")
    shares = np.asarray(c["rating_shares"], dtype=float)
    if shares.ndim != 1 or len(shares) < 2 or (shares < 0).any() or abs(shares.sum() - 1) > 1e-6:
        raise ValueError(f"world.rating_shares={c['rating_shares']}: non-negative shares summing to 1")
    t = c["trailer"]
    from mmrec.synthetic.render import check_size
    check_size(t["size"])
    if not 1 <= t["informative"] <= t["scenes"]:
        raise ValueError(f"world.trailer: informative={t['informative']} not in 1..scenes={t['scenes']}")
    if not t["wrap"]:   # every motion the world can draw must fit in the frame
        from mmrec.synthetic.render import RENDER_VOCAB, inside_starts
        for d in c["attributes"].get("direction", RENDER_VOCAB["direction"]):
            for v in c["attributes"].get("speed", RENDER_VOCAB["speed"]):
                try:
                    inside_starts(d, v, t["frames_per_scene"], t["size"])
                except ValueError as e:
                    raise ValueError(f"world.trailer.wrap=false: {e}") from None


# ---------------------------------------------------------------------------------------------
# Items, users, ratings


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent stream per purpose, so changing one part never reshuffles another."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def sample_items(c: dict) -> pd.DataFrame:
    """Attribute values per item, uniform and independent; ids 'i0000', titles 'Item 0000'."""
    rng = _rng(c["seed"], 1)
    n = c["n_items"]
    width = max(4, len(str(n - 1)))
    df = pd.DataFrame({"item_id": [f"i{j:0{width}d}" for j in range(n)],
                       "title": [f"Item {j:0{width}d}" for j in range(n)]})
    for attr, vocab in c["attributes"].items():
        df[attr] = [vocab[k] for k in rng.integers(len(vocab), size=n)]
    return df


def item_factors(items: pd.DataFrame, c: dict) -> tuple[np.ndarray, list[str]]:
    """One-hot item vectors over the values of the taste attributes, and their names."""
    blocks, names = [], []
    for attr in c["taste"]:
        vocab = c["attributes"][attr]
        idx = items[attr].map({v: k for k, v in enumerate(vocab)}).to_numpy()
        blocks.append(np.eye(len(vocab))[idx])
        names += [f"{attr}={v}" for v in vocab]
    return np.concatenate(blocks, axis=1), names


def sample_tastes(c: dict) -> np.ndarray:
    """Per user, a sparse Gaussian weight vector per taste attribute (at least one non-zero)."""
    rng = _rng(c["seed"], 2)
    blocks = []
    for attr in c["taste"]:
        v = len(c["attributes"][attr])
        w = rng.normal(size=(c["n_users"], v))
        keep = rng.random((c["n_users"], v)) < c["taste_density"]
        keep[np.arange(c["n_users"]), rng.integers(v, size=c["n_users"])] = True
        blocks.append(w * keep)
    return np.concatenate(blocks, axis=1)


def sample_ratings(affinity: np.ndarray, c: dict, user_ids: list[str],
                   item_ids: list[str]) -> pd.DataFrame:
    """Each user rates a subset chosen by exposure; stars come from the rank of a noisy affinity.

    People mostly watch what they expect to like: user u rates n items drawn without replacement
    with probability proportional to exp(``exposure`` * z_ui) (0 = uniformly at random). Without
    this, which items a user rated would carry no signal, and even the oracle could hardly beat
    random on held-out items (their unrated high-affinity items count as misses).

    The affinity is standardised over the catalogue per user, Gaussian noise (``rating_noise``)
    is added, and the rated items are cut by rank into ``rating_shares`` of 1..5 stars, so every
    user has the same star histogram (``rating_shares``; positives, >= 3.5, are 4-5 stars).
    """
    rng = _rng(c["seed"], 3)
    lo, hi = c["ratings_per_user"]
    z = (affinity - affinity.mean(1, keepdims=True)) / (affinity.std(1, keepdims=True) + 1e-12)
    cuts = np.cumsum(c["rating_shares"])[:-1]
    t0 = 1_600_000_000
    rows_u, rows_i, rows_r, rows_t = [], [], [], []
    for u in range(len(user_ids)):
        n = int(rng.integers(lo, hi + 1))
        # Gumbel top-n: n items without replacement, with probability ~ exp(exposure * z).
        keys = c["exposure"] * z[u] + rng.gumbel(size=len(item_ids))
        items = np.argpartition(-keys, n - 1)[:n]
        noisy = z[u, items] + c["rating_noise"] * rng.normal(size=n)
        q = (np.argsort(np.argsort(noisy)) + 0.5) / n
        stars = 1 + np.searchsorted(cuts, q, side="right")
        start = t0 + int(rng.integers(0, 2 * 365 * 86400))
        rows_u += [user_ids[u]] * n
        rows_i += [item_ids[j] for j in items]
        rows_r.append(stars)
        rows_t.append(start + np.sort(rng.integers(0, 180 * 86400, n)))
    return pd.DataFrame({"user_id": rows_u, "item_id": rows_i,
                         "rating": np.concatenate(rows_r).astype(np.float32),
                         "timestamp": np.concatenate(rows_t).astype(np.int64)})


# ---------------------------------------------------------------------------------------------
# Synopses


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def synopsis(attrs: dict, text_attrs: list[str], rng: np.random.Generator) -> str:
    """A short plot line naming exactly the ``text_attrs`` (varied words, templates, fillers)."""
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    word = {a: pick(TEXT_WORDS[a][attrs[a]]) for a in text_attrs}
    adjectives = [word[a] for a in ("speed", "colour", "texture") if a in word]
    noun = word.get("shape") or pick(_GENERIC_NOUNS)
    if "direction" in word:
        verb = pick(_MOTION_VERBS[attrs["direction"]]).format(w=word["direction"])
    else:
        verb = pick(_STILL_VERBS)
    opener = pick(_OPENERS)
    subject = _a(" ".join(adjectives + [noun]))
    core = f"{opener}{subject if opener else subject.capitalize()} {verb}."
    fillers = rng.choice(len(_FILLERS), int(rng.integers(0, 3)), replace=False)
    parts = [core] + [_FILLERS[k] for k in fillers]
    if int(rng.integers(2)):
        parts = parts[1:] + parts[:1]
    return " ".join(parts)


def mentioned(text: str) -> dict[str, set[str]]:
    """Which attribute values a text names, by TEXT_WORDS (for tests and sanity checks)."""
    tokens = set(re.findall(r"[a-z]+", text.lower()))
    return {attr: {v for v, ws in words.items() if tokens & set(ws)}
            for attr, words in TEXT_WORDS.items()}


# ---------------------------------------------------------------------------------------------
# Oracle


@dataclass
class Oracle:
    """The world's true factors: affinity = user_factors @ item_factors.T (unpacks as a 4-tuple)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    factor_names: np.ndarray | None = None

    def __iter__(self):
        return iter((self.user_ids, self.item_ids, self.user_factors, self.item_factors))

    def affinity(self) -> np.ndarray:
        return self.user_factors @ self.item_factors.T


def load_oracle(dataset_dir: str | Path) -> Oracle | None:
    """The true factors of a synthetic dataset, or None for a dataset without ``oracle.npz``."""
    path = Path(dataset_dir) / "oracle.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return Oracle(z["user_ids"], z["item_ids"], z["user_factors"], z["item_factors"],
                      z["factor_names"] if "factor_names" in z else None)


# ---------------------------------------------------------------------------------------------
# Generation


def _render_key(c: dict) -> str:
    """What the rendered files depend on; a directory rendered for another world is refused."""
    keys = ("n_items", "attributes", "video", "image", "trailer", "stills", "seed")
    key = {k: c[k] for k in keys}
    if key["trailer"].get("wrap", True):   # the default: worlds rendered before it existed keep their key
        key["trailer"] = {k: v for k, v in key["trailer"].items() if k != "wrap"}
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _claim_dir(out: Path, key: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".render_key"
    if marker.exists() and marker.read_text().strip() != key:
        raise ValueError(f"{out}: holds trailers rendered for a different world config "
                         f"(render key {marker.read_text().strip()} != {key}); use another "
                         f"out_dir or delete it")
    write_text_atomic(marker, key)   # never seen half-written by a process generating alongside


def _render_jobs(items: pd.DataFrame, c: dict, out: Path) -> list:
    from mmrec.synthetic.render import RenderJob
    vocab = c["attributes"]
    image_attrs = c["video"] if c["image"] is None else c["image"]
    jobs = []
    for j, row in enumerate(items.itertuples(index=False)):
        rec = row._asdict()
        seed = int(np.random.SeedSequence([int(c["seed"]), 4, j]).generate_state(1)[0])
        jobs.append(RenderJob(
            attrs={a: rec[a] for a in c["video"]}, seed=seed,
            path=str(out / rec["trailer"]), params=c["trailer"], vocab=vocab,
            still_paths=tuple(str(out / p) for p in rec.get("images", ())),
            still_attrs={a: rec[a] for a in image_attrs}))
    return jobs


def _atomic_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def generate_world(cfg: dict | None = None, out_dir: str | Path | None = None,
                   preset: str = "default", workers: int = 2, progress: bool = True) -> Path:
    """Generate (or finish generating) a synthetic world as a canonical dataset directory.

    Writes ``items.parquet`` (``trailer`` = ``trailers/<item_id>.mp4`` and ``images`` relative to
    the directory, ``synopsis``, ``title``, and the true attribute columns for reference),
    ``interactions.parquet``, ``report.json``, ``oracle.npz`` and ``world.json``. Everything is
    a function of the resolved config (seed included); existing trailers are not re-rendered.
    ``out_dir`` defaults to ``worlds/<preset>``.
    """
    t_start = time.time()
    c = resolve_config(cfg, preset)
    out = Path(out_dir) if out_dir is not None else Path("worlds") / preset
    _claim_dir(out, _render_key(c))

    items = sample_items(c)
    items["trailer"] = [f"trailers/{i}.mp4" for i in items["item_id"]]
    if c["stills"]:
        items["images"] = [[f"images/{i}_{k}.png" for k in range(c["stills"])] for i in items["item_id"]]
    text_rng = _rng(c["seed"], 5)
    items["synopsis"] = [synopsis(r, c["text"], text_rng) for r in items.to_dict("records")]

    user_ids = [f"u{u:0{max(4, len(str(c['n_users'] - 1)))}d}" for u in range(c["n_users"])]
    i_fac, names = item_factors(items, c)
    u_fac = sample_tastes(c)
    inter = sample_ratings(u_fac @ i_fac.T, c, user_ids, list(items["item_id"]))

    stats = _render_all(items, c, out, workers, progress)
    with atomic_path(out / "oracle.npz") as tmp:   # pid-named: processes generating alongside
        np.savez(tmp, user_ids=np.asarray(user_ids), item_ids=items["item_id"].to_numpy(str),
                 user_factors=u_fac, item_factors=i_fac, factor_names=np.asarray(names))

    attr_cols = {a: f"attr_{a}" for a in c["attributes"]}
    table = items.rename(columns=attr_cols)
    table = table[["item_id", "title", "synopsis", "trailer"] + (["images"] if c["stills"] else [])
                  + list(attr_cols.values())]
    source = {"reader": "synthetic_world", "synthetic": True, "preset": preset, "seed": c["seed"]}
    ds = MultiModalDataset(c["name"], table, inter, pd.DataFrame({"user_id": user_ids}),
                           {"items": TableCount("synthetic world: items", len(table), len(table)),
                            "interactions": TableCount("synthetic world: ratings", len(inter), len(inter))},
                           source, None)  # root None: paths resolve from wherever the dir is
    _save_tables(ds, out)
    _atomic_json(out / "world.json", {
        "synthetic": True,
        "note": "synthetic rendered-trailer world with known true affinities (oracle.npz)",
        "config": c, "render": stats, "seconds": round(time.time() - t_start, 2),
        "frames_per_trailer": c["trailer"]["scenes"] * c["trailer"]["frames_per_scene"],
        "stats": {"items": len(table), "users": len(user_ids), "ratings": len(inter),
                  "positive_fraction": float((inter["rating"] >= 3.5).mean()),
                  "factors": len(names)},
    })
    return out


def _save_tables(ds: MultiModalDataset, out: Path) -> None:
    """The canonical tables, saved in a private (pid-named) folder and renamed into `out` one by
    one, report.json last: a process generating the same world alongside, or a run reading it,
    never sees a table half-written (the trailers stay where they are)."""
    import shutil
    from preprocessing.files import stale_tmp
    for left in out.glob(".tables.*.tmp"):   # by killed processes
        if stale_tmp(left):
            shutil.rmtree(left, ignore_errors=True)
    private = out / f".tables.{os.getpid()}.tmp"
    shutil.rmtree(private, ignore_errors=True)
    try:
        ds.save(private)
        names = sorted(p.name for p in private.iterdir() if p.name != "report.json")
        for name in [*names, "report.json"]:
            os.replace(private / name, out / name)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _render_all(items: pd.DataFrame, c: dict, out: Path, workers: int, progress: bool) -> dict:
    from mmrec.synthetic.render import render_jobs
    return render_jobs(_render_jobs(items, c, out), workers, progress, desc=f"rendering {c['name']}")


@register_reader("world", cached=False)
def read_world(data_cfg: dict) -> MultiModalDataset:
    """A SYNTHETIC rendered-trailer world (this module), generated on first use into
    `data.cache_dir/worlds/` (or `data.path`, if set) and then read like any processed dataset.
    `data.world` holds `preset` and any world key, e.g. {preset: motion, n_items: 800}."""
    opts = dict(data_cfg.get("world") or {})
    preset = opts.pop("preset", "default")
    try:
        resolved = resolve_config(opts, preset)
    except (KeyError, ValueError) as e:
        raise DataError(f"data.world: {e.args[0]}") from None
    key = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(data_cfg.get("path") or Path(data_cfg.get("cache_dir") or ".mmrec_cache") / "worlds" / f"{preset}-{key}")
    if not (out / "world.json").exists():
        generate_world(opts, out, preset, workers=2, progress=True)
    return MultiModalDataset.load(out)
