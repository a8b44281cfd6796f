"""The 25M-rating data path's fast paths (issue 18: integer codes instead of strings, a typed
read of the numbers, chunk-wise scans, lazy line numbers) against plain references: each must
give what the straightforward pandas / string code gives, on ids of every kind."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrec.data.csv_rows import Lines, read_csv_rows
from mmrec.data.readers import read_dataset
from mmrec.data.split import PARTS, _sorted_ids, make_split, part_sizes
from mmrec.data.tables import MultiModalDataset, digit_ints, id_codes, isin


def reference_split(items: pd.DataFrame, inter: pd.DataFrame, min_ratings: int, threshold: float,
                    ratios, method: str, seed: int):
    """The cold-item split written plainly, on strings and pandas group-bys (the code before
    the integer-code rewrite): users, items, parts, and every part's (user, item) positives."""
    counts = inter.groupby("user_id").size()
    inter = inter[inter["user_id"].isin(counts.index[counts >= min_ratings])]
    user_ids = _sorted_ids(inter["user_id"].to_numpy())
    item_ids = items["item_id"].astype(str).to_numpy()
    n_train, n_val, _ = part_sizes(len(item_ids), ratios)
    if method == "random":
        order = np.random.default_rng(seed).permutation(len(item_ids))
    else:
        first = inter.groupby("item_id")["timestamp"].min()
        order = np.argsort(pd.Series(item_ids).map(first).to_numpy(dtype=np.float64, na_value=np.inf),
                           kind="stable")
    part = np.zeros(len(item_ids), dtype=np.int8)
    part[order[n_train:n_train + n_val]] = 1
    part[order[n_train + n_val:]] = 2
    pos = inter[inter["rating"] >= threshold]
    u = pd.Index(user_ids).get_indexer(pos["user_id"].astype(str))
    i = pd.Index(item_ids).get_indexer(pos["item_id"].astype(str))
    pairs = {p: sorted(zip(u[part[i] == k].tolist(), i[part[i] == k].tolist())) for k, p in enumerate(PARTS)}
    return user_ids, item_ids, part, pairs


ID_KINDS = {
    "dense ints": lambda k: str(k + 1),
    "sparse ints": lambda k: str(10 ** 9 + 7919 * k),          # beyond the lookup table's range
    "leading zeros": lambda k: f"{k % 7:03d}" if k % 2 else str(k % 7),   # '003' and '3' differ
    "strings": lambda k: f"u{k}",
}


@settings(max_examples=25, deadline=None)
@given(n_users=st.integers(1, 12), n_items=st.integers(3, 15), n_rows=st.integers(1, 80),
       kind=st.sampled_from(sorted(ID_KINDS)), method=st.sampled_from(["random", "time"]),
       min_ratings=st.integers(1, 4), seed=st.integers(0, 3))
def test_split_equals_the_plain_pandas_reference(n_users, n_items, n_rows, kind, method, min_ratings, seed):
    rng = np.random.default_rng(seed)
    name = ID_KINDS[kind]
    item_ids = list(dict.fromkeys(name(k) for k in range(n_items * 3)))[:n_items]
    user_ids = list(dict.fromkeys(name(k) for k in range(n_users * 3)))[:n_users]
    n_items, n_users = len(item_ids), len(user_ids)
    pairs = {(int(rng.integers(n_users)), int(rng.integers(n_items))) for _ in range(n_rows)}
    inter = pd.DataFrame({"user_id": [user_ids[u] for u, _ in pairs], "item_id": [item_ids[i] for _, i in pairs],
                          "rating": rng.integers(1, 6, len(pairs)).astype(np.float32),
                          "timestamp": rng.integers(0, 50, len(pairs))})
    if not (inter.groupby("user_id").size() >= min_ratings).any():
        return
    items = pd.DataFrame({"item_id": item_ids})
    ds = MultiModalDataset("t", items, inter, None, {}, {})
    data_cfg = {"min_user_ratings": min_ratings, "positive_threshold": 4.0}
    split_cfg = {"ratios": [0.6, 0.2, 0.2], "method": method, "seed": seed}
    got = make_split(ds, data_cfg, split_cfg)
    users, items_ref, part, ref_pairs = reference_split(items, inter, min_ratings, 4.0, [0.6, 0.2, 0.2], method, seed)
    assert got.user_ids.tolist() == users.tolist()
    assert got.item_ids.tolist() == items_ref.tolist()
    assert got.item_part.tolist() == part.tolist()
    for p in PARTS:
        u, i = got.positives[p].pairs()
        assert list(zip(u.tolist(), i.tolist())) == ref_pairs[p]


