"""Property-based (fuzzed) tests of every reader: MovieLens ratings (GroupLens ratings.csv and
RecBole's tab-separated ml-100k.inter), movies.csv, links.csv, the synopsis CSV, ml-youtube.csv,
the canonical Parquet tables (data.source=processed) and `mmrec export`'s item tables
(.csv/.tsv/.parquet), plus the CSV tokenizer under them (`mmrec.data.csv_rows`).

Each test generates a small file of valid rows mixed with malformed ones (missing or extra
fields, empty strings, NaN, +-inf and negative ratings, non-integer ids, blank lines, quoted
separators and line breaks, very long fields, a byte-order mark, CRLF or CR line endings, ...),
renders it itself (so it knows every row's physical line), computes what must come out from what
it generated (never from the reader) and checks the property:

  every row is in the output unchanged, or in a counted skip with its reason (the examples name
  lines of such rows), or the reader raised a one-line DataError naming the file and the line
  of the earliest malformed row; rows in = rows out + reported skips; no other exception.

derandomize=True: the same examples every run, so a failure is found on every run, not now and
then (MMREC_FUZZ_EXAMPLES / MMREC_FUZZ_RANDOM below widen the search).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from mmrec.data.csv_rows import read_csv_rows
from mmrec.data.readers import read_dataset, read_ml100k, read_ml25m, split_title_year
from mmrec.data.tables import DataError
from mmrec.export import read_items
from tests.ml25m_fixture import write_ml25m

# MMREC_FUZZ_EXAMPLES=2000 MMREC_FUZZ_RANDOM=1 for a longer, randomised hunt (not derandomized)
FUZZ = settings(max_examples=int(os.environ.get("MMREC_FUZZ_EXAMPLES", "100")), deadline=None,
                derandomize=not os.environ.get("MMREC_FUZZ_RANDOM"), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
LINE_BREAK = re.compile(r"\r\n|\r|\n")
MODES = st.sampled_from(["skip", "error"])

# ---------------------------------------------------------------------------------------------
# Value pools. Valid and malformed pools are disjoint; a valid value's parsed form is computed
# here with plain Python.

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["Heat, The", 'say "hi"', "two\nlines", "crlf\r\nline", "cr\ronly", " padded ",
                     "é ü 中文 🎬", "\ufeffbom inside", "tab\there", "", " ", "x" * 3000]),
)
USERS = ["1", "2", "3", " 2 ", "03"]
MOVIES = ["1", "2", "3", "4", "5", "6", " 6", "999"]          # 999: not in movies.csv
RATINGS = ["0.5", "1", "3.5", "4.0", "5", "2.50", "1e0", " 4.5 ", "+3", "0", "-0"]
TIMESTAMPS = ["100", "101", "102", "0", "-7", "1100000000", "100.0", "1e3", " 105", "999999999999999"]
BAD = {
    "rating": ["", " ", "abc", "nan", "NaN", "inf", "-inf", "Infinity", "-1.0", "-0.5", "1e999",
               "4,0", "4.0.0", "½", "4 5", "0x10", "--1", "1_0", "x" * 3000, "9" * 400],
    "timestamp": ["", "abc", "1.5", "inf", "nan", "1e20", "-1e16", "12:00", "1,5", "9" * 20,
                  "0x10", "1000000000000000"],
    "id": ["", " ", "abc", "1.5", "-1", "+1", "0x1", "1 2", "١", "\ufeff1", "1e3", '1"', "x" * 3000],
}


def _float(s: str) -> float:
    return float(s.strip())


def _int(s: str) -> int:
    return int(float(s.strip())) if not s.strip().lstrip("+-").isdigit() else int(s.strip())


# ---------------------------------------------------------------------------------------------
# Rendering: rows -> file bytes, with each row's physical line

def _field(value: str, sep: str, quoting: bool, quote: bool) -> str:
    """RFC 4180; a quote inside an unquoted field (not at its start) is left as a literal
    character when `quote` is False, as CSV writers that do not quote sometimes leave it."""
    if not quoting:
        return value
    if quote or any(c in value for c in (sep, "\r", "\n")) or value.startswith('"'):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def formats(draw, quoting=True):
    return {"eol": draw(st.sampled_from(["\n", "\r\n", "\r"] if quoting else ["\n", "\r\n"])),
            "bom": draw(st.booleans()), "final_eol": draw(st.booleans()),
            "head": draw(st.sampled_from(["plain", "padded"] + (["quoted"] if quoting else [])))}


def render(header: list[str], rows: list[dict], sep=",", quoting=True, eol="\n", bom=False,
           final_eol=True, head="plain") -> tuple[bytes, list[int]]:
    """The file and the physical line (1-based, header = 1) each row starts on; row["text"] is
    set to the row's rendered text. head: the names as they are, padded with spaces, or quoted."""
    names = {"plain": header, "padded": [f" {h} " for h in header], "quoted": [f'"{h}"' for h in header]}[head]
    texts = [sep.join(names)]
    for r in rows:
        r["text"] = sep.join(_field(v, sep, quoting, q) for v, q in zip(r["values"], r["quotes"]))
        texts.append(r["text"])
    if rows and rows[-1]["text"] == "":
        final_eol = True          # a blank last line exists only if a line ending follows it
    lines, done = [], texts[0] + eol
    for t in texts[1:]:
        lines.append(1 + len(LINE_BREAK.findall(done)))
        done += t + eol
    body = eol.join(texts) + (eol if final_eol else "")
    return (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"), lines


def _row(kind: str, values: list[str], quotes: list[bool], **kw) -> dict:
    return {"kind": kind, "values": values, "quotes": quotes, **kw}


@st.composite
def wrong_field_rows(draw, n_columns: int, pool):
    n = draw(st.sampled_from([k for k in (1, 2, 3, 4, 5, 6) if k != n_columns]))
    values = [draw(pool) for _ in range(n)]
    if n == 1 and values[0] == "":
        values = ["x"]            # one empty field is a blank line, not a short row
    return _row("fields", values, [draw(st.booleans()) for _ in values])


@st.composite
def empty_rows(draw, n_columns: int):
    values = draw(st.sampled_from([[""], [""] * n_columns]))
    return _row("empty", values, [draw(st.booleans()) and len(values) > 1 for _ in values])


def _classify_structure(r: dict, n_columns: int) -> str | None:
    """'empty' | 'fields' | None (a row with the header's number of fields, not all empty)."""
    if r["text"] == "" or (len(r["values"]) == n_columns and all(v == "" for v in r["values"])):
        return "empty"
    if len(r["values"]) != n_columns:
        return "fields"
    return None


def outcome(call):
    """(result, None) or (None, message of a DataError); any other exception fails the test."""
    try:
        result = call()
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, f"DataError message is not one line: {msg!r}"
        _event("DataError: " + re.sub(r"^\S+ ?(line|row)? ?\d*:? ?", "", msg)[:25])
        return None, msg
    _event("read")
    return result, None


def _event(what: str) -> None:
    """Outcome statistics (pytest --hypothesis-show-statistics), inside a hypothesis test only."""
    if currently_in_test_context():
        event(what)


def _lines_in(examples: list[str]) -> set[int]:
    return {int(m.group(1)) for e in examples for m in [re.match(r"(?:line|row) (\d+)", e)] if m}


def check_report(tc, rows_in: int, rows_out: int, skips: dict[str, list[int]]):
    """The reader's TableCount against what was generated: counts per reason, and the
    examples name lines of rows that were skipped for that reason."""
    assert tc.rows_in == rows_in
    assert tc.rows_out == rows_out
    assert tc.rows_in == tc.rows_out + tc.skips.total
    want = {reason: len(lines) for reason, lines in skips.items() if lines}
    for reason in want:
        _event(f"skip: {reason}")
    assert tc.skips.counts == want
    for reason, lines in skips.items():
        if lines:
            shown = _lines_in(tc.skips.examples[reason])
            assert shown and shown <= set(lines), (reason, tc.skips.examples[reason], lines)


def check_error(msg: str | None, path: Path, line: int, *words: str):
    assert msg is not None, f"expected a DataError at line {line} of {path.name}"
    assert str(path) in msg and f"line {line}:" in msg, (msg, line)
    for w in words:
        assert w in msg, (msg, w)


# ---------------------------------------------------------------------------------------------
# The tokenizer: fields, lines and wrong field counts, exactly

CELL = st.one_of(TEXT, st.sampled_from(["1", "a,b", '"', '""', "\r\n", "\n\n"]))


@st.composite
def csv_files(draw):
    n_columns = draw(st.integers(1, 4))
    header = [f"c{i}" for i in range(n_columns)]
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        n = draw(st.sampled_from([n_columns] * 3 + [1, 2, 5]))
        values = [draw(CELL) for _ in range(n)]
        rows.append(_row("?", values, [draw(st.booleans()) for _ in values]))
    return header, rows, draw(st.sampled_from([",", "\t", ";"])), draw(formats())


@FUZZ
@given(spec=csv_files())
def test_csv_rows_fields_and_physical_lines(spec):
    header, rows, sep, fmt = spec
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.csv"
        data, lines = render(header, rows, sep=sep, **fmt)
        path.write_bytes(data)
        got, msg = outcome(lambda: read_csv_rows(path, sep))
    assert msg is None, msg
    n = len(header)
    # a blank line is a row of empty fields (for one column, a blank line and "" are the same)
    kept = [(l, r) for l, r in zip(lines, rows) if len(r["values"]) == n or r["text"] == ""]
    bad = [(l, r) for l, r in zip(lines, rows) if len(r["values"]) != n and r["text"] != ""]
    assert got.rows_in == len(rows)
    assert got.line.tolist() == [l for l, _ in kept]
    table = got.table.to_pydict()
    for j, name in enumerate(header):
        assert table[name] == [r["values"][j] if len(r["values"]) == n else "" for _, r in kept]
    assert got.bad_line.tolist() == [l for l, _ in bad]
    assert got.bad_fields.tolist() == [len(r["values"]) for _, r in bad]


# ---------------------------------------------------------------------------------------------
# Ratings: GroupLens ratings.csv and RecBole's ml-100k.inter

RATING_COLUMNS = ["userId", "movieId", "rating", "timestamp"]          # GroupLens names
RECBOLE_NAMES = dict(zip(RATING_COLUMNS, ["user_id", "item_id", "rating", "timestamp"]))
ORDER = ["rating", "timestamp", "userId", "movieId"]      # the order malformed values are reported in


@st.composite
def rating_rows(draw, n_columns=4, tokens_ok=lambda v: True):
    kind = draw(st.sampled_from(["ok"] * 5 + ["bad"] * 2 + ["fields", "empty"]))
    pick = lambda pool: draw(st.sampled_from([v for v in pool if tokens_ok(v)]))
    if kind == "empty":
        return draw(empty_rows(n_columns))
    if kind == "fields":
        return draw(wrong_field_rows(n_columns, st.sampled_from([v for v in USERS + RATINGS if tokens_ok(v)])))
    values = {"userId": pick(USERS), "movieId": pick(MOVIES), "rating": pick(RATINGS),
              "timestamp": pick(TIMESTAMPS)}
    bad = []
    if kind == "bad":
        bad = draw(st.lists(st.sampled_from(RATING_COLUMNS), min_size=1, max_size=2, unique=True))
        for c in bad:
            values[c] = pick(BAD["id" if c in ("userId", "movieId") else c])
    vals = [values[c] for c in RATING_COLUMNS]
    row = _row(kind, vals, [draw(st.booleans()) for _ in vals], bad=bad)
    if all(v == "" for v in vals):
        row["kind"] = "empty"
    return row


def expected_ratings(rows, lines, names, known={"1", "2", "3", "4", "5", "6"}, integer_ids=False):
    """(skips by reason -> lines, the rows that must come out, the first malformed line and
    what it must say) from the generated rows; `names`: the file's column names. integer_ids
    (GroupLens, the ml25m reader): an id is its integer, so '03' is user 3."""
    skips = {k: [] for k in ("empty row", "wrong number of fields", *(f"malformed {names[c]}" for c in ORDER),
                             "unknown item id", "duplicate (user, item) row; kept the latest")}
    first_bad, valid = None, []
    for line, r in zip(lines, rows):
        structure = _classify_structure(r, 4)
        if structure == "empty":
            skips["empty row"].append(line)
            continue
        if structure == "fields":
            skips["wrong number of fields"].append(line)
            first_bad = first_bad or (line, "fields")
            continue
        if r["bad"]:
            col = names[next(c for c in ORDER if c in r["bad"])]
            skips[f"malformed {col}"].append(line)
            first_bad = first_bad or (line, col)
            continue
        v = dict(zip(RATING_COLUMNS, r["values"]))
        uid, mid = v["userId"].strip(), v["movieId"].strip()
        if integer_ids:
            uid, mid = str(int(uid)), str(int(mid))
        rec = (uid, mid, _float(v["rating"]), _int(v["timestamp"]), line)
        if rec[1] not in known:
            skips["unknown item id"].append(line)
        else:
            valid.append(rec)
    latest = {}
    for rec in sorted(valid, key=lambda x: (x[3], x[4])):
        if (rec[0], rec[1]) in latest:
            skips["duplicate (user, item) row; kept the latest"].append(latest[(rec[0], rec[1])][4])
        latest[(rec[0], rec[1])] = rec
    out = sorted(latest.values(), key=lambda x: x[4])
    return skips, out, first_bad


def check_ratings(ds, msg, path, rows, lines, mode, names=None, integer_ids=False):
    skips, out, first_bad = expected_ratings(rows, lines, names or {c: c for c in RATING_COLUMNS},
                                             integer_ids=integer_ids)
    if mode == "error" and first_bad:
        line, col = first_bad
        check_error(msg, path, line, "fields, the header has" if col == "fields" else col)
        return
    assert msg is None, msg
    inter = ds.interactions
    assert inter["user_id"].tolist() == [o[0] for o in out]
    assert inter["item_id"].tolist() == [o[1] for o in out]
    assert inter["rating"].tolist() == [float(np.float32(o[2])) for o in out]
    assert inter["timestamp"].tolist() == [o[3] for o in out]
    assert inter["rating"].dtype == np.float32 and inter["timestamp"].dtype == np.int64
    check_report(ds.report["interactions"], len(rows), len(out), skips)


@FUZZ
@given(rows=st.lists(rating_rows(), max_size=14), fmt=formats(), mode=MODES)
def test_fuzz_ml25m_ratings(rows, fmt, mode):
    with tempfile.TemporaryDirectory() as d:
        root = write_ml25m(Path(d) / "ml", synopsis=False, youtube=False)
        data, lines = render(RATING_COLUMNS, rows, **fmt)
        (root / "ratings.csv").write_bytes(data)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode}))
        check_ratings(ds, msg, root / "ratings.csv", rows, lines, mode, integer_ids=True)


