"""Row-exact reading of CSV/TSV files for the readers (`mmrec.data.readers`) and `mmrec export`.

`read_csv_rows` reads a UTF-8 file with a header row into string columns, vectorised (pyarrow's
multi-threaded CSV parser), and knows for every row the *physical* line it starts on (1-based,
counting the header; a quoted field with line breaks makes its row span several lines; `\\n`,
`\\r\\n` and a lone `\\r` each end a line). Rows with another number of fields than the header are
not in the table but listed with their lines, for the caller to skip (counted) or reject.

Whole-file problems raise a one-line `DataError` naming the file (and the line where known): a
missing, unreadable or empty file, a header that is not valid UTF-8 or has a duplicate column
name, a byte sequence anywhere that is not UTF-8, a quoted field that is never closed. A UTF-8
byte-order mark at the start is dropped. Quoting follows RFC 4180 (a field in double quotes may hold the
separator, line breaks and doubled quotes); with `quoting=False` (RecBole's tab-separated atomic files) `"` is an
ordinary character.
"""
from __future__ import annotations

import codecs
import csv
import io
import mmap
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmrec.data.tables import DataError, release_arrow_memory

LINE_BREAK = r"\r\n|\r|\n"
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
_HEAD_BYTES = 1 << 20
_BLOCK_BYTES = 16 << 20
_MAX_BLOCK_BYTES = 1 << 30