@pytest.mark.parametrize("values, expected", [
    (["1", "20", "300"], [1, 20, 300]),
    (["0", "10"], [0, 10]),
    (["3000000000", "1"], [3000000000, 1]),            # beyond int32: int64
    (["007", "7"], None),                              # not one-to-one
    (["1", " 2"], None), (["1", ""], None), (["1", "x"], None),
    (["99999999999999999999"], None),                  # beyond int64
])
def test_digit_ints_only_where_one_to_one(values, expected):
    for column in (pa.array(values), pa.array(values, pa.large_string()),
                   pa.chunked_array([pa.array(values[:1]), pa.array(values[1:], pa.string())]), pd.Series(values)):
        got = digit_ints(column)
        assert (got is None) if expected is None else got.tolist() == expected


@pytest.mark.parametrize("values", [["5", "3", "5", "900", "3"], ["05", "5", "05"], ["b", "a", "b"],
                                    [str(10 ** 12), "1", str(10 ** 12)]])
def test_id_codes_equal_iff_ids_equal(values):
    codes, uniques = id_codes(pd.Series(values))
    assert sorted(uniques.tolist()) == sorted(set(values))
    assert [uniques[c] for c in codes] == values


def test_isin_chunk_wise_equals_pandas():
    values = pa.chunked_array([pa.array(["1", "2", "30"]), pa.array(["4", "30"]), pa.array(["007"])])
    allowed = pd.Series(["30", "1", "7"])
    want = pd.Series(values.to_pylist()).isin(allowed).to_numpy()
    assert isin(values, allowed).tolist() == want.tolist()      # '007' is not '7': strings path
    assert isin(values[:5], allowed).tolist() == want[:5].tolist()   # ints path


def test_lines_index_like_the_array_they_stand_for():
    lines, ref = Lines(2, 7), np.arange(2, 9)
    mask = np.array([1, 0, 1, 1, 0, 0, 1], dtype=bool)
    for key in (0, 6, -1, -7, np.int64(3), slice(1, 5), slice(None, None, -2), mask, np.array([0, 6, -2]),
                np.zeros(0, dtype=np.int64)):
        assert np.array_equal(np.asarray(lines[key]), ref[key])
    assert lines.tolist() == ref.tolist() and np.array_equal(np.asarray(lines), ref) and len(lines) == 7
    for key in (7, -8, np.array([7]), np.ones(3, dtype=bool)):
        with pytest.raises(IndexError):
            lines[key]


def _ml25m(tmp_path, ratings: str):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (1990),Drama\n2,B (1991),Comedy\n3,C (1992),Drama\n")
    (tmp_path / "ratings.csv").write_text(ratings)
    return read_dataset({"source": "ml25m", "path": str(tmp_path), "on_bad_row": "skip"})


def test_ratings_in_any_row_order_give_the_same_table_and_skips(tmp_path):
    rows = ["1,1,4.0,10", "1,2,3.5,11", "2,1,5.0,12", "2,3,1.0,13", "1,2,2.0,9", "3,9,4.0,14", "3,1,4.5,15"]
    header = "userId,movieId,rating,timestamp\n"
    in_order = sorted(rows, key=lambda r: tuple(map(int, r.split(",")[:2])))   # GroupLens' layout
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sorted_ds = _ml25m(tmp_path / "a", header + "\n".join(in_order) + "\n")
    shuffled = _ml25m(tmp_path / "b", header + "\n".join(rows[::-1]) + "\n")

    def table(ds):
        return sorted(map(tuple, ds.interactions.astype(str).to_numpy().tolist()))
    assert table(sorted_ds) == table(shuffled)
    assert len(shuffled.interactions) == 5        # 7 rows - an unknown item (9) - an older duplicate
    for ds in (sorted_ds, shuffled):
        skips = ds.report["interactions"].skips
        assert {k: n for k, n in skips.counts.items() if n} == {
            "unknown item id": 1, "duplicate (user, item) row; kept the latest": 1}
        assert ("1", "2", "3.5") in {tuple(r[:3]) for r in ds.interactions.astype(str).to_numpy().tolist()}


