"""The FAISS item index (mmrec/serving.py, `mmrec export --index faiss`, `mmrec query`), checked
against brute-force numpy references."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.data.tables import DataError
from mmrec.serving import ItemIndex, find_index, query
from preprocessing.files import CorruptFileError


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n, d, seed=0, centres=40, s=None):
    rng = np.random.default_rng(seed)
    c = _unit(rng.standard_normal((centres, d)))
    z = rng.integers(0, centres, n)
    v = _unit(c[z] + 1.5 / np.sqrt(d) * rng.standard_normal((n, d)))
    if s:
        v = _unit(v[:, None] + 0.5 / np.sqrt(d) * rng.standard_normal((n, s, d)))
    users = _unit(c[rng.integers(0, centres, 30)] + 1.5 / np.sqrt(d) * rng.standard_normal((30, d)))
    return v, users, np.array([f"item{i}" for i in range(n)], dtype=object)


def _reference(scores, k):
    """Brute-force top-k (rows, scores) of a [U, N] score matrix; -inf entries never returned."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, 1)
    return np.where(np.isfinite(top), order, -1), top


def test_flat_equals_brute_force_top_k():
    V, U, ids = _clustered(500, 16)
    res = ItemIndex.build(V, ids, "flat").search(U, 7)
    rows, top = _reference(U @ V.T, 7)
    np.testing.assert_array_equal(res.rows, rows)
    np.testing.assert_allclose(res.scores, top, rtol=0, atol=1e-5)
    assert res.ids.tolist() == ids[rows].tolist()


def test_segments_are_deduplicated_to_the_max_over_segments():
    V, U, ids = _clustered(300, 16, s=4)
    index = ItemIndex.build(V, ids, "flat")
    assert index.ntotal == 1200 and len(index) == 300 and index.segments == 4
    res = index.search(U, 10)
    best = np.einsum("ud,nsd->uns", U, V).max(axis=2)          # Eq. 4
    rows, top = _reference(best, 10)
    np.testing.assert_array_equal(res.rows, rows)
    np.testing.assert_allclose(res.scores, top, rtol=0, atol=1e-5)
    assert all(len(set(r)) == 10 for r in res.rows)              # k distinct items


def test_exclusion_leaves_k_other_items():
    V, U, ids = _clustered(200, 8, s=3)
    best = np.einsum("ud,nsd->uns", U, V).max(axis=2)
    rng = np.random.default_rng(1)
    exclude = [ids[np.argsort(-best[u])[:rng.integers(0, 30)]] for u in range(len(U))]   # their best ones
    exclude[0] = np.array(["not-an-item", *ids[:3]], dtype=object)                        # unknown: ignored
    res = ItemIndex.build(V, ids, "flat").search(U, 5, exclude=exclude)
    masked = best.copy()
    for u, ex in enumerate(exclude):
        masked[u, [int(i[4:]) for i in ex if i.startswith("item")]] = -np.inf
    rows, top = _reference(masked, 5)
    np.testing.assert_array_equal(res.rows, rows)
    np.testing.assert_allclose(res.scores, top, atol=1e-5)
    # all but 2 items excluded: 2 come back, the rest is padding
    few = ItemIndex.build(V[:10], ids[:10], "flat").search(U[:1], 5, exclude=[ids[:8]])
    assert sorted(few.rows[0][:2].tolist()) == [8, 9] and few.rows[0][2:].tolist() == [-1, -1, -1]
    assert few.ids[0][2:].tolist() == [None] * 3 and np.isneginf(few.scores[0][2:]).all()