def _atomic_ok(v: str) -> bool:
    return not any(c in v for c in "\t\r\n")


def _write_ml100k(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\tMovie {i}\t199{i}\tDrama Comedy\n" for i in range(1, 7)))
    (root / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t2{u}\tF\tother\t0000{u}\n" for u in range(1, 4)))


@FUZZ
@given(rows=st.lists(rating_rows(tokens_ok=_atomic_ok), max_size=14), fmt=formats(quoting=False), mode=MODES)
def test_fuzz_ml100k_inter(rows, fmt, mode):
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ml-100k"
        _write_ml100k(root)
        data, lines = render(header, rows, sep="\t", quoting=False, **fmt)
        (root / "ml-100k.inter").write_bytes(data)
        ds, msg = outcome(lambda: read_ml100k({"path": str(root), "on_bad_row": mode}))
        check_ratings(ds, msg, root / "ml-100k.inter", rows, lines, mode, RECBOLE_NAMES)
        if ds is not None:
            assert ds.report["items"].rows_out == 6 and len(ds.users) == 3


# ---------------------------------------------------------------------------------------------
# Item tables keyed by movieId: movies.csv, links.csv, the synopsis CSV, ml-youtube.csv

ID_POOL = ["1", "2", "3", "4", "5", "6", "7", " 8 ", "12"]


@st.composite
def keyed_rows(draw, columns: list[str], value_pools: dict, id_pool=ID_POOL):
    """Rows of a movieId-keyed table; row["id"] is the id's pool value, kind 'ok' / 'bad' (a
    non-integer id) / 'blank' (an empty or whitespace id) / 'fields' / 'empty'."""
    n = len(columns)
    kind = draw(st.sampled_from(["ok"] * 6 + ["bad", "blank", "fields", "empty"]))
    if kind == "empty":
        return draw(empty_rows(n))
    if kind == "fields":
        return draw(wrong_field_rows(n, st.sampled_from(id_pool + ["x", "a,b"])))
    values = {c: draw(pool) for c, pool in value_pools.items()}
    values["movieId"] = draw(st.sampled_from({"ok": id_pool, "bad": [v for v in BAD["id"] if v.strip()],
                                              "blank": ["", " ", "  "]}[kind]))
    vals = [values[c] for c in columns]
    row = _row(kind, vals, [draw(st.booleans()) for _ in vals], v=values)
    if all(v == "" for v in vals):
        row["kind"] = "empty"
    return row


def expected_keyed(rows, lines, n_columns, known=None, nonempty=(), dup_reason="duplicate movieId; kept the first"):
    """(skips by reason -> lines, {id: values of its first kept row}, first line raising under 'error')."""
    skips = {k: [] for k in ("empty row", "empty movieId", *(f"empty {c}" for c in nonempty),
                             "wrong number of fields", "malformed movieId", "unknown movieId", dup_reason)}
    first_bad, kept = None, {}
    for line, r in zip(lines, rows):
        structure = _classify_structure(r, n_columns)
        if structure == "empty":
            skips["empty row"].append(line)
            continue
        if structure == "fields":
            skips["wrong number of fields"].append(line)
            first_bad = first_bad or (line, "fields, the header has")
            continue
        v = r["v"]
        mid = v["movieId"].strip()
        if not mid:
            skips["empty movieId"].append(line)
        elif any(not v[c].strip() for c in nonempty):
            skips[f"empty {next(c for c in nonempty if not v[c].strip())}"].append(line)
        elif r["kind"] == "bad":
            skips["malformed movieId"].append(line)
            first_bad = first_bad or (line, "is not an integer id")
        elif known is not None and mid not in known:
            skips["unknown movieId"].append(line)
        elif mid in kept:
            skips[dup_reason].append(line)
        else:
            kept[mid] = v
    return skips, kept, first_bad


MOVIE_COLUMNS = ["movieId", "title", "genres"]
GENRES = st.sampled_from(["Action|Comedy", "(no genres listed)", "", "Drama", " Sci-Fi|Horror ", "a,b|c"])
TITLES = st.builds(lambda t, y: t + y, TEXT, st.sampled_from(["", " (1995)", " (1993-1998)", "(2001) "]))


@FUZZ
@given(rows=st.lists(keyed_rows(MOVIE_COLUMNS, {"title": TITLES, "genres": GENRES}), max_size=12),
       fmt=formats(), mode=MODES)
def test_fuzz_movies(rows, fmt, mode):
    with tempfile.TemporaryDirectory() as d:
        root = write_ml25m(Path(d) / "ml", ratings=[], synopsis=False, youtube=False)
        (root / "links.csv").unlink()
        data, lines = render(MOVIE_COLUMNS, rows, **fmt)
        (root / "movies.csv").write_bytes(data)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode}))
    skips, kept, first_bad = expected_keyed(rows, lines, 3)
    if mode == "error" and first_bad:
        return check_error(msg, root / "movies.csv", *first_bad)
    assert msg is None, msg
    items = ds.items
    assert items["item_id"].tolist() == list(kept)
    assert [(t, y) for t, y in zip(items["title"], items["year"])] == \
        [split_title_year(v["title"]) for v in kept.values()]
    assert [list(g) for g in items["genres"]] == \
        [[] if v["genres"].strip() in ("", "(no genres listed)") else v["genres"].strip().split("|")
         for v in kept.values()]
    check_report(ds.report["items"], len(rows), len(kept), skips)


