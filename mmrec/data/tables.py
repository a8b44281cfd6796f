"""The canonical processed dataset every reader produces and every model consumes.

A dataset directory holds Parquet tables (readable with `datasets.Dataset.from_parquet`, pandas
or pyarrow) and a JSON report:

- ``items.parquet``: one row per item. ``item_id`` (string) is required; content and metadata
  columns are free: ``title``, ``year``, ``genres`` (list of strings), ``synopsis``, ``trailer``
  (a video path), ``images`` (list of image paths), ``imdb_id``, ...
- ``interactions.parquet``: ``user_id`` (string), ``item_id`` (string), ``rating`` (float32),
  ``timestamp`` (int64, seconds).
- ``users.parquet`` (optional): ``user_id`` plus demographic columns.
- ``report.json``: where the data came from and what was read, kept and skipped, by reason, so
  that rows in = rows out + reported skips.

Ids are strings everywhere so that ids from any source keep their exact form. A reader that
parses integer ids (ml25m) also hands over the integers (`IntIds`, in memory only), so that the
checks and the split need not parse 25M strings back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.files import write_dir_atomic, write_text_atomic

FORMAT_VERSION = 1
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
MAX_TIMESTAMP = 10 ** 15    # seconds; larger magnitudes are not timestamps (and lose float precision)
DATASET_FILES = ("items.parquet", "interactions.parquet", "users.parquet", "report.json")


class DataError(ValueError):
    """Bad input data, with the file, line, item or field named in the message."""


def read_parquet_table(path: str | Path) -> pd.DataFrame:
    """A Parquet file as a DataFrame; a missing, truncated or non-Parquet file is a DataError
    naming it (instead of pyarrow's message, which does not always say which file)."""
    import pyarrow as pa
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as a Parquet table: {' '.join(str(e).split())}") from None


@dataclass
class SkipLog:
    """Counts of rows dropped on purpose, by reason, with a few examples each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, n: int = 1, examples: list[str] | None = None) -> None:
        if n <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + int(n)
        ex = self.examples.setdefault(reason, [])
        for e in examples or []:
            if len(ex) >= self.max_examples:
                break
            ex.append(str(e))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def lines(self) -> list[str]:
        out = []
        for reason, n in self.counts.items():
            ex = self.examples.get(reason) or []
            out.append(f"skipped {n} ({reason})" + (f", e.g. {'; '.join(ex[:3])}" if ex else ""))
        return out


@dataclass
class TableCount:
    """Rows in, rows out and skips for one input table; checked to add up."""

    source: str
    rows_in: int = 0
    rows_out: int = 0
    skips: SkipLog = field(default_factory=SkipLog)

    def check(self) -> None:
        if self.rows_in != self.rows_out + self.skips.total:
            raise AssertionError(
                f"{self.source}: {self.rows_in} rows in != {self.rows_out} out + "
                f"{self.skips.total} skipped {self.skips.counts}")

    def to_dict(self) -> dict:
        return {"source": self.source, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "skipped": self.skips.to_dict()}


def _buffer_marks(column) -> tuple | None:
    """Where an arrow-backed string column's data lives: (chunk offset, length, buffer addresses)
    per chunk; None for a column that is not arrow strings."""
    a = _arrow_strings(getattr(column, "array", column))
    if a is None:
        return None
    return tuple((c.offset, len(c), tuple(b.address if b is not None else 0 for b in c.buffers()))
                 for c in _chunks(a))


@dataclass(frozen=True, eq=False)
class IntIds:
    """The interactions' user and item ids as integers, row for row, from a reader that parsed
    them as integers (ml25m): each id string is exactly `str` of its integer. Kept in memory
    only (a cache read back from Parquet has none), and trusted only while the table's id
    columns are still the very arrow strings they were made with (`valid_for`): a table whose
    rows or ids were changed afterwards is parsed from its strings again."""
    user: np.ndarray
    item: np.ndarray
    _marks: tuple = ()
    _keep: tuple = ()      # the columns' arrow arrays, held so their addresses are not reused

    @classmethod
    def of(cls, inter: pd.DataFrame, user: np.ndarray, item: np.ndarray) -> "IntIds":
        assert len(user) == len(item) == len(inter)
        cols = (inter["user_id"], inter["item_id"])
        return cls(user, item, tuple(_buffer_marks(c) for c in cols),
                   tuple(_arrow_strings(c.array) for c in cols))

    def valid_for(self, inter: pd.DataFrame) -> bool:
        if len(inter) != len(self.user) or not {"user_id", "item_id"} <= set(inter.columns):
            return False
        marks = (_buffer_marks(inter["user_id"]), _buffer_marks(inter["item_id"]))
        return None not in marks and marks == self._marks


@dataclass
class MultiModalDataset:
    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    report: dict[str, TableCount] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    root: Path | None = None   # the directory relative paths (trailers, images) are resolved from
    int_ids: IntIds | None = field(default=None, repr=False)   # not saved; see IntIds

    def __post_init__(self) -> None:
        self.items = self.items.reset_index(drop=True)
        self.interactions = self.interactions.reset_index(drop=True)
        validate_tables(self.items, self.interactions, self.users, self.id_ints())

    def id_ints(self) -> IntIds | None:
        """The interactions' integer ids, if a reader gave them and the table is still theirs."""
        if self.int_ids is not None and not self.int_ids.valid_for(self.interactions):
            self.int_ids = None
        return self.int_ids

    def save(self, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the tables (and `extra_files`, name -> text) into `out_dir`; report.json last."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(out / "items.parquet", index=False)
        self.interactions.to_parquet(out / "interactions.parquet", index=False)
        if self.users is not None:
            self.users.to_parquet(out / "users.parquet", index=False)
        for name, text in (extra_files or {}).items():
            write_text_atomic(out / name, text)
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source": self.source,
            "root": str(self.root) if self.root else None,
            "counts": {"items": len(self.items), "interactions": len(self.interactions),
                       "users": None if self.users is None else len(self.users)},
            "tables": {k: v.to_dict() for k, v in self.report.items()},
        }
        write_text_atomic(out / "report.json", json.dumps(meta, indent=2))   # written last: marks a complete directory
        return out

    def save_atomic(self, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """`save` into a temporary sibling, renamed into place: `out_dir` holds either what it
        held before or the complete new dataset, whenever the process is killed. An existing
        `out_dir` is replaced only if it holds nothing but a dataset's files."""
        owned = set(DATASET_FILES) | set(extra_files or {})
        return write_dir_atomic(out_dir, lambda tmp: self.save(tmp, extra_files), owned=owned)

    @classmethod
    def load(cls, path: str | Path) -> "MultiModalDataset":
        path = Path(path)
        report_file = path / "report.json"
        if not report_file.exists():
            raise DataError(f"{path}: not a processed mmrec dataset (no report.json)")
        try:
            meta = json.loads(report_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            line = f" line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise DataError(f"{report_file}{line}: not valid JSON ({e.msg if line else e.reason})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{report_file}: not an mmrec dataset report (a JSON object)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{report_file}: format_version {meta.get('format_version')} "
                            f"!= {FORMAT_VERSION}; re-run `mmrec preprocess`")
        if "name" not in meta:
            raise DataError(f"{report_file}: not an mmrec dataset report (no 'name'); re-run `mmrec preprocess`")
        users = read_parquet_table(path / "users.parquet") if (path / "users.parquet").exists() else None
        report = {}
        for k, v in (meta.get("tables") or {}).items():
            try:
                tc = TableCount(str(v["source"]), int(v["rows_in"]), int(v["rows_out"]))
                tc.skips.counts = {str(r): int(n) for r, n in dict(v["skipped"]["counts"]).items()}
                tc.skips.examples = {str(r): list(e) for r, e in dict(v["skipped"]["examples"]).items()}
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError(f"{report_file}: malformed entry tables.{k} ({type(e).__name__}: {e})") from None
            report[k] = tc
        root = meta.get("root")
        items, inter, users = check_loaded_tables(path, read_parquet_table(path / "items.parquet"),
                                                  read_parquet_table(path / "interactions.parquet"), users)
        return cls(meta["name"], items, inter, users, report,
                   meta.get("source", {}), Path(root) if root else path)

    def summary_lines(self) -> list[str]:
        lines = [f"{self.name}: {len(self.items)} items, {len(self.interactions)} interactions, "
                 f"{self.interactions['user_id'].nunique()} users"]
        for key, tc in self.report.items():
            lines.append(f"  {tc.source}: {tc.rows_in} rows in, {tc.rows_out} kept")
            lines += [f"    {l}" for l in tc.skips.lines()]
        return lines


def _arrow_strings(values):
    """A string column as an arrow array (no copy for pyarrow-backed pandas strings); None for
    a column of another type."""
    import pyarrow as pa
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        try:
            values = pa.array(values)    # untyped: a large_string pandas column stays as it is
        except (pa.ArrowException, TypeError, ValueError):
            return None
    return values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else None


def digit_ints(values) -> np.ndarray | None:
    """Digit-string ids as int64 where that is one-to-one (digits only, no leading zero, within
    int64), else None: hashing 25M ints is several times faster than hashing 25M strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    s = _arrow_strings(values)
    if s is None:
        return None
    if not len(s):
        return np.zeros(0, dtype=np.int64)
    if not pc.all(pc.fill_null(pc.ascii_is_decimal(s), False)).as_py():
        return None
    v = None
    for width in (np.int32, np.int64):     # int32 where the ids fit: half the memory
        try:
            v = cast_chunks(s, width)
            break
        except pa.ArrowInvalid:
            pass
    if v is None:      # beyond int64
        return None
    # A digit string is at least as long as its number written out, and as long iff it has no
    # leading zero: equal totals mean every id is written canonically.
    digits, power, top = len(v), 10, int(v.max())
    while power <= top:
        digits += int(np.count_nonzero(v >= power))
        power *= 10
    return v if _text_bytes(s) == digits else None


def _chunks(s) -> list:
    import pyarrow as pa
    return s.chunks if isinstance(s, pa.ChunkedArray) else [s]


def cast_chunks(s, dtype) -> np.ndarray:
    """pc.cast of an arrow column to a numeric `dtype`, a chunk at a time into one numpy array:
    no second whole-column copy (arrow's cast and numpy's concatenation) at the peak of a
    25M-row read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    out, pos = np.empty(len(s), dtype=dtype), 0
    for chunk in _chunks(s):
        out[pos:pos + len(chunk)] = pc.cast(chunk, pa.from_numpy_dtype(dtype)).to_numpy(zero_copy_only=False)
        pos += len(chunk)
    return out


def _text_bytes(s) -> int:
    """The total length in bytes of a string column's values, from its offsets (no pass over it)."""
    import pyarrow as pa
    total = 0
    for c in _chunks(s):
        if len(c):
            width = np.int64 if pa.types.is_large_string(c.type) else np.int32
            offsets = np.frombuffer(c.buffers()[1], dtype=width)
            total += int(offsets[c.offset + len(c)]) - int(offsets[c.offset])
    return total


def release_arrow_memory() -> None:
    """Hand the blocks arrow's allocator keeps after a large read back to the OS, so that numpy's
    arrays (another allocator) do not stack on top of them at the peak."""
    import pyarrow as pa
    pa.default_memory_pool().release_unused()


def id_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """(integer codes per row, the distinct ids as strings, in no promised order)."""
    ints = digit_ints(values)
    if ints is not None:
        return int_codes(ints)
    codes, uniques = pd.factorize(pd.Series(values) if not isinstance(values, pd.Series) else values)
    return codes, np.asarray(uniques, dtype=object).astype(str)


def pairs_in_order(a: np.ndarray, b: np.ndarray, strict: bool, block: int = 1 << 20) -> bool:
    """Whether the (a, b) pairs increase (`strict`: so none repeats) or never decrease, a block
    at a time (cache-sized temporaries, no key column built)."""
    for s in range(0, max(len(a) - 1, 0), block):
        x, y = a[s:s + block + 1], b[s:s + block + 1]
        later = y[1:] > y[:-1] if strict else y[1:] >= y[:-1]
        if not np.all((x[1:] > x[:-1]) | ((x[1:] == x[:-1]) & later)):
            return False
    return True


def lookup_ok(ints: np.ndarray, n: int) -> bool:
    """Whether a table indexed by id (a byte or an int32 per possible id) beats hashing: ids
    non-negative and below 4n (n the rows looked up), as MovieLens' are (< 210k for 25M rows)."""
    return len(ints) > 0 and int(ints.min()) >= 0 and int(ints.max()) < 4 * n + 1024


def int_codes(ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`id_codes` of non-negative integer ids: (codes per row, the distinct ids as strings);
    codes number the distinct ids in increasing order where a lookup table is used."""
    if lookup_ok(ints, len(ints)):
        # dense integer ids (MovieLens'): a lookup table, no hashing of 25M values
        present = np.zeros(int(ints.max()) + 1, dtype=bool)
        present[ints] = True
        uniques = np.flatnonzero(present)
        lookup = np.full(len(present), -1, dtype=np.int32 if len(uniques) < 2 ** 31 else np.int64)
        lookup[uniques] = np.arange(len(uniques), dtype=lookup.dtype)
        return lookup[ints], uniques.astype(str)
    codes, uniques = pd.factorize(ints)
    return codes, uniques.astype(str)


def isin_ints(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """np.isin for integer ids: a lookup table for small non-negative ones, else hashing."""
    allowed = np.asarray(allowed)
    if not len(values) or not len(allowed):
        return np.zeros(len(values), dtype=bool)
    if lookup_ok(allowed, len(values)) and lookup_ok(values, len(values)):
        table = np.zeros(max(int(allowed.max()), int(values.max())) + 1, dtype=bool)
        table[allowed] = True
        return table[values]
    return pd.Series(values, copy=False).isin(allowed).to_numpy()


def int_strings(ints: np.ndarray):
    """Integer ids written out (`str` of each) as one arrow large_string array: for small
    non-negative ids, the strings of 0..max made once and taken per row (3x faster than
    casting every value)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if lookup_ok(ints, len(ints)):
        names = pa.array(np.arange(int(ints.max()) + 1).astype(str), pa.large_string())
        return pc.take(names, pa.array(ints))
    return pc.cast(pa.array(ints), pa.large_string())


def isin(values, allowed) -> np.ndarray:
    """`values.isin(allowed)` as a bool array, for pandas or arrow columns; integer ids hashed as
    ints (a chunk at a time: no whole-column copy), other strings through pyarrow (several times
    faster than pandas' on millions of ids)."""
    import pyarrow.compute as pc
    b = digit_ints(allowed)
    a = _arrow_strings(values)
    if b is not None and a is not None:
        out, pos = np.empty(len(a), dtype=bool), 0
        for chunk in _chunks(a):
            ints = digit_ints(chunk)
            if ints is None:
                break
            out[pos:pos + len(chunk)] = pd.Series(ints, copy=False).isin(b).to_numpy()
            pos += len(chunk)
        else:
            return out
    b = _arrow_strings(allowed)
    if a is None or b is None:
        return pd.Series(values).isin(allowed).to_numpy(dtype=bool)
    return pc.fill_null(pc.is_in(a, value_set=b), False).to_numpy(zero_copy_only=False)


def validate_tables(items: pd.DataFrame, inter: pd.DataFrame, users: pd.DataFrame | None,
                    int_ids: IntIds | None = None) -> None:
    """Structural checks every source must pass; readers catch row-level problems earlier.
    `int_ids`: the interactions' ids as integers (their strings are canonical), so the
    unknown-item check compares integers when the items' ids are canonical too."""
    if "item_id" not in items.columns:
        raise DataError(f"items table: missing column 'item_id' (columns: {list(items.columns)})")
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing:
        raise DataError(f"interactions table: missing column(s) {missing} (columns: {list(inter.columns)})")
    dup = items["item_id"].duplicated()
    if dup.any():
        raise DataError(f"items table: duplicate item_id {items['item_id'][dup].iloc[0]!r}")
    known = digit_ints(items["item_id"]) if int_ids is not None else None
    unknown = ~(isin_ints(int_ids.item, known) if known is not None else isin(inter["item_id"], items["item_id"]))
    if unknown.any():
        raise DataError(f"interactions table: item_id {inter['item_id'][unknown].iloc[0]!r} "
                        f"is not in the items table ({int(unknown.sum())} rows)")
    if users is not None and "user_id" not in users.columns:
        raise DataError("users table: missing column 'user_id'")


def _rows(mask) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask, dtype=bool)) + 1


def _string_ids(df: pd.DataFrame, column: str, file: Path) -> pd.Series:
    """An id column as strings: nulls, empty strings and non-integral numbers are a DataError
    naming the file's row (1-based); integers are written out."""
    s = df[column]
    if pd.api.types.is_bool_dtype(s) or (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_integer_dtype(s)):
        raise DataError(f"{file}: column '{column}' holds {s.dtype} values, not string ids")
    bad = np.array(s.isna().to_numpy(), dtype=bool)
    if isinstance(s.dtype, pd.StringDtype):        # the usual column: no per-value Python
        bad |= (s.str.strip().str.len() == 0).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            r = _rows(bad)[0]
            raise DataError(f"{file} row {r}: {column} {s.iloc[r - 1]!r} is empty")
        return s
    if pd.api.types.is_integer_dtype(s):
        s = s.astype(str)
    elif not pd.api.types.is_string_dtype(s):
        kinds = s[~bad].map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        if not kinds.all():
            r = _rows(~bad)[np.flatnonzero(~kinds)[0]]
            raise DataError(f"{file} row {r}: {column} {s.iloc[r - 1]!r} is not a string id")
    s = s.astype(object).where(~bad, "").astype(str)
    bad |= (s.str.strip().str.len() == 0).to_numpy()
    if bad.any():
        raise DataError(f"{file} row {_rows(bad)[0]}: {column} {df[column].iloc[_rows(bad)[0] - 1]!r} is empty")
    return s


def _with_ids(df: pd.DataFrame, column: str, file: Path) -> pd.DataFrame:
    unchanged = isinstance(df[column].dtype, pd.StringDtype)   # checked, kept as it is
    ids = _string_ids(df, column, file)
    return df if unchanged else df.assign(**{column: ids.to_numpy()})


def check_loaded_tables(path: Path, items: pd.DataFrame, inter: pd.DataFrame,
                        users: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Row checks of a processed directory's tables (written by `mmrec preprocess`, so anything
    malformed there is an error, whatever data.on_bad_row says): a one-line DataError naming the
    Parquet file and the row (1-based) for a missing column, an empty or non-string id, a
    duplicate item or user id, a rating that is not a finite non-negative number, a timestamp
    that is not a whole number of seconds (|t| < 1e15), an interaction of an unknown item.
    Valid rows come out unchanged (integer ids as strings)."""
    path = Path(path)
    items_file, inter_file, users_file = (path / f"{t}.parquet" for t in ("items", "interactions", "users"))
    for df, file, needed in ((items, items_file, ["item_id"]), (inter, inter_file, list(INTERACTION_COLUMNS)),
                             (users, users_file, ["user_id"])):
        missing = [] if df is None else [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing} (columns: {list(df.columns)})")
    items = _with_ids(items, "item_id", items_file)
    dup = items["item_id"].duplicated().to_numpy()
    if dup.any():
        r = _rows(dup)[0]
        first = int(np.flatnonzero(items["item_id"].to_numpy() == items["item_id"].iloc[r - 1])[0]) + 1
        raise DataError(f"{items_file} row {r}: duplicate item_id {items['item_id'].iloc[r - 1]!r} (first at row {first})")
    if users is not None:
        users = _with_ids(users, "user_id", users_file)
        dup = users["user_id"].duplicated().to_numpy()
        if dup.any():
            raise DataError(f"{users_file} row {_rows(dup)[0]}: duplicate user_id {users['user_id'].iloc[_rows(dup)[0] - 1]!r}")
    inter = _with_ids(_with_ids(inter, "user_id", inter_file), "item_id", inter_file)
    for column in ("rating", "timestamp"):
        s = inter[column]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            raise DataError(f"{inter_file}: column '{column}' holds {s.dtype} values, not numbers")
    rating = inter["rating"].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(rating) | (np.nan_to_num(rating) < 0)
    if bad.any():
        r = _rows(bad)[0]
        raise DataError(f"{inter_file} row {r}: rating {float(rating[r - 1])!r} is not a finite non-negative number")
    ts = inter["timestamp"]
    if pd.api.types.is_integer_dtype(ts) and not ts.isna().any():
        v = ts.to_numpy()
        bad = (v >= MAX_TIMESTAMP) | (v <= -MAX_TIMESTAMP)
    else:
        v = ts.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v != np.floor(v)) | (np.abs(v) >= MAX_TIMESTAMP)
    if bad.any():
        r = _rows(bad)[0]
        raise DataError(f"{inter_file} row {r}: timestamp {ts.iloc[r - 1].item()!r} is not a whole number of "
                        f"seconds (|t| < 1e15)")
    if not pd.api.types.is_integer_dtype(ts):   # whole numbers stored as floats: the canonical int64
        inter = inter.assign(timestamp=v.astype(np.int64))
    unknown = ~isin(inter["item_id"], items["item_id"])
    if unknown.any():
        r = _rows(unknown)[0]
        raise DataError(f"{inter_file} row {r}: item_id {inter['item_id'].iloc[r - 1]!r} is not in "
                        f"{items_file.name} ({int(unknown.sum())} rows)")
    return items, inter, users


def normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "user_id": df["user_id"].astype(str).to_numpy(),
        "item_id": df["item_id"].astype(str).to_numpy(),
        "rating": df["rating"].astype(np.float32).to_numpy(),
        "timestamp": df["timestamp"].astype(np.int64).to_numpy(),
    })
    return out