def show(value, limit: int = 60) -> str:
    """A value for a one-line message: repr (line breaks escaped), long ones cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value))} chars)"


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


class Lines:
    """The physical lines first, first + 1, ... of n rows (a file with no line break inside a
    field), indexed like the int64 array it stands for, without holding it (200 MB at 25M rows)."""

    def __init__(self, first: int, n: int):
        self.first, self.n = int(first), int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.n if key < 0 else 0)
            if not 0 <= k < self.n:
                raise IndexError(f"row {key} out of range for {self.n} rows")
            return np.int64(self.first + k)
        if isinstance(key, slice):
            return np.arange(self.first, self.first + self.n, dtype=np.int64)[key]
        key = np.asarray(key)
        if key.dtype == bool:
            if len(key) != self.n:
                raise IndexError(f"mask of {len(key)} for {self.n} rows")
            return np.flatnonzero(key).astype(np.int64) + self.first
        key = key.astype(np.int64)
        if len(key) and (key.max() >= self.n or key.min() < -self.n):
            raise IndexError(f"row index out of range for {self.n} rows")
        return np.where(key < 0, key + self.n, key) + self.first

    def __array__(self, dtype=None, copy=None):
        return np.arange(self.first, self.first + self.n, dtype=dtype or np.int64)

    def tolist(self) -> list[int]:
        return list(range(self.first, self.first + self.n))


@dataclass
class CsvRows:
    path: Path
    columns: list[str]        # the header's names, surrounding whitespace stripped
    table: pa.Table           # rows with as many fields as the header; every column a string
    line: np.ndarray | Lines  # int64 [table rows]: the physical line each row starts on
    bad_line: np.ndarray      # int64: lines of the rows with another number of fields
    bad_fields: np.ndarray    # int64: how many fields those rows have
    sep: str = ","
    quoting: bool = True

    @property
    def rows_in(self) -> int:
        """Every row of the file after the header (blank lines included)."""
        return self.table.num_rows + len(self.bad_line)

    def text(self, name: str, strip: bool = False) -> pa.ChunkedArray:
        """The column as read: strings, or numbers for a column read as `numeric`."""
        col = self.table.column(self.columns.index(name))
        return pc.utf8_trim_whitespace(col) if strip else col

    @property
    def numeric(self) -> bool:
        return any(not is_text(t) for t in self.table.schema.types)

    def as_strings(self) -> "CsvRows":
        """The file, as read (before any `take`), with every column as strings (values as written)."""
        rows = read_csv_rows(self.path, self.sep, self.quoting)
        return CsvRows(rows.path, self.columns, rows.table.rename_columns(self.columns), rows.line,
                       rows.bad_line, rows.bad_fields, self.sep, self.quoting)

    def strings(self, name: str, strip: bool = False) -> np.ndarray:
        return np.asarray(self.text(name, strip).to_numpy(zero_copy_only=False), dtype=object)

    def empty_rows(self) -> np.ndarray:
        """Rows whose every field is empty (blank lines, or separators only)."""
        if self.numeric:    # a number is never empty, so no row is
            return np.zeros(self.table.num_rows, dtype=bool)
        empty = np.ones(self.table.num_rows, dtype=bool)
        for col in self.table.columns:
            empty &= pc.binary_length(col).to_numpy(zero_copy_only=False) == 0
        return empty

    def take(self, keep: np.ndarray) -> "CsvRows":
        idx = pa.array(np.flatnonzero(keep))
        return CsvRows(self.path, self.columns, self.table.take(idx), self.line[keep], self.bad_line,
                       self.bad_fields, self.sep, self.quoting)

    def renamed(self, rename) -> "CsvRows":
        """The same rows with columns renamed by `rename(name)`; a name given twice is an error."""
        names = [rename(c) for c in self.columns]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise DataError(f"{self.path} line 1: duplicate column name(s) {dups} in the header")
        return CsvRows(self.path, names, self.table.rename_columns(names), self.line, self.bad_line,
                       self.bad_fields, self.sep, self.quoting)

    def bad_rows_message(self, i: int = 0) -> str:
        return f"{self.bad_fields[i]} fields, the header has {len(self.columns)}"


class _NotNumeric(Exception):
    """A column read as numbers holds a value that is not one: read it as strings instead."""


def read_csv_rows(path: str | Path, sep: str = ",", quoting: bool = True,
                  numeric: dict[str, pa.DataType] | None = None) -> CsvRows:
    """`numeric`: columns to parse as numbers in the same pass (the 25M-row ratings file: no
    string copy of them is ever made) when every value of them is one; any other value and
    the whole file is read as strings, so the caller's row checks name it as written. What
    pyarrow's number parsers take is wider than the string checks (hexadecimal integers,
    '-0' as an integer, 'inf'): the file is read as strings when it holds an 'x' or 'X' (and an
    integer column is asked for); a caller must re-read as strings (`as_strings`) where a
    parsed value could be a spelling its checks reject (an id 0 could be '-0', a non-finite
    rating 'inf'). A column asked for as int32 (ids: half the memory) that holds a larger
    integer is read again as int64."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    raw_names, header_lines = _read_header(path, sep, quoting)
    names = [n.strip() for n in raw_names]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DataError(f"{path} line 1: duplicate column name(s) {dups} in the header")
    size = path.stat().st_size
    # Only a quote after the header can open a field holding line breaks (a writer may quote
    # every header name, as pyarrow's does).
    types = {n: pa.string() for n in raw_names}
    wanted = {raw: numeric[name] for raw, name in zip(raw_names, names) if numeric and name in numeric}
    hex_possible = any(pa.types.is_integer(t) for t in wanted.values())
    found = _find_bytes(path, (b'"' if quoting else b"") + (b"xX" if hex_possible else b""),
                        _line_offset(path, header_lines + 1))
    has_quote = b'"' in found
    if found & {b"x", b"X"}:
        # pyarrow's integer parser also takes hexadecimal ('0x1F'), which the string checks
        # reject: a file with an x anywhere after its header is read as strings
        wanted = {}
    table = None
    while wanted:   # with numbers, the strings as large_string: what pandas holds, so it takes them uncopied
        try:
            table, invalid = _arrow_read(path, raw_names, sep, quoting, has_quote, size,
                                         {**{n: pa.large_string() for n in raw_names}, **wanted})
            break
        except _NotNumeric as e:
            # an int32 column with a larger integer: again as int64; any other value: strings
            wider = {n: pa.int64() if t == pa.int32() else t for n, t in wanted.items()}
            wanted = wider if "to int32" in str(e) and wider != wanted else {}
    if table is None:
        table, invalid = _arrow_read(path, raw_names, sep, quoting, has_quote, size, types)
    release_arrow_memory()   # the parser's scratch blocks, before the checks allocate
    if table.column_names != list(raw_names) or any(
            not is_text(t) and t != wanted.get(n) for n, t in zip(raw_names, table.schema.types)):
        raise DataError(f"{path} line 1: cannot parse the header (read {table.column_names}, "
                        f"expected {list(raw_names)})")
    table = table.rename_columns(names)

    n_valid, n_bad = table.num_rows, len(invalid)
    bad_index = np.array([number - 2 for number, _, _ in invalid], dtype=np.int64)
    bad_fields = np.array([n for _, n, _ in invalid], dtype=np.int64)
    first = header_lines + 1
    if not has_quote:    # no field can hold a line break: row k starts on line first + k
        start = Lines(first, n_valid + n_bad)
    else:
        spans = np.ones(n_valid + n_bad, dtype=np.int64)
        valid_spans = np.ones(n_valid, dtype=np.int64)
        for col in table.columns:   # the regex count only for a column that holds a line break
            if is_text(col.type) and any(pc.any(pc.match_substring(col, b)).as_py() for b in "\n\r"):
                valid_spans += pc.count_substring_regex(col, LINE_BREAK).to_numpy(zero_copy_only=False)
        valid = np.ones(n_valid + n_bad, dtype=bool)
        valid[bad_index] = False
        spans[valid] = valid_spans
        spans[bad_index] = [1 + len(re.findall(LINE_BREAK, text)) for _, _, text in invalid]
        start = first + (np.cumsum(spans) - spans)
        # A quote that opens a field and never closes runs to the end of the file, so only the
        # last row can hold one; it then spans several lines (what it swallowed).
        if len(spans) and spans[-1] > 1 and _ends_inside_quotes(path, int(start[-1]), sep):
            raise _unclosed_quote(path, int(start[-1]))
    if n_bad:
        keep = np.ones(n_valid + n_bad, dtype=bool)
        keep[bad_index] = False
        return CsvRows(path, names, table, start[keep], start[bad_index], bad_fields, sep, quoting)
    return CsvRows(path, names, table, start, start[bad_index], bad_fields, sep, quoting)