def _side_table_dir(d: str) -> Path:
    return write_ml25m(Path(d) / "ml", ratings=[], synopsis=False, youtube=False)


KNOWN = {"1", "2", "3", "4", "5", "6"}
IMDB = st.sampled_from(["0114709", "", " 0113497 ", "tt1", "x" * 200])


@FUZZ
@given(rows=st.lists(keyed_rows(["movieId", "imdbId", "tmdbId"], {"imdbId": IMDB, "tmdbId": IMDB}), max_size=12),
       fmt=formats(), mode=MODES)
def test_fuzz_links(rows, fmt, mode):
    with tempfile.TemporaryDirectory() as d:
        root = _side_table_dir(d)
        data, lines = render(["movieId", "imdbId", "tmdbId"], rows, **fmt)
        (root / "links.csv").write_bytes(data)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode}))
    skips, kept, first_bad = expected_keyed(rows, lines, 3, known=KNOWN)
    if mode == "error" and first_bad:
        return check_error(msg, root / "links.csv", *first_bad)
    assert msg is None, msg
    items = ds.items.set_index("item_id")
    for mid in sorted(KNOWN):
        assert items.loc[mid, "imdb_id"] == (kept[mid]["imdbId"].strip() if mid in kept else "")
        assert items.loc[mid, "tmdb_id"] == (kept[mid]["tmdbId"].strip() if mid in kept else "")
    check_report(ds.report["links"], len(rows), len(kept), skips)


