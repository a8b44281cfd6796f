"""`mmrec sweep`: grid cells x seeds, resumed where it stopped, summarised as mean ± std.

The runs are stood in for by a fake launcher (a tiny script writing metrics.json), so the test
checks the sweep's own logic: which runs it starts, with which arguments, and the table."""
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

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
    # another head's section (an older run's config.yaml has them all): irrelevant to clcrec
    cfg.setdefault("cmclrec", {})["beta"] = 0.123
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
    assert ("default / CLCRec NDCG@10: 1.02x on the mean of the 2 split(s) both ran on; the default is "
            "ahead on 1 of them") in text
    assert "default / frozen-text kNN NDCG@10: 1.65x" in text        # 25.5 / 15.5 = 1.645
    assert "tower+logq: +4.50 NDCG@10 points over tower" in text      # 19.5 - 15.0
    assert "| 33.00 | 18.00 |" in text                                 # the default's seeds


def test_compare_heads_model_seeds_average_within_a_split_then_over_splits(tmp_path):
    """--model-seeds: a split's value is the mean over its model seeds (the split's own seed
    included), the table's mean ± std is over those split values, the ratio to CLCRec and the
    wins are per split, and the notes give each row's spread within a split."""
    ch = _script("compare_heads")
    # (split, model seed) -> NDCG@10
    values = {"default": {(0, 0): 0.30, (0, 7): 0.20, (1, 1): 0.10, (1, 7): 0.14},
              "clcrec": {(0, 0): 0.24, (0, 7): 0.24, (1, 1): 0.13, (1, 7): 0.15}}
    for name, runs in values.items():
        for (s, m), v in runs.items():
            d = tmp_path / name / ch.run_name(s, m)
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": v, "recall@10": 2 * v}}))
    assert ch.run_name(0, 0) == "seed-0" and ch.run_name(0, 7) == "seed-0-model-7"
    found = ch.collect(tmp_path, [0, 1], ["default", "clcrec"], [7])
    assert set(found["default"]) == {0, 1, "0/7", "1/7"}
    per_split, each = ch.by_split(found, [0, 1], [7])
    assert per_split["default"][0]["ndcg@10"] == pytest.approx(0.25)
    assert per_split["default"][1]["recall@10"] == pytest.approx(0.24)
    assert each["clcrec"][1] == pytest.approx([0.13, 0.15])
    table = ch.rows(per_split, [0, 1], {"default": "d", "clcrec": "c"})
    by = {r["row"]: r for r in table}
    assert by["default"]["ndcg@10_mean"] == pytest.approx(18.5)              # (25 + 12) / 2
    assert by["default"]["ndcg@10_std"] == pytest.approx(np.std([25.0, 12.0], ddof=1))
    text = ch.markdown(table, [0, 1], model_seeds=[7], spread=ch.spread_notes(each))
    # 18.5 / 19.0; the default wins split 0 (25 > 24), loses split 1 (12 < 14)
    assert "default / CLCRec NDCG@10: 0.97x on the mean of the 2 split(s) both ran on; the default is ahead on 1" in text
    assert "mean over model seeds s, 7" in text
    spread = np.mean([np.std([30.0, 20.0], ddof=1), np.std([10.0, 14.0], ddof=1)])
    assert f"default: 4 runs on 2 splits; within a split its model seeds spread by ± {spread:.2f}" in text
    assert ch.by_split(found, [0, 1]) == (found, {})                        # no model seeds: as found


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


# ---- the shared runner (mmrec.sweep): tables, collect, results files, run_cell -----------------------

