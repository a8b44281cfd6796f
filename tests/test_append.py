"""Incremental catalogues: `mmrec export [RUN] --append EXPORT --items NEW [--replace]`
(mmrec/export.py `append`): equal to a full export, refusals, and crash safety."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from mmrec.data.tables import DataError
from mmrec.export import append, export
from mmrec.serving import ItemIndex

USERS = ["1", "42", "7"]


@pytest.fixture(scope="module")
def tables(trained_run, tiny_prepared, tmp_path_factory):
    """Three item tables of the tiny run's dataset: old (60 items), new (25 others), and both."""
    d = tmp_path_factory.mktemp("append_tables")
    items = tiny_prepared.dataset.items.iloc[tiny_prepared.item_rows[:85]].reset_index(drop=True)
    paths = {}
    for name, part in (("old", items[:60]), ("new", items[60:]), ("all", items)):
        part.to_parquet(d / f"{name}.parquet", index=False)
        paths[name] = d / f"{name}.parquet"
    paths["items"] = items
    return paths


def _export(run_dir, items, out):
    return export(run_dir, items, out, USERS, 4, index="faiss", index_type="flat")


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_export(a, b):
    """Two exports hold the same catalogue: ids, vectors (float tolerance), top-K and index."""
    assert (a / "item_ids.txt").read_text() == (b / "item_ids.txt").read_text()
    np.testing.assert_allclose(np.load(a / "item_embeddings.npy"), np.load(b / "item_embeddings.npy"), rtol=0, atol=1e-6)
    pa, pb = pd.read_parquet(a / "item_embeddings.parquet"), pd.read_parquet(b / "item_embeddings.parquet")
    assert pa["item_id"].tolist() == pb["item_id"].tolist()
    np.testing.assert_allclose(np.stack(pa["embedding"]), np.stack(pb["embedding"]), atol=1e-6)
    ta, tb = pd.read_parquet(a / "topk.parquet"), pd.read_parquet(b / "topk.parquet")
    assert ta[["user_id", "rank", "item_id"]].values.tolist() == tb[["user_id", "rank", "item_id"]].values.tolist()
    ia, ib = ItemIndex.load(a), ItemIndex.load(b)
    assert ia.ids.tolist() == ib.ids.tolist() and ia.ntotal == ib.ntotal
    U = np.load(a / "user_embeddings.npy")[:20]
    ra, rb = ia.search(U, 5), ib.search(U, 5)
    np.testing.assert_array_equal(ra.rows, rb.rows)
    np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-5)


def test_append_equals_a_full_export(trained_run, tables, tmp_path):
    run_dir, _ = trained_run
    full = _export(run_dir, tables["all"], tmp_path / "full")
    out = _export(run_dir, tables["old"], tmp_path / "inc")
    assert json.loads((out / "export_report.json").read_text())["tower_fingerprint"].startswith("sha256:")
    append(out, tables["new"])                                   # the run: the export's own
    _same_export(out, full)
    report = json.loads((out / "export_report.json").read_text())
    assert report["items_exported"] == 85 and report["appends"][0]["items_appended"] == 25
    assert report["index"]["items"] == 85
    # --replace: one old item gets another title; the same as exporting that table whole
    items = tables["items"].copy()
    items.loc[3, "title"] = "A Completely Different Title"
    items.iloc[[3]].to_parquet(tmp_path / "changed.parquet", index=False)
    items.to_parquet(tmp_path / "all_changed.parquet", index=False)
    before = np.load(out / "item_embeddings.npy")
    from mmrec.cli import main
    assert main(["export", str(run_dir), "--append", str(out), "--items", str(tmp_path / "changed.parquet"),
                 "--replace"]) == 0
    after = np.load(out / "item_embeddings.npy")
    assert after.shape == before.shape and not np.allclose(after[3], before[3])
    np.testing.assert_array_equal(np.delete(after, 3, 0), np.delete(before, 3, 0))
    _same_export(out, _export(run_dir, tmp_path / "all_changed.parquet", tmp_path / "full_changed"))
    assert json.loads((out / "export_report.json").read_text())["appends"][1]["replaced_item_ids"] == [items["item_id"][3]]


def test_duplicates_and_another_tower_are_refused(trained_run, tables, tmp_path, capsys):
    from mmrec.cli import main
    from safetensors.torch import load_file, save_file
    run_dir, _ = trained_run
    out = _export(run_dir, tables["old"], tmp_path / "e")
    before = _files(out)
    ids = tables["items"]["item_id"].tolist()
    assert main(["export", "--append", str(out), "--items", str(tables["all"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mmrec: error: --append")
    assert "60 item id(s)" in err and all(repr(i) in err for i in ids[:5]) and "(+55 more)" in err
    assert "--replace" in err and repr(ids[5]) not in err
    # another tower: the same run with one weight changed
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "export*"))
    state = load_file(other / "model" / "model.safetensors")
    key = next(k for k, v in state.items() if k.startswith("item_encoder.") and v.is_floating_point())
    state[key] = state[key] + 1e-3
    save_file(state, str(other / "model" / "model.safetensors"))
    with pytest.raises(DataError, match="is not the one that made this export") as e:
        append(out, tables["new"], run_dir=other)
    assert "\n" not in str(e.value) and str(other) in str(e.value)
    assert _files(out) == before                                 # nothing was written


def test_a_failed_swap_leaves_the_old_export(trained_run, tables, tmp_path, monkeypatch):
    import mmrec.training.checkpoint as checkpoint
    run_dir, _ = trained_run
    out = _export(run_dir, tables["old"], tmp_path / "e")
    before = _files(out)

    def dies(tmp, final):
        raise RuntimeError("killed at the swap")
    monkeypatch.setattr(checkpoint, "replace_dir", dies)
    with pytest.raises(RuntimeError, match="killed at the swap"):
        append(out, tables["new"])
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]   # the temporary is gone


def test_kill_mid_append_leaves_the_old_export(trained_run, tables, tmp_path):
    """SIGKILL while the appended embeddings are being written (tests/test_faults.py's driver):
    the export is byte-identical, and appending again afterwards works."""
    from tests.test_faults import DRIVER, ROOT, env
    run_dir, _ = trained_run
    out = _export(run_dir, tables["old"], tmp_path / "e")
    before = _files(out)
    driver, flag = tmp_path / "driver.py", tmp_path / "flag"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), "export", "--append", str(out), "--items", str(tables["new"])]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(FAULT_PAUSE="item_embeddings.npy", FAULT_FLAG=str(flag)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t = time.time()
    while not flag.exists():
        assert p.poll() is None, p.communicate()[1].decode()[-3000:]
        assert time.time() - t < 300, "the append never reached its write"
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _files(out) == before
    assert any(q.name.endswith(".tmp") for q in tmp_path.iterdir())   # its half-written temporary ...
    append(out, tables["new"])
    assert not any(q.name.endswith(".tmp") for q in tmp_path.iterdir())   # ... removed by the next one
    assert len((out / "item_ids.txt").read_text().split()) == 85