@FUZZ
@given(rows=st.lists(keyed_rows(["movieId", "synopsis"], {"synopsis": TEXT}), max_size=12),
       fmt=formats(), mode=MODES)
def test_fuzz_synopses(rows, fmt, mode):
    with tempfile.TemporaryDirectory() as d:
        root = _side_table_dir(d)
        data, lines = render(["movieId", "synopsis"], rows, **fmt)
        (root / "synopsis.csv").write_bytes(data)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode,
                                              "synopsis_file": "synopsis.csv"}))
    skips, kept, first_bad = expected_keyed(rows, lines, 2, known=KNOWN)
    if mode == "error" and first_bad:
        return check_error(msg, root / "synopsis.csv", *first_bad)
    assert msg is None, msg
    items = ds.items.set_index("item_id")
    for mid in sorted(KNOWN):           # a synopsis comes out exactly as written
        assert items.loc[mid, "synopsis"] == (kept[mid]["synopsis"] if mid in kept else "")
    check_report(ds.report["synopses"], len(rows), len(kept), skips)


YOUTUBE_IDS = st.sampled_from(["K26_sDKnvMU", " 3LPANjHlPxo ", "", " ", "a,b", "x" * 100])


@FUZZ
@given(rows=st.lists(keyed_rows(["youtubeId", "movieId", "title"], {"youtubeId": YOUTUBE_IDS, "title": TEXT}),
                     max_size=12), fmt=formats(), mode=MODES)