def test_summarise_markdown_and_csv_by_hand():
    """mean ± sample std (ddof=1) in %, a single seed's value alone, '-' where nothing finished,
    each seed's value; the CSV: one line per row and metric."""
    import csv
    import io

    from mmrec.sweep import csv_table, markdown_table, summarise
    found = {"a": {0: {"ndcg@10": 0.125, "recall@10": 0.5}, 1: {"ndcg@10": 0.375, "recall@10": 0.25}},
             "b": {1: {"ndcg@10": 0.25}},
             "unlisted": {0: {"ndcg@10": 0.9}}}
    rows = [("a", "Row A"), ("b", "Row B, one seed"), ("c", "Row C")]
    metrics = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10"}
    summary = summarise(found, rows, [0, 1], metrics)
    assert [r["row"] for r in summary] == ["a", "b", "c"]
    a = summary[0]
    assert a["seeds"] == 2 and a["ndcg@10_mean"] == 25.0 and a["recall@10_mean"] == 37.5
    assert a["ndcg@10_std"] == pytest.approx(12.5 * 2 ** 0.5)          # |12.5 - 37.5| / sqrt(2)
    assert (a["ndcg@10_seed0"], a["ndcg@10_seed1"]) == (12.5, 37.5)
    assert summary[1]["ndcg@10_std"] is None and summary[1]["recall@10_n"] == 0
    assert markdown_table(summary, [0, 1], metrics, "Item", per_seed=["ndcg@10"]).splitlines() == [
        "| Item | seeds | NDCG@10 | Recall@10 | NDCG@10 s0 | NDCG@10 s1 |",
        "|---|---|---|---|---|---|",
        "| Row A | 2 | 25.00 ± 17.68 | 37.50 ± 17.68 | 12.50 | 37.50 |",
        "| Row B, one seed | 1 | 25.00 | - | - | 25.00 |",
        "| Row C | 0 | - | - | - | - |"]
    lines = list(csv.reader(io.StringIO(csv_table(summary, [0, 1], metrics))))
    assert lines[0] == ["row", "label", "metric", "mean", "std", "n", "seed0", "seed1"]
    assert len(lines) == 1 + 3 * 2
    row, label, metric, mean, std, n, s0, s1 = lines[1]
    assert (row, label, metric, n) == ("a", "Row A", "ndcg@10", "2")
    assert (float(mean), float(s0), float(s1)) == (25.0, 12.5, 37.5)
    assert float(std) == pytest.approx(17.677669529663689)
    assert lines[3] == ["b", "Row B, one seed", "ndcg@10", "25.0", "", "1", "", "25.0"]
    assert lines[4] == ["b", "Row B, one seed", "recall@10", "", "", "0", "", ""]
    assert lines[6] == ["c", "Row C", "recall@10", "", "", "0", "", ""]


def test_collect_rows_folders_and_the_stored_baselines(tmp_path):
    from mmrec.sweep import collect
    elsewhere = tmp_path / "reused"

    def run(folder, s, m):
        d = folder / f"seed-{s}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "out"
    run(out / "x", 0, {"test": {"ndcg@10": 0.1}, "val": {"ndcg@10": 0.2}})
    run(out / "x", 1, {"test": {"ndcg@10": 0.3}})
    run(elsewhere, 1, {"test": {"ndcg@10": 0.4}})
    run(out / "baselines", 0, {"test": {}, "baselines": {"random": {"test": {"ndcg@10": 0.01}},
                                                         "knn_frozen_text": {"test": {"ndcg@10": 0.15}},
                                                         "oracle": {"skipped": "no truth"}}})
    found = collect(out, {"x": "x", "y": elsewhere.absolute(), "z": "z"}, [0, 1], "test",
                    baselines_from="baselines", baselines=["random", "oracle"], baseline_prefix="b: ")
    assert found == {"x": {0: {"ndcg@10": 0.1}, 1: {"ndcg@10": 0.3}}, "y": {1: {"ndcg@10": 0.4}},
                     "b: random": {0: {"ndcg@10": 0.01}}}
    assert collect(out, ["x"], [0, 1], "val") == {"x": {0: {"ndcg@10": 0.2}}}      # seed 1 has no val
    # the baselines of a row: its folder's runs
    assert collect(out, {"r": elsewhere.absolute()}, [1], baselines_from="r") == {"r": {1: {"ndcg@10": 0.4}}}


def test_write_results_first_line_names_the_command_and_the_script(tmp_path, monkeypatch):
    import mmrec.sweep as runner
    md, csv_path = runner.write_results(tmp_path / "sub" / "table", "| a |\n", "row,label\n",
                                        "OMP_NUM_THREADS=1 python scripts/compare_heads.py --seeds 0")
    assert md == tmp_path / "sub" / "table.md" and csv_path == tmp_path / "sub" / "table.csv"
    assert md.read_text().splitlines() == [
        ("Regenerate: `OMP_NUM_THREADS=1 python scripts/compare_heads.py --seeds 0` (written by "
         "scripts/compare_heads.py, do not edit by hand)"), "", "| a |"]
    assert csv_path.read_text() == "row,label\n"
    assert sorted(p.name for p in md.parent.iterdir()) == ["table.csv", "table.md"]   # no temporaries left
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path / "results")                 # a bare name: docs/results/
    md, _ = runner.write_results("cells", "t", "c", "mmrec sweep --out x", script=None)
    assert md == tmp_path / "results" / "cells.md"
    assert "(written by mmrec sweep, do not edit by hand)" in md.read_text().splitlines()[0]