def _unclosed_quote(path: Path, line: int) -> DataError:
    return DataError(f"{path} line {line}: a quoted field is never closed (unbalanced \"), so the "
                     f"rows after it cannot be told apart")


def _read_header(path: Path, sep: str, quoting: bool) -> tuple[list[str], int]:
    """The header's fields (as the CSV parser reads them) and how many physical lines it spans."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    bom = head.startswith(codecs.BOM_UTF8)
    body = head[len(codecs.BOM_UTF8):] if bom else head
    if not body.strip():
        raise DataError(f"{path}: file is empty")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(body, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e.start + (3 if bom else 0), head) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quotechar='"', doublequote=True,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE, strict=False)
    try:
        raw = next(reader)
    except (csv.Error, StopIteration) as e:
        raise DataError(f"{path} line 1: cannot parse the header ({e})") from None
    if not raw or not "".join(raw).strip():
        raise DataError(f"{path} line 1: the header is empty")
    return raw, reader.line_num


def _not_utf8(path: Path, offset: int, data) -> DataError:
    prefix = data[:offset]
    line = 1 + len(_LINE_BREAK_BYTES.findall(prefix))
    return DataError(f"{path} line {line}: not valid UTF-8 (byte 0x{data[offset]:02x} at offset "
                     f"{offset}); the file must be UTF-8 encoded")


def _find_bytes(path: Path, needles: bytes, start: int = 0, block: int = 1 << 20) -> set[bytes]:
    """Which of the single bytes `needles` occur in the file from offset `start`: one pass,
    a cache-sized block at a time (memchr per needle), stopping once all are found."""
    left, found = {needles[k:k + 1] for k in range(len(needles))}, set()
    buf = bytearray(block)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while left and (n := f.readinto(buf)):
            chunk = buf if n == block else buf[:n]
            for b in list(left):
                if chunk.find(b) >= 0:
                    found.add(b)
                    left.discard(b)
    return found


def _line_offset(path: Path, line: int) -> int:
    """The byte offset where physical line `line` (1-based) starts."""
    need, offset, pending_cr = line - 1, 0, False
    with open(path, "rb") as f:
        while need > 0 and (chunk := f.read(_BLOCK_BYTES)):
            if pending_cr and chunk.startswith(b"\n"):   # a \r\n split between two chunks
                chunk, offset = chunk[1:], offset + 1
            pending_cr = False
            for m in _LINE_BREAK_BYTES.finditer(chunk):
                need -= 1
                if need == 0:
                    if m.group() == b"\r" and m.end() == len(chunk) and f.read(1) == b"\n":
                        return offset + m.end() + 1
                    return offset + m.end()
            pending_cr = chunk.endswith(b"\r")
            offset += len(chunk)
    return offset


def _ends_inside_quotes(path: Path, line: int, sep: str) -> bool:
    """Whether the row starting on `line` (the last one) ends inside a quoted field."""
    with open(path, "rb") as f:
        f.seek(_line_offset(path, line))
        text = f.read()
    closed = re.compile(rb'"(?:[^"]|"")*"')
    boundary = re.compile(b"[" + re.escape(sep.encode()) + rb"\r\n]")
    pos = 0
    while pos < len(text):
        if text[pos:pos + 1] == b'"':          # a field that opens with a quote
            m = closed.match(text, pos)
            if not m:
                return True
            pos = m.end()
        m = boundary.search(text, pos)         # the rest of the field is literal
        if not m or m.group() != sep.encode():
            return False
        pos = m.end()
    return False


def _first_invalid_utf8(path: Path) -> DataError | None:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        dec, pos = codecs.getincrementaldecoder("utf-8")(), 0
        while pos < len(m):
            chunk = m[pos: pos + _BLOCK_BYTES]
            pending = len(dec.getstate()[0])   # bytes of an unfinished sequence before `chunk`
            try:
                dec.decode(chunk, final=pos + len(chunk) >= len(m))
            except UnicodeDecodeError as e:
                return _not_utf8(path, max(0, pos - pending + e.start), m)
            pos += len(chunk)
    return None


@contextmanager
def _quiet_handler_decode_errors():
    """pyarrow decodes a malformed row's text before calling the handler and reports a
    UnicodeDecodeError there through sys.unraisablehook (then fails the read, which we report)."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _arrow_read(path: Path, raw_names: list[str], sep: str, quoting: bool, has_quote: bool,
                size: int, types: dict) -> tuple[pa.Table, list[tuple[int, int, str]]]:
    block, threads = _BLOCK_BYTES, True
    while True:
        invalid: list[tuple[int | None, int, str]] = []

        def handler(row):
            invalid.append((row.number, row.actual_columns, row.text))
            return "skip"
        try:
            with _quiet_handler_decode_errors():
                table = pacsv.read_csv(
                    path,
                    read_options=pacsv.ReadOptions(use_threads=threads, block_size=block, encoding="utf8"),
                    parse_options=pacsv.ParseOptions(
                        delimiter=sep, quote_char='"' if quoting else False, double_quote=True,
                        escape_char=False, newlines_in_values=has_quote, ignore_empty_lines=False,
                        invalid_row_handler=handler),
                    convert_options=pacsv.ConvertOptions(
                        column_types=types, strings_can_be_null=False, null_values=[],
                        quoted_strings_can_be_null=False))
        except pa.ArrowInvalid as e:
            msg = str(e)
            if "conversion error" in msg and not all(is_text(t) for t in types.values()):
                raise _NotNumeric(msg.splitlines()[0]) from None
            if "straddl" in msg and block < _MAX_BLOCK_BYTES:     # a row longer than a block
                block = min(_MAX_BLOCK_BYTES, max(block * 8, size + 1))
                continue
            if "Empty CSV file" in msg:                          # a header and no rows
                return pa.table({n: pa.array([], pa.string()) for n in raw_names}), []
            raise _first_invalid_utf8(path) or DataError(
                f"{path}: cannot parse: {msg.splitlines()[0] if msg else type(e).__name__}") from None
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: cannot read: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        if any(number is None for number, _, _ in invalid):   # a threaded read does not number rows
            threads = False
            continue
        invalid.sort(key=lambda r: r[0])
        return table, invalid