def test_a_bad_number_read_as_numbers_is_named_as_written(tmp_path):
    """The typed read of rating/timestamp falls back to strings for the message."""
    for bad, what in (("-1", "rating '-1' is negative"), ("1e400", "rating '1e400' is not a finite number"),
                      (" 3.5 ", None)):
        d = tmp_path / f"r{abs(hash(bad))}"
        d.mkdir()
        (d / "movies.csv").write_text("movieId,title,genres\n1,A (1990),Drama\n")
        (d / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,1,4.0,5\n2,1,{bad},6\n")
        if what is None:      # whitespace around a number: accepted, as the string checks do
            ds = read_dataset({"source": "ml25m", "path": str(d)})
            assert ds.interactions["rating"].tolist() == [4.0, 3.5]
            continue
        with pytest.raises(Exception) as e:
            read_dataset({"source": "ml25m", "path": str(d)})
        assert str(e.value).startswith(f"{d / 'ratings.csv'} line 3: {what}")


def test_numeric_read_falls_back_to_strings_and_keeps_columns(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("a,b\n1,2.5\nx,3\n")
    typed = read_csv_rows(p, numeric={"a": pa.int64(), "b": pa.float64()})
    assert all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in typed.table.schema.types)
    p.write_text("a,b\n1,2.5\n4,3\n")
    typed = read_csv_rows(p, numeric={"a": pa.int64(), "b": pa.float64()})
    assert typed.numeric and typed.text("b").to_pylist() == [2.5, 3.0]
    assert typed.as_strings().text("b").to_pylist() == ["2.5", "3"]


# ---------------------------------------------------------------------------------------------
# Integer ids parsed once (the ml25m reader): the typed read against the string checks and a
# plain reference, the leading-zeros rule in every GroupLens file, and the integers carried
# into the split.

from mmrec.data import readers as readers_mod                                    # noqa: E402
from mmrec.data.batches import EpochSampler                                      # noqa: E402
from mmrec.data.csv_rows import _find_bytes                                      # noqa: E402
from mmrec.data.split import value_codes                                         # noqa: E402
from mmrec.data.tables import int_strings, isin_ints                             # noqa: E402

MOVIES3 = "movieId,title,genres\n1,A (1990),Drama\n2,B (1991),Comedy\n3,C (1992),Drama\n"


def _reference_ratings(rows: list[tuple[str, str, str, str]], known: set[int]):
    """The ratings table written plainly: ids as integers, unknown items and all but the latest
    (timestamp, then line) rating of a (user, item) pair dropped; rows in file order."""
    recs = [(int(u), int(i), float(r), int(t), k) for k, (u, i, r, t) in enumerate(rows)]
    unknown = [x for x in recs if x[1] not in known]
    latest = {}
    for x in sorted((x for x in recs if x[1] in known), key=lambda x: (x[3], x[4])):
        latest[(x[0], x[1])] = x
    kept = sorted(latest.values(), key=lambda x: x[4])
    return kept, len(unknown), len(recs) - len(unknown) - len(kept)


def _write(d, ratings_rows, movies=MOVIES3):
    d.mkdir(parents=True, exist_ok=True)
    (d / "movies.csv").write_text(movies)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                   + "".join(",".join(r) + "\n" for r in ratings_rows))
    return d


ID_SPELLINGS = st.sampled_from(["{}", "{}", "{}", "0{}", "00{}", " {} ", "{} "])


@st.composite
def rating_files(draw):
    n = draw(st.integers(1, 30))
    sorted_rows = draw(st.booleans())
    rows = []
    for _ in range(n):
        u, i = draw(st.integers(1, 5)), draw(st.integers(1, 4))          # item 4: not in movies.csv
        rows.append((draw(ID_SPELLINGS).format(u), draw(ID_SPELLINGS).format(i),
                     draw(st.sampled_from(["0.5", "3", "4.0", "5.0", "2.5"])),
                     str(draw(st.integers(-5, 20)))))
    if sorted_rows:
        rows.sort(key=lambda r: (int(r[0]), int(r[1])))
    return rows