def test_fuzz_youtube(rows, fmt, mode):
    with tempfile.TemporaryDirectory() as d:
        root = _side_table_dir(d)
        data, lines = render(["youtubeId", "movieId", "title"], rows, **fmt)
        (root / "ml-youtube.csv").write_bytes(data)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode,
                                              "trailer_dir": str(Path(d) / "tr")}))
    skips, kept, first_bad = expected_keyed(rows, lines, 3, known=KNOWN, nonempty=("youtubeId",),
                                            dup_reason="second trailer of a movie; kept the first")
    if mode == "error" and first_bad:
        return check_error(msg, root / "ml-youtube.csv", *first_bad)
    assert msg is None, msg
    items = ds.items.set_index("item_id")
    for mid in sorted(KNOWN):
        y = kept[mid]["youtubeId"].strip() if mid in kept else ""
        assert items.loc[mid, "youtube_id"] == y
        assert (items.loc[mid, "trailer"] == str(Path(d) / "tr" / f"{y}.mp4")) if y else pd.isna(items.loc[mid, "trailer"])
    check_report(ds.report["trailers"], len(rows), len(kept), skips)


# ---------------------------------------------------------------------------------------------
# Whole-file problems: invalid UTF-8 anywhere, a duplicate or missing column, an empty file

