"""`mmrec sweep`: grid cells x seeds, resumed where it stopped, summarised as mean ± std.

The runs are stood in for by a fake launcher (a tiny script writing metrics.json), so the test
checks the sweep's own logic: which runs it starts, with which arguments, and the table."""
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from mmrec.sweep import grid_cells, sweep

FAKE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = sys.argv[2:]
    kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    log = Path(os.environ["FAKE_LOG"])
    with log.open("a") as f:
        f.write(json.dumps(args) + "\\n")
    if "--resume" in args:
        run = Path(args[args.index("--resume") + 1]); kv = json.loads((run / "config.json").read_text())
    else:
        run = Path(kv["run_dir"]); run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(kv))
    if os.environ.get("FAKE_FAIL") == kv["run_dir"]:
        (run / "checkpoints").mkdir(exist_ok=True); (run / "config.yaml").write_text("x")
        sys.exit(3)
    lam, seed = float(kv["loss.alignment_weight"]), int(kv["seed"])
    m = {"test": {"ndcg@10": lam + seed / 100, "recall@10": 0.5},
         "baselines": {"random": {"test": {"ndcg@10": 0.01 * (seed + 1), "recall@10": 0.1}}}}
    (run / "metrics.json").write_text(json.dumps(m))
''')


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    return [sys.executable, str(script)]


def calls(tmp_path):
    path = tmp_path / "calls.log"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_sweep_resumes_where_it_stopped_and_tabulates_mean_std(tmp_path, launcher, monkeypatch):
    out = tmp_path / "sw"
    grid = {"loss.alignment_weight": [0.0, 0.5]}
    monkeypatch.setenv("FAKE_FAIL", str(out / "alignment_weight=0.5" / "seed-1"))
    with pytest.raises(RuntimeError, match="run failed"):
        sweep("configs/tiny.yaml", out, [0, 1, 2], grid, ["train.epochs=1"], launcher=launcher)
    first = calls(tmp_path)
    assert len(first) == 5          # 3 seeds of cell 1, then seeds 0 and 1 of cell 2 (failed)
    monkeypatch.delenv("FAKE_FAIL")
    text = sweep("configs/tiny.yaml", out, [0, 1, 2], grid, ["train.epochs=1"], launcher=launcher)
    again = calls(tmp_path)[5:]
    # only the unfinished runs: the interrupted one resumes from its checkpoint, seed 2 starts
    assert [("--resume" in a, a[-3] if "--resume" not in a else a[a.index("--resume") + 1]) for a in again] == [
        (True, str(out / "alignment_weight=0.5" / "seed-1")),
        (False, "split.seed=2")]
    fresh = again[1]
    assert "--config" in fresh and "train.epochs=1" in fresh and "loss.alignment_weight=0.5" in fresh
    assert "seed=2" in fresh and f"run_dir={out / 'alignment_weight=0.5' / 'seed-2'}" in fresh
    # a third call runs nothing
    sweep("configs/tiny.yaml", out, [0, 1, 2], grid, ["train.epochs=1"], launcher=launcher)
    assert len(calls(tmp_path)) == 7

    rows = {l.split("|")[1].strip(): l.split("|")[2:-1] for l in text.splitlines() if l.startswith("| ")}
    v = np.array([0.5, 0.51, 0.52]) * 100
    assert rows["alignment_weight=0.5"][0].strip() == "3"
    assert rows["alignment_weight=0.5"][1].strip() == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
    r = np.array([1, 2, 3.0])
    assert rows["baseline: random"][1].strip() == f"{r.mean():.2f} ± {r.std(ddof=1):.2f}"
    assert (out / "results.md").read_text() == text


def test_grid_cells_product_and_hand_picked_cells():
    cells = grid_cells({"model.fusion.type": ["late", "early"], "model.dim": [32, 64]})
    assert [n for n, _ in cells] == ["type=late,dim=32", "type=late,dim=64", "type=early,dim=32",
                                     "type=early,dim=64"]
    assert cells[2][1] == {"model.fusion.type": "early", "model.dim": 32}
    hand = grid_cells({"cells": [{"name": "video only", "set": {"fields.synopsis": None}}]})
    assert hand == [("video only", {"fields.synopsis": None})]


def test_ablate_shares_runs_between_tables_when_the_resolved_configs_are_equal():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ablate", "scripts/ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    tables, folders = ablate.plan(["modality", "fusion"], "configs/ml100k_fusion.yaml", [])
    fusion = dict(tables["fusion"])
    # base config = late fusion with 2 FC layers: that row IS the modality table's video + text run
    assert fusion["late-2fc"] == dict(tables["modality"])["video+text"]
    assert len(folders) == 3 + 4
    assert folders["video-only"] == {"fields.text": None}
    # with an override making the base early fusion, the late-2fc row is no longer shared
    tables, folders = ablate.plan(["modality", "fusion"], "configs/ml100k_fusion.yaml",
                                  ["model.fusion.type=early", "model.fusion.fc_layers=1"])
    assert dict(tables["fusion"])["late-2fc"] != dict(tables["modality"])["video+text"]
    assert dict(tables["fusion"])["early"] == dict(tables["modality"])["video+text"]


def test_a_run_killed_before_its_first_checkpoint_is_restarted_in_place(tmp_path, launcher):
    out = tmp_path / "sw"
    stale = out / "base" / "seed-0"
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text("started, no checkpoint")
    sweep("configs/tiny.yaml", out, [0], None, ["loss.alignment_weight=0.2"], launcher=launcher)
    (args,) = calls(tmp_path)
    assert "--resume" not in args and f"run_dir={stale}" in args
    assert (stale / "metrics.json").exists()                      # the table's folder, not seed-0-2
    assert (out / "base" / "seed-0.interrupted" / "config.yaml").read_text() == "started, no checkpoint"


def _compare_heads():
    import importlib.util
    spec = importlib.util.spec_from_file_location("compare_trailer_features", "scripts/compare_trailer_features.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_heads_reuses_only_identical_runs_on_identical_splits(tmp_path):
    """--reuse accepts a run trained with this command's config (other heads' sections aside) and
    names the differing key otherwise; rows of one seed must share the split."""
    import yaml
    from mmrec.config import load_config
    ch = _compare_heads()
    run = tmp_path / "seed-3"
    run.mkdir()
    cfg = load_config(ch.CLCREC_CFG, ["seed=3", "split.seed=3", f"run_dir={run}"])
    cfg["cmclrec"]["beta"] = 0.123             # another head's section: irrelevant to clcrec
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    ch.check_reused(run, ch.CLCREC_CFG, [], 3)
    cfg["clcrec"]["lam"] = 0.9
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"clcrec\.lam \(0\.9 there, 0\.5 here\)"):
        ch.check_reused(run, ch.CLCREC_CFG, [], 3)
    with pytest.raises(SystemExit, match="split.seed"):
        ch.check_reused(run, ch.CLCREC_CFG, ["clcrec.lam=0.9"], 4)

    a, b = tmp_path / "a", tmp_path / "b"
    for d, test_items in ((a, [1, 2, 3]), (b, [1, 2, 4])):
        d.mkdir()
        np.savez(d / "split.npz", train_items=np.arange(5), test_items=np.array(test_items))
    ch.same_split([a, a])
    with pytest.raises(SystemExit, match="test_items"):
        ch.same_split([a, b])


def _script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, f"scripts/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_heads_table_means_ratios_and_wins(tmp_path):
    """The cold-item table from finished runs: mean ± sample std per row, every seed's value, the
    default's ratio to CLCRec and kNN and the splits it wins, each piece's gain over `tower`."""
    ch = _script("compare_heads")
    values = {"clcrec": [0.30, 0.20], "tower": [0.20, 0.10], "tower+logq": [0.26, 0.13], "default": [0.33, 0.18]}
    for name, per_seed in values.items():
        for s, v in enumerate(per_seed):
            d = tmp_path / name / f"seed-{s}"
            d.mkdir(parents=True)
            m = {"test": {"ndcg@10": v, "recall@10": v * 2}}
            if name == "default":
                m["baselines"] = {"random": {"test": {"ndcg@10": 0.05, "recall@10": 0.1}},
                                  "knn_frozen_text": {"test": {"ndcg@10": 0.15 + s * 0.01, "recall@10": 0.3}}}
            (d / "metrics.json").write_text(json.dumps(m))
    found = ch.collect(tmp_path, [0, 1], list(values))
    labels = {**dict(ch.BASELINES), **{k: k for k in values}}
    table = {r["row"]: r for r in ch.rows(found, [0, 1], labels)}
    assert table["default"]["ndcg@10_mean"] == pytest.approx(25.5)
    assert table["default"]["ndcg@10_std"] == pytest.approx(np.std([33.0, 18.0], ddof=1))
    assert table["knn_frozen_text"]["ndcg@10_seed1"] == pytest.approx(16.0)
    text = ch.markdown(list(table.values()), [0, 1], "python scripts/compare_heads.py")
    assert "default / CLCRec NDCG@10: 1.02x on the mean; the default is ahead on 1 of 2 splits" in text
    assert "default / frozen-text kNN NDCG@10: 1.65x" in text        # 25.5 / 15.5 = 1.645
    assert "tower+logq: +4.50 NDCG@10 points over tower" in text      # 19.5 - 15.0
    assert "| 33.00 | 18.00 |" in text                                 # the default's seeds


def test_demo_summary_three_lines_per_run_against_baselines(tmp_path, monkeypatch):
    ds = _script("demo_summary")
    runs = tmp_path / "runs"
    for name, ndcg, age in (("world-demo", 0.20, 3), ("world-demo-2", 0.30, 1), ("world-demo-big", 0.9, 0)):
        d = runs / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("data:\n  source: world\n")
        (d / "metrics.json").write_text(json.dumps({
            "test": {"ndcg@10": ndcg, "recall@10": 0.5}, "best_epoch": 4, "split": {"test_items": 90},
            "baselines": {"random": {"test": {"ndcg@10": 0.06}}, "oracle": {"test": {"ndcg@10": 0.6}}}}))
        os.utime(d / "metrics.json", (1e9 - age, 1e9 - age))
    monkeypatch.chdir(tmp_path)
    run = ds.newest_run("world-demo")
    assert run.name == "world-demo-2"                    # the newest of its name, not another name's
    lines = ds.summary(run)
    assert len(lines) == 3 and "SYNTHETIC" in lines[0] and "90 cold test items" in lines[0]
    assert "NDCG@10  30.00" in lines[1]
    assert lines[2].strip() == "vs      random 6.00 (model 5.00x); oracle 60.00 (model 0.50x)"
    with pytest.raises(SystemExit, match="no finished run named nothing"):
        ds.newest_run("nothing")