@settings(max_examples=40, deadline=None)
@given(rows=rating_files())
def test_typed_read_equals_the_string_checks_and_a_plain_reference(rows, tmp_path_factory):
    d = _write(tmp_path_factory.mktemp("r"), rows)
    cols = {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"}
    typed = read_csv_rows(d / "ratings.csv", numeric={"userId": pa.int32(), "movieId": pa.int32(),
                                                      "rating": pa.float64(), "timestamp": pa.int64()})
    assert typed.numeric and readers_mod._typed_ratings_ok(typed, cols)     # the fast path is the one tested
    fast = read_dataset({"source": "ml25m", "path": str(d)})
    orig = readers_mod._typed_ratings_ok
    readers_mod._typed_ratings_ok = lambda *a: False          # force the string checks
    try:
        slow = read_dataset({"source": "ml25m", "path": str(d)})
    finally:
        readers_mod._typed_ratings_ok = orig
    kept, n_unknown, n_dup = _reference_ratings(rows, {1, 2, 3})
    for ds in (fast, slow):
        inter = ds.interactions
        assert inter["user_id"].tolist() == [str(x[0]) for x in kept]
        assert inter["item_id"].tolist() == [str(x[1]) for x in kept]
        assert inter["rating"].tolist() == [x[2] for x in kept]
        assert inter["timestamp"].tolist() == [x[3] for x in kept]
        assert inter["rating"].dtype == np.float32 and inter["timestamp"].dtype == np.int64
        counts = ds.report["interactions"].skips.counts
        assert counts.get("unknown item id", 0) == n_unknown
        assert counts.get("duplicate (user, item) row; kept the latest", 0) == n_dup
        ints = ds.id_ints()
        assert ints is not None
        assert ints.user.tolist() == [x[0] for x in kept] and ints.item.tolist() == [x[1] for x in kept]
    assert fast.report["interactions"].to_dict() == slow.report["interactions"].to_dict()


def test_typed_read_is_used_for_a_clean_file_and_an_int32_overflow_widens(tmp_path):
    rows = [("1", "1", "4.0", "5"), ("3000000000", "2", "3.0", "6")]
    d = _write(tmp_path, rows)
    typed = read_csv_rows(d / "ratings.csv", numeric={"userId": pa.int32(), "movieId": pa.int32(),
                                                      "rating": pa.float64(), "timestamp": pa.int64()})
    assert typed.numeric and typed.text("userId").type == pa.int64() and typed.text("movieId").type == pa.int64()
    ds = read_dataset({"source": "ml25m", "path": str(d)})
    assert ds.interactions["user_id"].tolist() == ["1", "3000000000"]
    assert ds.id_ints().user.tolist() == [1, 3000000000]


def test_leading_zeros_name_the_same_id_in_every_grouplens_file(tmp_path):
    """GroupLens ids are integers: '007' is movie 7 in movies.csv, ratings.csv, links.csv,
    ml-youtube.csv and the synopsis file alike; a second spelling of an id is a duplicate."""
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n007,A (1990),Drama\n2,B (1991),Comedy\n7,C,Drama\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n03,7,4.0,5\n3,007,3.0,6\n1,02,5.0,7\n")
    (tmp_path / "links.csv").write_text("movieId,imdbId,tmdbId\n0007,0114709,862\n")
    (tmp_path / "ml-youtube.csv").write_text("youtubeId,movieId,title\nK26_sDKnvMU,7,A\n")
    (tmp_path / "syn.csv").write_text("movieId,synopsis\n00002,two\n")
    ds = read_dataset({"source": "ml25m", "path": str(tmp_path), "synopsis_file": "syn.csv", "on_bad_row": "skip"})
    items = ds.items.set_index("item_id")
    assert list(items.index) == ["7", "2"]
    assert ds.report["items"].skips.counts == {"duplicate movieId; kept the first": 1}
    assert items.loc["7", "title"] == "A" and items.loc["7", "imdb_id"] == "0114709"    # values as written
    assert items.loc["7", "youtube_id"] == "K26_sDKnvMU" and items.loc["2", "synopsis"] == "two"
    inter = ds.interactions
    assert inter[["user_id", "item_id", "rating"]].values.tolist() == [["3", "7", 3.0], ["1", "2", 5.0]]
    assert ds.report["interactions"].skips.counts == {"duplicate (user, item) row; kept the latest": 1}


@pytest.mark.parametrize("bad, what", [
    ("0x1", "userId '0x1' is not an integer id"),          # pyarrow's int parser takes hexadecimal
    ("0X1", "userId '0X1' is not an integer id"),
    ("-0", "userId '-0' is not an integer id"),             # pyarrow's gives 0
    ("-3", "userId '-3' is not an integer id"),
    ("9223372036854775808", "userId '9223372036854775808' is not an integer id below 2**63"),
])
def test_a_spelling_the_typed_parser_takes_is_still_rejected_as_written(tmp_path, bad, what):
    d = _write(tmp_path, [("1", "1", "4.0", "5"), (bad, "2", "3.0", "6")])
    with pytest.raises(Exception) as e:
        read_dataset({"source": "ml25m", "path": str(d)})
    assert str(e.value).startswith(f"{d / 'ratings.csv'} line 3: {what}")
    ds = read_dataset({"source": "ml25m", "path": str(d), "on_bad_row": "skip"})
    assert ds.interactions["user_id"].tolist() == ["1"]
    assert ds.report["interactions"].skips.counts == {"malformed userId": 1}


def test_an_id_zero_is_valid_and_read_through_the_string_checks(tmp_path):
    d = _write(tmp_path, [("0", "1", "4.0", "5"), ("00", "2", "3.0", "6")])
    ds = read_dataset({"source": "ml25m", "path": str(d)})
    assert ds.interactions["user_id"].tolist() == ["0", "0"] and ds.id_ints().user.tolist() == [0, 0]


def test_split_from_carried_integers_equals_split_from_strings(tmp_path):
    """The split on the reader's integers gives what it gives on the strings; a table changed
    after reading drops the integers (they no longer describe it)."""
    rng = np.random.default_rng(0)
    rows = sorted({(int(rng.integers(1, 40)), int(rng.integers(1, 4))) for _ in range(300)})
    d = _write(tmp_path, [(str(u), str(i), str(float(rng.integers(1, 6))), str(k)) for k, (u, i) in enumerate(rows)])
    ds = read_dataset({"source": "ml25m", "path": str(d)})
    assert ds.id_ints() is not None
    plain = MultiModalDataset("t", ds.items, ds.interactions.copy(deep=True).astype({"user_id": object, "item_id": object}))
    assert plain.id_ints() is None
    for method in ("random", "time"):
        cfg = ({"min_user_ratings": 3, "positive_threshold": 3.5}, {"ratios": [0.4, 0.3, 0.3], "method": method, "seed": 1})
        a, b = make_split(ds, *cfg), make_split(plain, *cfg)
        assert a.user_ids.tolist() == b.user_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()
        assert a.item_part.tolist() == b.item_part.tolist() and a.stats == b.stats
        for p in PARTS:
            assert np.array_equal(a.positives[p].indptr, b.positives[p].indptr)
            assert np.array_equal(a.positives[p].indices, b.positives[p].indices)
        assert np.array_equal(a.train_pairs(), np.stack(b.positives["train"].pairs(), axis=1))
    ds.interactions = ds.interactions.iloc[::-1].reset_index(drop=True)
    assert ds.id_ints() is None
    ds.interactions = ds.interactions.assign(user_id=ds.interactions["user_id"].str.zfill(2))
    assert ds.id_ints() is None


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 300), max_size=60), allowed=st.lists(st.integers(0, 300), max_size=20),
       big=st.booleans())