FAKE_ANY = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with Path(os.environ["FAKE_LOG"]).open("a") as f:
        f.write(json.dumps(args) + "\\n")
    if "--resume" in args:
        run = Path(args[args.index("--resume") + 1])
    else:
        run = Path(next(a for a in args if a.startswith("run_dir="))[8:])
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(" ".join(args))
    mode = os.environ.get("FAKE_MODE", "")
    if mode == "fail_after_checkpoint":
        (run / "checkpoints").mkdir(exist_ok=True)
    if mode:
        print("training failed"); sys.exit(3)
    (run / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": 0.5}}))
''')


def test_run_cell_runs_any_subcommand_and_skips_resumes_or_restarts(tmp_path, monkeypatch):
    """A transfer run through run_cell: its command; killed after a checkpoint -> `train --resume`;
    finished -> skipped; killed before its first checkpoint -> moved aside and started again."""
    from mmrec.sweep import run_cell
    script = tmp_path / "fake_mmrec.py"
    script.write_text(FAKE_ANY)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    launcher = [sys.executable, str(script)]
    transfer = ["transfer", "--from", "A/seed-3", "--mode", "frozen"]
    run = tmp_path / "out" / "frozen" / "seed-3"
    monkeypatch.setenv("FAKE_MODE", "fail_after_checkpoint")
    with pytest.raises(RuntimeError, match=r"run failed \(exit 3\).*see .*frozen/seed-3\.log"):
        run_cell("configs/tiny.yaml", ["train.epochs=1"], {"model.dim": 16}, 3, run, launcher, command=transfer)
    first = ["transfer", "--from", "A/seed-3", "--mode", "frozen", "--config", "configs/tiny.yaml",
             "train.epochs=1", "model.dim=16", "seed=3", "split.seed=3", f"run_dir={run}", "train.progress=false"]
    assert calls(tmp_path) == [first]
    log = (run.parent / "seed-3.log").read_text()
    assert log.startswith(f"$ {' '.join(launcher + first)}\n") and "training failed" in log
    monkeypatch.delenv("FAKE_MODE")
    assert run_cell("configs/tiny.yaml", ["train.epochs=1"], {"model.dim": 16}, 3, run, launcher, command=transfer)
    assert calls(tmp_path)[1] == ["train", "--resume", str(run)]
    assert not run_cell("configs/tiny.yaml", [], {}, 3, run, launcher, command=transfer)   # finished
    assert len(calls(tmp_path)) == 2
    # killed before its first checkpoint (twice): moved aside, the older leftover replaced
    other = tmp_path / "out" / "another" / "seed-4"
    monkeypatch.setenv("FAKE_MODE", "fail_before_checkpoint")
    with pytest.raises(RuntimeError):
        run_cell(None, [], {}, 4, other, launcher, command=transfer)
    with pytest.raises(RuntimeError):
        run_cell(None, [], {}, 4, other, launcher, command=transfer)
    monkeypatch.delenv("FAKE_MODE")
    assert run_cell(None, [], {}, 4, other, launcher, command=transfer)
    assert [c[:5] for c in calls(tmp_path)[2:]] == [transfer] * 3     # every time a fresh start
    assert (other / "metrics.json").exists() and not (other.parent / "seed-4-2").exists()
    assert (other.parent / "seed-4.interrupted" / "config.yaml").exists()
    assert sorted(p.name for p in other.parent.iterdir()) == ["seed-4", "seed-4.interrupted", "seed-4.log"]
    # another model seed on the same split: seed=M split.seed=S, its own log beside its folder
    mrun = tmp_path / "out" / "another" / "seed-4-model-100"
    assert run_cell(None, [], {}, 4, mrun, launcher, model_seed=100)
    assert calls(tmp_path)[-1][-4:] == ["seed=100", "split.seed=4", f"run_dir={mrun}", "train.progress=false"]
    assert (mrun.parent / "seed-4-model-100.log").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_run_cell_child_dies_with_the_driver(tmp_path):
    """The driver is SIGKILLed mid-run: its training process goes too (no orphan on the run dir)."""
    import signal
    import subprocess
    import time
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(textwrap.dedent(f'''
        import os, time
        open({str(tmp_path / "child.pid")!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    '''))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f'''
        import sys
        from pathlib import Path
        sys.path.insert(0, {os.getcwd()!r})
        from mmrec.sweep import run_cell
        run_cell(None, [], {{}}, 0, Path({str(tmp_path / "cell" / "seed-0")!r}), [sys.executable, {str(sleeper)!r}])
    '''))
    parent = subprocess.Popen([sys.executable, str(driver)])
    pid_file, child = tmp_path / "child.pid", None
    try:
        deadline = time.time() + 60
        while child is None and time.time() < deadline and parent.poll() is None:
            if pid_file.exists() and pid_file.read_text():
                child = int(pid_file.read_text())
            time.sleep(0.05)
        assert child is not None, "the run never started"
        parent.kill()
        parent.wait()

        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:
                return False
            return stat.rsplit(")", 1)[1].split()[0] != "Z"   # a zombie is dead, waiting to be reaped
        deadline = time.time() + 10
        while alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _ndcg_recall_bounds(scores, relevant, k=10):
    """(min, max) of NDCG@k and recall@k over the orders of exactly tied scores (the evaluator's
    top-k may break ties either way)."""
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], relevant[order].astype(float)
    lo, hi = np.zeros(len(s)), np.zeros(len(s))
    start = 0
    for j in range(1, len(s) + 1):
        if j == len(s) or s[j] != s[j - 1]:
            n = int(h[start:j].sum())
            hi[start:start + n], lo[j - n:j] = 1, 1          # a tie group's hits first / last
            start = j
    disc = 1 / np.log2(np.arange(2, k + 2))
    n_rel = int(relevant.sum())
    idcg = disc[:min(n_rel, k)].sum()
    return ((lo[:k] * disc).sum() / idcg, (hi[:k] * disc).sum() / idcg), (lo[:k].sum() / n_rel, hi[:k].sum() / n_rel)


def test_transfer_table_knn_source_is_cosine_knn_over_the_exported_vectors(trained_run, tiny_prepared, tmp_path):
    """knn_source (A's items through A's tower, kNN user = mean of the normalised liked training
    items, cosine) equals that computed with numpy from the run's exported item vectors; the
    control table puts it next to A's own trained metrics."""
    from mmrec.data.split import Split
    from mmrec.export import export
    tt = _script("transfer_table")
    run_dir, metrics = trained_run
    source = tmp_path / "A"
    source.mkdir()
    (source / "seed-0").symlink_to(run_dir, target_is_directory=True)
    out = tmp_path / "out"
    assert tt.knn_source(0, out, source) > 0
    assert tt.knn_source(0, out, source) == 0.0                       # done: not computed again
    got = json.loads((out / "knn_source" / "seed-0" / "metrics.json").read_text())
    assert got["item_tower_from"] == str(source / "seed-0")

    # the same, independently: numpy over the exported item vectors (mmrec export, all items)
    split = Split.load(run_dir / "split.npz")
    table = tiny_prepared.dataset.items.iloc[tiny_prepared.item_rows[np.arange(split.n_items)]]
    table.to_parquet(tmp_path / "items.parquet", index=False)
    exported = export(run_dir, tmp_path / "items.parquet", tmp_path / "export")
    assert (exported / "item_ids.txt").read_text().split() == [str(i) for i in split.item_ids]
    V = np.load(exported / "item_embeddings.npy").astype(np.float64)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    train = split.positives["train"]
    U = np.stack([V[train.row(u)].mean(0) if len(train.row(u)) else np.zeros(V.shape[1])
                  for u in range(split.n_users)])
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    # A barely trained tower's vectors share one large direction: cosine scores agree to ~1e-5
    # and float rounding alone reorders them. So: numpy's scores must equal the ones ranked (to
    # float32 precision), and the metrics must be those of ranking them, up to exact ties.
    from mmrec.evaluation import baselines
    scored = []

    class Recording(baselines.CosineScorer):
        def __call__(self, users):
            out = super().__call__(users)
            scored.append((users.numpy().copy(), out.numpy().copy()))
            return out
    dest = tmp_path / "again" / "metrics.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baselines, "CosineScorer", Recording)
        tt.knn_over_tower(source / "seed-0", dest)
    assert json.loads(dest.read_text())["test"] == got["test"]
    assert len(scored) == 2                                           # val, test: one user chunk each
    for part, (users, S) in zip(("val", "test"), scored):
        cands = split.items_of(part)
        np.testing.assert_array_equal(users, split.eval_users(part))
        np.testing.assert_allclose(S, U[users] @ V[cands].T, atol=2e-6)
        b = np.array([_ndcg_recall_bounds(S[j].astype(np.float64), np.isin(cands, split.positives[part].row(u)))
                      for j, u in enumerate(users)]).mean(0)          # [[ndcg lo, hi], [recall lo, hi]]
        assert b[0, 0] - 1e-9 <= got[part]["ndcg@10"] <= b[0, 1] + 1e-9, (part, b)
        assert b[1, 0] - 1e-9 <= got[part]["recall@10"] <= b[1, 1] + 1e-9, (part, b)
        assert b[0, 1] - b[0, 0] < 0.01                                # the ties leave little room

    found = tt.collect(out, [0], "test", source)
    assert found["source"][0] == metrics["test"] and found["knn_source"][0] == got["test"]
    _, on_a = tt.tables(found, ["ndcg@10"], [0])
    assert on_a.splitlines()[2:] == [
        f"| A's model (u·v), as trained on A | 1 | {metrics['test']['ndcg@10'] * 100:.2f} |",
        f"| A's item tower, kNN (cosine; no training beyond A's) | 1 | {got['test']['ndcg@10'] * 100:.2f} |"]


def test_compare_heads_trains_only_what_the_record_does_not_hold(tmp_path, monkeypatch):
    """A fresh checkout's call trains only the runs its record lacks under today's config (a
    row whose config changed trains again); --retrain trains every missing run."""
    ch = _script("compare_heads")
    trained = []

    def fake_run_cell(config, overrides, cell, s, run_dir, model_seed=None):
        if (run_dir / "metrics.json").exists():         # as mmrec.sweep.run_cell: a finished run stays
            return False
        trained.append(f"{run_dir.parent.name}/{run_dir.name}")
        run_dir.mkdir(parents=True)
        np.savez(run_dir / "split.npz", train_items=np.arange(5), test_items=np.arange(2))
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": 0.3, "recall@10": 0.4}}))
        return True

    monkeypatch.setattr(ch, "run_cell", fake_run_cell)
    results = tmp_path / "t"
    clcrec = next(c for c in ch.CELLS if c[0] == "clcrec")
    record = {"clcrec": {"fingerprint": ch.fingerprint(clcrec[2], clcrec[3]),
                         "seeds": {"0": {"ndcg@10": 0.2, "recall@10": 0.25}}},
              "default": {"fingerprint": "an older default", "seeds": {"0": {"ndcg@10": 0.9, "recall@10": 0.9}}}}
    Path(str(results) + ".runs.json").write_text(json.dumps(record))
    argv = ["--out", str(tmp_path / "out"), "--seeds", "0", "--cells", "clcrec,default", "--results", str(results)]
    text = ch.main(argv)
    assert trained == ["default/seed-0"]                  # clcrec's run is the record's, unchanged
    assert "η 0.1) | 1 | 20.00 | 25.00 |" in text and "Carried from t.runs.json" in text
    assert "(configs/ml100k.yaml) | 1 | 30.00 | 40.00 |" in text   # trained now, not the stale 90
    ch.main(argv + ["--retrain"])
    assert trained == ["default/seed-0", "clcrec/seed-0"]  # the default's run exists now: skipped


def test_compare_heads_carries_a_missing_run_only_under_an_unchanged_config():
    """A run absent from OUT (a fresh checkout) is taken from the record when its row's config
    fingerprint is unchanged, never when the config changed; found runs update the record."""
    ch = _script("compare_heads")
    tower_ov = ch.PIECES_OFF + ch.FIRST_BUDGET          # the tower row's overrides
    tower = ch.fingerprint(ch.DEFAULT_CFG, tower_ov)
    assert tower == ch.fingerprint(ch.DEFAULT_CFG, tower_ov + ["seed=7", "run_dir=/x"])
    assert tower != ch.fingerprint(ch.DEFAULT_CFG, tower_ov + ["train.lr=0.5"])
    assert ch.fingerprint(ch.DEFAULT_CFG, [], keep=ch._BASELINE_KEYS) == \
        ch.fingerprint(ch.DEFAULT_CFG, ["train.lr=0.5"], keep=ch._BASELINE_KEYS)   # baselines: the split's
    record = {"tower": {"fingerprint": tower, "seeds": {"0": {"ndcg@10": 0.2}, "1": {"ndcg@10": 0.1}}},
              "default": {"fingerprint": "an older default", "seeds": {"1": {"ndcg@10": 0.9}}}}
    found = {"tower": {0: {"ndcg@10": 0.25}}, "default": {0: {"ndcg@10": 0.3}}}
    carried = ch.carry(found, record, {"tower": tower, "default": "the default now"}, [0, 1])
    assert carried == ["tower (seed 1)"]
    assert found["tower"] == {0: {"ndcg@10": 0.25}, 1: {"ndcg@10": 0.1}}      # the fresh run wins
    assert found["default"] == {0: {"ndcg@10": 0.3}}                           # nothing stale carried
    assert record["default"] == {"fingerprint": "the default now", "seeds": {"0": {"ndcg@10": 0.3}}}
    assert record["tower"]["seeds"]["0"] == {"ndcg@10": 0.25}

    # a record that kept its config names why a row is not carried
    now = ch.run_config(ch.DEFAULT_CFG, tower_ov)
    assert ch.digest(now) == tower
    old = {**{k: v for k, v in now.items() if k != "train.init_from"}, "train.lr": 0.5, "gone.key": 1}
    assert ch.config_changes({"tower": {"config": old}, "default": {}}, {"tower": now, "default": now}) == [
        "tower (new: train.init_from; gone: gone.key; changed: train.lr)"]
    assert ch.config_changes({"tower": {"config": now}}, {"tower": now}) == []

    # a key added to base.yaml since the record, at its default, still describes the old runs;
    # the same key set otherwise, or a recorded key changed, does not
    defaults = ch.base_defaults()
    assert defaults["train.patience"] == 0 and now["train.patience"] == 0
    before = {k: v for k, v in now.items() if k != "train.patience"}
    assert ch.same_run_config(before, now, defaults)
    assert not ch.same_run_config(before, {**now, "train.patience": 10}, defaults)
    assert not ch.same_run_config({**before, "train.lr": 0.5}, now, defaults)
    assert not ch.same_run_config({**before, "gone.key": 1}, now, defaults)
    # a key added since to an entry's defaults file (configs/defaults/encoders/bert.yaml) counts
    # at that file's value, which base.yaml does not hold
    assert "encoders.text.pool_heads" not in defaults and now["encoders.text.pool_heads"] == 1
    no_heads = {k: v for k, v in now.items() if k != "encoders.text.pool_heads"}
    assert ch.same_run_config(no_heads, now, defaults)
    assert not ch.same_run_config(no_heads, {**now, "encoders.text.pool_heads": 2}, defaults)
    # ... and so does one added to the head's own sections (configs/defaults/heads/mmrec.yaml)
    assert "distill.cosine" not in defaults and now["distill.cosine"] is False
    no_cosine = {k: v for k, v in now.items() if k != "distill.cosine"}
    assert ch.same_run_config(no_cosine, now, defaults)
    assert not ch.same_run_config(no_cosine, {**now, "distill.cosine": True}, defaults)
    record = {"tower": {"fingerprint": "before train.patience", "config": before, "seeds": {"1": {"ndcg@10": 0.1}}}}
    found = {"tower": {0: {"ndcg@10": 0.25}}}
    assert ch.carry(found, record, {"tower": tower}, [0, 1], {"tower": now}, defaults) == ["tower (seed 1)"]
    assert ch.config_changes({"tower": {"config": before}}, {"tower": now}, defaults) == []
    found = {"tower": {0: {"ndcg@10": 0.25}}}
    record = {"tower": {"fingerprint": "x", "config": before, "seeds": {"1": {"ndcg@10": 0.1}}}}
    assert ch.carry(found, record, {"tower": "y"}, [0, 1], {"tower": {**now, "train.patience": 3}}, defaults) == []


def test_score_ensemble_scores_the_mean_of_the_runs_scores(trained_run):
    """The concatenated vectors over sqrt(M) score each pair by the mean of the runs' scores;
    an ensemble of a run with itself ranks as the run does (its metrics.json)."""
    se = _script("score_ensemble")
    g = torch.Generator().manual_seed(0)
    us = [torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)]
    vs = [torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)]
    torch.testing.assert_close(se.concatenated(us) @ se.concatenated(vs).T,
                               (us[0] @ vs[0].T + us[1] @ vs[1].T) / 2)
    run_dir, metrics = trained_run
    (out,) = se.main([str(run_dir), str(run_dir), "--parts", "test"])
    assert out["single_ndcg@10"] == [pytest.approx(metrics["test"]["ndcg@10"], abs=1e-9)] * 2
    for k in ("ndcg@10", "recall@10", "precision@5"):
        assert out["ensemble"][k] == pytest.approx(metrics["test"][k], abs=1e-6), k