@pytest.mark.parametrize("kind,params,bound", [("ivf", {}, 0.9), ("hnsw", {}, 0.95), ("ivfpq", {"pq_m": 16}, 0.6)])
def test_approximate_indexes_recall(kind, params, bound):
    V, U, ids = _clustered(4000, 32, centres=50)
    index = ItemIndex.build(V, ids, kind, **params)
    exact = _reference(U @ V.T, 10)[0]
    got = index.search(U, 10).rows
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= bound, (kind, recall, index.params)
    if kind == "ivf":
        assert index.params["nlist"] == min(round(4 * np.sqrt(4000)), 4000 // 39) and index.params["nprobe"] == 32
        # nprobe = nlist scans every cell: exact
        np.testing.assert_array_equal(index.search(U, 10, nprobe=index.params["nlist"]).rows, exact)


def test_save_load_round_trip_and_append(tmp_path):
    V, U, ids = _clustered(600, 16, s=2)
    index = ItemIndex.build(V[:500], ids[:500], "ivf", nlist=16, nprobe=4)
    index.add(V[500:], ids[500:])
    folder = index.save(tmp_path / "export" / "index")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["index"]   # no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ["ids.txt", "index.faiss", "index.json"]
    loaded = ItemIndex.load(tmp_path / "export")                 # an export folder finds its index/
    assert loaded.ids.tolist() == ids.tolist() and loaded.params == index.params and loaded.segments == 2
    a, b = index.search(U, 8), loaded.search(U, 8)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(DataError, match=r"1 id\(s\) already in the index: \['item3'\]"):
        loaded.add(V[3:4], ids[3:4])
    with pytest.raises(DataError, match="unknown parameter"):
        ItemIndex.build(V, ids, "hnsw", nlist=3)


@pytest.mark.parametrize("how", ["truncated", "no_index", "no_ids", "ids_short", "bad_json"])
def test_a_missing_or_corrupt_file_is_one_line_naming_it(tmp_path, how):
    V, _, ids = _clustered(100, 8)
    folder = ItemIndex.build(V, ids, "hnsw").save(tmp_path / "index")
    name = {"truncated": "index.faiss", "no_index": "index.faiss", "no_ids": "ids.txt",
            "ids_short": "ids.txt", "bad_json": "index.json"}[how]
    p = folder / name
    if how == "truncated":
        p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    elif how in ("no_index", "no_ids"):
        p.unlink()
    elif how == "ids_short":
        p.write_text("".join(f"{i}\n" for i in ids[:-1]))
    else:
        p.write_text("{oops")
    with pytest.raises(CorruptFileError) as e:
        ItemIndex.load(folder)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and str(folder) in msg, msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no item index"):
        find_index(tmp_path / "empty")


def test_cli_export_index_then_query_equals_exact_top_k(trained_run, tiny_prepared, tmp_path, capsys):
    """`mmrec export --index faiss` then `mmrec query` on the tiny run: the export's exact top-K
    (write_topk), and with --exclude-seen write_topk with the users' training items masked."""
    from mmrec.cli import main
    from mmrec.data.split import CSR, Split
    from mmrec.export import write_topk
    run_dir, _ = trained_run
    split = Split.load(run_dir / "split.npz")
    ds, rows = tiny_prepared.dataset, tiny_prepared.item_rows
    train_items = split.items_of("train")[:150]                     # items the users have seen ...
    table = ds.items.iloc[rows[np.concatenate([train_items, split.items_of("test")[:50]])]]   # ... and new ones
    table.to_parquet(tmp_path / "items.parquet", index=False)
    out, users = tmp_path / "export", ["1", "42", "7"]
    assert main(["export", str(run_dir), "--items", str(tmp_path / "items.parquet"), "--out", str(out),
                 "--top-k", "5", "--users", ",".join(users), "--index", "faiss", "--index-type", "flat"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["index"]["index_type"] == "flat" and report["index"]["items"] == 200
    capsys.readouterr()
    assert main(["query", str(out), "--users", ",".join(users), "--top-k", "5"]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out), sep="\t", dtype={"user_id": str, "item_id": str})
    want = pd.read_parquet(out / "topk.parquet")
    assert printed[["user_id", "rank", "item_id"]].values.tolist() == want[["user_id", "rank", "item_id"]].values.tolist()
    np.testing.assert_allclose(printed["score"], want["score"], rtol=1e-5)
    # --exclude-seen: the training positives of each user among the exported items never come back
    assert main(["query", str(out), "--users", ",".join(users), "--top-k", "5", "--exclude-seen",
                 "--out", str(tmp_path / "q.parquet")]) == 0
    got = pd.read_parquet(tmp_path / "q.parquet")
    ids = np.array((out / "item_ids.txt").read_text().split())
    col = pd.Index(ids).get_indexer(split.item_ids.astype(str))
    u_rows = pd.Index(split.user_ids.astype(str)).get_indexer(users)
    r, c = split.positives["train"].take_rows(u_rows).pairs()
    keep = col[c] >= 0
    assert keep.sum() > 0                                            # something to exclude
    U = torch.from_numpy(np.load(out / "user_embeddings.npy"))[torch.from_numpy(u_rows)]
    V = torch.from_numpy(np.load(out / "item_embeddings.npy"))
    write_topk(tmp_path / "ref.parquet", U, V, np.array(users), ids, None, 5,
               exclude=CSR.from_pairs(r[keep], col[c[keep]], len(users)))
    ref = pd.read_parquet(tmp_path / "ref.parquet")
    assert got[["user_id", "rank", "item_id"]].values.tolist() == ref[["user_id", "rank", "item_id"]].values.tolist()
    seen = {(users[a], ids[col[b]]) for a, b in zip(r[keep], c[keep])}
    assert not seen & set(zip(got["user_id"], got["item_id"]))
    # the Python API and a run directory as the source give the same
    api = query(out, users, 5, exclude_seen=True)
    assert api["item_id"].tolist() == got["item_id"].tolist()
    assert main(["query", str(out), "--users", "nobody", "--top-k", "5"]) == 2
    assert "unknown user id(s) ['nobody']" in capsys.readouterr().err
