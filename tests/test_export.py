"""Export: embeddings of content-only item tables, re-scored to the evaluator's numbers."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.data.split import Split
from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
from mmrec.export import export


def test_export_round_trip_reproduces_test_metrics(trained_run, tiny_prepared, tmp_path):
    run_dir, metrics = trained_run
    split = Split.load(run_dir / "split.npz")
    test_items = split.items_of("test")
    # A content-only table (no ratings) of the cold test items, in split order, as parquet.
    table = tiny_prepared.dataset.items.iloc[tiny_prepared.item_rows[test_items]]
    table.to_parquet(tmp_path / "new_items.parquet", index=False)
    out = export(run_dir, tmp_path / "new_items.parquet", tmp_path / "export")
    V = np.load(out / "item_embeddings.npy")
    ids = (out / "item_ids.txt").read_text().split()
    U = np.load(out / "user_embeddings.npy")
    assert ids == [str(i) for i in split.item_ids[test_items]]
    assert V.shape == (len(test_items), 32) and U.shape == (split.n_users, 32)
    parquet = pd.read_parquet(out / "item_embeddings.parquet")
    assert parquet["item_id"].tolist() == ids
    np.testing.assert_array_equal(np.stack(parquet["embedding"].to_numpy()), V)
    # Re-score from the files alone: the evaluator's test metrics come back.
    ev = RankingEvaluator(ks=(1, 5, 10, 20))
    res = ev.evaluate(DotScorer(torch.from_numpy(U), torch.from_numpy(V)), split.eval_users("test"),
                      test_items, split.positives["test"], n_items=split.n_items).means()
    for k, v in metrics["test"].items():
        if "@" in k:
            assert res[k] == pytest.approx(v, abs=1e-9), k


def test_export_new_catalogue_csv_with_topk_and_skips(trained_run, tmp_path):
    run_dir, _ = trained_run
    csv = tmp_path / "catalogue.csv"
    csv.write_text("item_id,title,year,genres\n"
                   "n1,Brand New Space Adventure,2026,Sci-Fi\n"
                   "n2,A Quiet Drama,2026,Drama\n"
                   "n3,,,\n"                                   # no content at all: skipped
                   "n4,Comedy Night,2025,Comedy\n")
    out = export(run_dir, csv, tmp_path / "cat", users=["1", "42"], top_k=2)
    report = json.loads((out / "export_report.json").read_text())
    assert report["items_read"] == 4 and report["items_exported"] == 3
    assert report["items_skipped_no_content"] == 1 and report["skipped_item_ids"] == ["n3"]
    V = np.load(out / "item_embeddings.npy")
    U = np.load(out / "user_embeddings.npy")
    users = (out / "user_ids.txt").read_text().split()
    top = pd.read_parquet(out / "topk.parquet")
    assert top["user_id"].tolist() == ["1", "1", "42", "42"] and top["rank"].tolist() == [1, 2, 1, 2]
    ids = (out / "item_ids.txt").read_text().split()
    for uid in ("1", "42"):
        scores = U[users.index(uid)] @ V.T
        want = [ids[j] for j in np.argsort(-scores)[:2]]
        got = top[top["user_id"] == uid]
        assert got["item_id"].tolist() == want
        np.testing.assert_allclose(got["score"].to_numpy(), np.sort(scores)[::-1][:2], rtol=1e-5)


def test_export_rejects_bad_tables(trained_run, tmp_path):
    from mmrec.data.tables import DataError
    run_dir, _ = trained_run
    (tmp_path / "noid.csv").write_text("title\nx\n")
    with pytest.raises(DataError, match=r"noid\.csv: missing column 'item_id'"):
        export(run_dir, tmp_path / "noid.csv", tmp_path / "o")
    (tmp_path / "dup.csv").write_text("item_id,title\na,x\na,y\n")
    with pytest.raises(DataError, match="duplicate item_id 'a'"):
        export(run_dir, tmp_path / "dup.csv", tmp_path / "o")
    (tmp_path / "users.csv").write_text("item_id,title,year,genres\na,x,2000,Drama\n")
    with pytest.raises(DataError, match="unknown user id"):
        export(run_dir, tmp_path / "users.csv", tmp_path / "o", users=["nobody"], top_k=1)