REQUIRED = {"ml-youtube.csv": ["youtubeId", "movieId"]}    # other files: every column of FILES
FILES = {   # file -> (header, a valid row, the reader's data_cfg extras)
    "ratings.csv": (RATING_COLUMNS, ["1", "1", "4.0", "100"], {}),
    "movies.csv": (MOVIE_COLUMNS, ["1", "Toy Story (1995)", "Comedy"], {}),
    "links.csv": (["movieId", "imdbId", "tmdbId"], ["1", "0114709", "862"], {}),
    "synopsis.csv": (["movieId", "synopsis"], ["1", "A cowboy doll."], {"synopsis_file": "synopsis.csv"}),
    "ml-youtube.csv": (["youtubeId", "movieId", "title"], ["K26_sDKnvMU", "1", "Toy Story"], {}),
}
BAD_BYTES = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80"]


@FUZZ
@given(name=st.sampled_from(sorted(FILES)), n=st.integers(1, 6), at=st.integers(0, 6),
       where=st.sampled_from(["header", "row"]), bad=st.sampled_from(BAD_BYTES), fmt=formats(),
       multiline=st.booleans(), mode=MODES)
def test_fuzz_invalid_utf8_names_its_line(name, n, at, where, bad, fmt, multiline, mode):
    header, good, extra = FILES[name]
    with tempfile.TemporaryDirectory() as d:
        root = write_ml25m(Path(d) / "ml", synopsis=True, youtube=True)
        rows = [_row("ok", list(good), [False] * len(good)) for _ in range(n)]
        if multiline and name == "synopsis.csv":
            rows[0]["values"][1] = "two\nlines"
        data, lines = render(header, rows, **fmt)
        if where == "header":
            cut, line = data.index(b",") + 1, 1
        else:
            k = at % n
            cut = 0
            for _ in range(lines[k] - 1):   # start of physical line lines[k]
                m = re.compile(rb"\r\n|\r|\n").search(data, cut)
                cut = m.end()
            line = lines[k]
        (root / name).write_bytes(data[:cut] + bad + data[cut:])
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode, **extra}))
        check_error(msg, root / name, line, "not valid UTF-8")