def test_integer_helpers_equal_plain_references(values, allowed, big):
    shift = 10 ** 12 if big else 0        # beyond the lookup tables: hashing and casting
    v = np.array(values, dtype=np.int64) + shift
    a = np.array(allowed, dtype=np.int64) + shift
    assert isin_ints(v, a).tolist() == [x in set(a.tolist()) for x in v.tolist()]
    assert int_strings(v).to_pylist() == [str(x) for x in v.tolist()]
    codes, names, by_value = value_codes(v)
    assert [names[c] for c in codes] == [str(x) for x in v.tolist()]
    assert not by_value or np.array_equal(codes, v)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), start=st.integers(0, 40), block=st.integers(1, 64))
def test_find_bytes_equals_a_plain_search(data, start, block, tmp_path_factory):
    p = tmp_path_factory.mktemp("f") / "b"
    p.write_bytes(data)
    want = {b for b in (b'"', b"x", b"X") if b in data[start:]}
    assert _find_bytes(p, b'"xX', start, block) == want


@pytest.mark.parametrize("n, seed, epoch", [(0, 0, 0), (1, 3, 1), (7, 0, 2), (1000, 5, 0), (100_003, 1, 4)])
def test_epoch_order_is_numpys_permutation_bit_for_bit(n, seed, epoch):
    """The int32 shuffle gives rng.permutation's order and leaves the generator where it did,
    so the per-pair seeds (and exact resume) are unchanged."""
    s = EpochSampler(n, seed)
    s.set_epoch(epoch)
    perm, seeds = s.order()
    rng = np.random.default_rng([seed, epoch])
    want = rng.permutation(n)
    assert perm.dtype == np.int64 and np.array_equal(perm, want)
    assert np.array_equal(seeds, rng.integers(0, 2 ** 62, size=n))