def read_keyed_csv(path: str | Path, key: str, sep: str = ","):
    """A CSV/TSV table keyed by `key` (`mmrec export`'s --items / --user-table): every row comes
    out, as strings exactly as written, or the earliest bad one is a DataError naming its line:
    another number of fields than the header, an empty `key`, a `key` seen before. Rows whose
    fields are all empty (blank lines) are dropped; their lines are in `df.attrs['empty_rows']`."""
    rows = read_csv_rows(path, sep)
    if key not in rows.columns:
        raise DataError(f"{path}: missing column '{key}' (columns: {rows.columns})")
    problems = [(int(l), rows.bad_rows_message(j)) for j, l in enumerate(rows.bad_line[:1])]
    empty = rows.empty_rows()
    blank = (pc.binary_length(rows.text(key, strip=True)).to_numpy(zero_copy_only=False) == 0) & ~empty
    if blank.any():
        problems.append((int(rows.line[blank][0]), f"empty {key}"))
    empty_lines = [int(l) for l in rows.line[empty]]
    rows = rows.take(~empty)
    df = rows.table.to_pandas()
    dup = df[key].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(df[key].to_numpy() == df[key].iloc[i])[0])
        problems.append((int(rows.line[i]), f"duplicate {key} {show(df[key].iloc[i])} (first on line {rows.line[first]})"))
    if problems:
        line, what = min(problems)
        raise DataError(f"{path} line {line}: {what}")
    df.attrs["empty_rows"] = empty_lines
    return df