@FUZZ
@given(name=st.sampled_from(sorted(FILES)), problem=st.sampled_from(["duplicate", "missing", "empty", "blank"]),
       col=st.integers(0, 3), mode=MODES)
def test_fuzz_bad_header_is_a_one_line_error(name, problem, col, mode):
    header, good, extra = FILES[name]
    header, good = list(header), list(good)
    c = col % len(header)
    if problem == "duplicate":
        header.append(header[c]); good.append(good[c])
    elif problem == "missing":
        del header[c], good[c]
    with tempfile.TemporaryDirectory() as d:
        root = write_ml25m(Path(d) / "ml", synopsis=True, youtube=True)
        text = {"empty": "", "blank": "\n\n"}.get(problem, ",".join(header) + "\n" + ",".join(good) + "\n")
        (root / name).write_text(text)
        ds, msg = outcome(lambda: read_ml25m({"path": str(root), "on_bad_row": mode, **extra}))
        dropped = FILES[name][0][c]
        if problem == "missing" and dropped not in REQUIRED.get(name, FILES[name][0]):
            assert msg is None, msg         # an optional column may be absent
            return
        assert msg is not None and str(root / name) in msg, msg
        want = {"duplicate": f"line 1: duplicate column name(s) ['{dropped}']",
                "missing": f"missing column(s) ['{dropped}']",
                "empty": "file is empty", "blank": "file is empty"}[problem]
        assert want in msg, msg


def test_unclosed_quote_and_very_long_field(tmp_path):
    root = write_ml25m(tmp_path / "ml", synopsis=False, youtube=False)
    (root / "synopsis.csv").write_text('movieId,synopsis\n1,"fine"\n2,"never closed\n3,more\n')
    ds, msg = outcome(lambda: read_ml25m({"path": str(root), "synopsis_file": "synopsis.csv",
                                          "on_bad_row": "skip"}))
    check_error(msg, root / "synopsis.csv", 3, "never closed")
    # a field longer than the header probe (1 MiB) and than one parser block (16 MiB)
    long = "y" * (17 << 20)
    (root / "synopsis.csv").write_text(f'movieId,synopsis\n1,"{long}"\n3,short\n')
    ds = read_ml25m({"path": str(root), "synopsis_file": "synopsis.csv"})
    items = ds.items.set_index("item_id")
    assert items.loc["1", "synopsis"] == long and items.loc["3", "synopsis"] == "short"


# ---------------------------------------------------------------------------------------------
# The canonical Parquet tables (data.source=processed)

def _mostly(valid: list, bad: list):
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(bad))


ITEM_IDS = _mostly(["1", "2", "3", "a b", "ü"], ["", " ", None, "1"])
INTER_USERS = _mostly(["1", "2", "u3"], ["", None])
INTER_RATINGS = _mostly([4.0, 0.0, 3.5, 0.5], [float("nan"), float("inf"), -1.0, -float("inf")])
INTER_TS = _mostly([100, 0, -5, 1100000000], [1.5, float("nan"), 1e16])


@st.composite
def processed_tables(draw):
    item_ids = draw(st.lists(ITEM_IDS, min_size=1, max_size=6))
    n = draw(st.integers(0, 8))
    inter = {"user_id": [draw(INTER_USERS) for _ in range(n)],
             "item_id": [draw(_mostly(item_ids, ["zz", None])) for _ in range(n)],
             "rating": [draw(INTER_RATINGS) for _ in range(n)],
             "timestamp": [draw(INTER_TS) for _ in range(n)]}
    int_ts = all(isinstance(t, int) for t in inter["timestamp"])
    if int_ts and draw(st.booleans()):   # whole numbers stored as floats are fine
        inter["timestamp"], int_ts = [float(t) for t in inter["timestamp"]], False
    return item_ids, inter, int_ts


def _bad_id(v) -> bool:
    return v is None or not str(v).strip()


@FUZZ
@given(spec=processed_tables(), corrupt=st.sampled_from([None] * 6 + ["items", "interactions", "report"]))
def test_fuzz_processed_tables(spec, corrupt):
    item_ids, inter, int_ts = spec
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        items = pd.DataFrame({"item_id": pd.array(item_ids, dtype=object), "title": ["t"] * len(item_ids)})
        df = pd.DataFrame(inter)
        df["timestamp"] = df["timestamp"].astype(np.int64 if int_ts else np.float64)
        df["user_id"] = df["user_id"].astype(object)
        df["item_id"] = df["item_id"].astype(object)
        items.to_parquet(root / "items.parquet", index=False)
        df.to_parquet(root / "interactions.parquet", index=False)
        (root / "report.json").write_text(json.dumps({"format_version": 1, "name": "fz", "tables": {}}))
        if corrupt == "report":
            (root / "report.json").write_text('{"format_version": 1, "name": "fz", "tables": {"x": {"source": 1}}}')
        elif corrupt:
            data = (root / f"{corrupt}.parquet").read_bytes()
            (root / f"{corrupt}.parquet").write_bytes(data[: len(data) // 2])
        ds, msg = outcome(lambda: read_dataset({"source": "processed", "path": str(root)}))
    if corrupt:
        assert msg is not None and str(root) in msg, msg
        return
    seen, bad_items = set(), []
    for r, v in enumerate(item_ids, 1):
        if _bad_id(v) or v in seen:
            bad_items.append(r)
        seen.add(v)
    valid_items = {v for v in item_ids if not _bad_id(v)}
    bad_inter = []
    for r in range(len(df)):
        u, i, x, t = (inter[c][r] for c in ("user_id", "item_id", "rating", "timestamp"))
        if (_bad_id(u) or _bad_id(i) or i not in valid_items or not math.isfinite(x) or x < 0
                or not math.isfinite(t) or t != math.floor(t) or abs(t) >= 1e15):
            bad_inter.append(r + 1)
    if bad_items or bad_inter:
        assert msg is not None, "expected a DataError"
        m = re.search(r"(items|interactions)\.parquet row (\d+):", msg)
        assert m, msg
        assert int(m.group(2)) in (bad_items if m.group(1) == "items" else bad_inter), (msg, bad_items, bad_inter)
        return
    assert msg is None, msg
    assert ds.items["item_id"].tolist() == item_ids
    got = ds.interactions
    assert got["user_id"].tolist() == inter["user_id"] and got["item_id"].tolist() == inter["item_id"]
    assert got["rating"].tolist() == inter["rating"]
    assert got["timestamp"].tolist() == [int(t) for t in inter["timestamp"]]
    assert len(got) == 0 or got["timestamp"].dtype == np.int64


# ---------------------------------------------------------------------------------------------
# `mmrec export --items`: .csv / .tsv / .parquet item tables

EXPORT_IDS = ["a", "b", "c", "1", " d ", "e,f", 'g"h', "ü"]


@st.composite
def export_rows(draw):
    kind = draw(st.sampled_from(["ok"] * 12 + ["dup", "blank", "fields", "empty", "empty"]))
    if kind == "empty":
        return draw(empty_rows(2))
    if kind == "fields":
        return draw(wrong_field_rows(2, st.sampled_from(EXPORT_IDS + ["x"])))
    iid = draw(st.sampled_from(EXPORT_IDS if kind != "blank" else ["", " "]))
    title = draw(TEXT)
    if iid == "" and title == "":
        title = "t"
    return _row(kind, [iid, title], [draw(st.booleans()), draw(st.booleans())])


@FUZZ
@given(rows=st.lists(export_rows(), max_size=10), ext=st.sampled_from([".csv", ".tsv", ".parquet"]),
       fmt=formats())
def test_fuzz_export_item_tables(rows, ext, fmt):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"items{ext}"
        if ext == ".parquet":
            rows = [r for r in rows if len(r["values"]) == 2]
            pd.DataFrame({"item_id": [r["values"][0] for r in rows],
                          "title": [r["values"][1] for r in rows]}).to_parquet(path, index=False)
            lines = list(range(1, len(rows) + 1))
        else:
            data, lines = render(["item_id", "title"], rows, sep="\t" if ext == ".tsv" else ",", **fmt)
            path.write_bytes(data)
        df, msg = outcome(lambda: read_items(path))
    first_bad, seen, kept, empty = None, set(), [], []
    for line, r in zip(lines, rows):
        structure = _classify_structure(r, 2) if ext != ".parquet" else None
        if structure == "empty":
            empty.append(line)
            continue
        iid = r["values"][0]
        if structure == "fields" or not iid.strip() or iid in seen:
            first_bad = first_bad or line
            continue
        seen.add(iid)
        kept.append(r["values"])
    if first_bad:
        unit = "row" if ext == ".parquet" else "line"
        assert msg is not None and str(path) in msg and f"{unit} {first_bad}:" in msg, (msg, first_bad)
        return
    assert msg is None, msg
    assert df["item_id"].tolist() == [v[0] for v in kept]
    assert df["title"].tolist() == [v[1] for v in kept]
    if ext != ".parquet":
        assert df.attrs["empty_rows"] == empty
