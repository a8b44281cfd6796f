"""Several processes on the CPU (gloo), continued: a SIGKILL mid-epoch then resume equals the
uninterrupted run, distributed evaluation and export equal one process, and the other heads run
on two processes (split from test_distributed.py so two test workers share the slow ones)."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.launching import CPU2, ROOT, _same_weights, _tiny, env, launch, mmrec_here

pytestmark = pytest.mark.slow


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, cache_dir):
    args = ["train.epochs=2", "train.max_steps_per_epoch=40", "train.batch_size=128",
            "train.checkpoint_every_steps=5", "train.keep_checkpoints=100"]
    whole = tmp_path / "whole"
    mmrec_here("train", *_tiny(whole, cache_dir, *args))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mmrec", "train", *_tiny(killed, cache_dir, *args)], cwd=ROOT,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "step-00000015"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached its step-15 checkpoint"
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"
    last = json.loads(sorted((killed / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert last["epoch"] == 0 and 0 < last["batch"] < 40      # killed in the middle of epoch 1
    mmrec_here("train", "--resume", str(killed))
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["val"] == a["val"] and b["test"] == a["test"] and b["best_epoch"] == a["best_epoch"]
    assert [h["val"] for h in b["history"]] == [h["val"] for h in a["history"]]
    lines = (killed / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2



def test_distributed_evaluation_and_export_equal_single_process(trained_run, tmp_path):
    run_dir, _ = trained_run
    small = ["eval.item_batch_size=16", "eval.user_chunk=64"]      # many units to share out
    mmrec_here("evaluate", str(run_dir), *small)
    one = json.loads((run_dir / "evaluation.json").read_text())
    launch(CPU2, "-m", "mmrec", "evaluate", str(run_dir), *small)
    two = json.loads((run_dir / "evaluation.json").read_text())
    assert one == two                                              # exactly, every metric
    items = tmp_path / "items.parquet"
    from mmrec.data.readers import read_ml100k
    read_ml100k({}).items.iloc[:150].to_parquet(items, index=False)
    mmrec_here("export", str(run_dir), "--items", str(items), "--out", str(tmp_path / "e1"))
    launch(CPU2, "-m", "mmrec", "export", str(run_dir), "--items", str(items), "--out", str(tmp_path / "e2"))
    np.testing.assert_array_equal(np.load(tmp_path / "e1" / "item_embeddings.npy"),
                                  np.load(tmp_path / "e2" / "item_embeddings.npy"))
    assert (tmp_path / "e1" / "item_ids.txt").read_text() == (tmp_path / "e2" / "item_ids.txt").read_text()



def test_cmclrec_and_clcrec_heads_on_two_processes(tmp_path, cache_dir):
    """cmclrec, 2 processes x batch 16 == 1 process x batch 32, through both training stages
    (pre-training leaves SASRec's blocks without gradient), the global-batch InfoNCE and MMD,
    the next-item loss over the global positions, and the sharded evaluation and baselines.
    clcrec: a 2-process run's metrics.json equals a 1-process `mmrec evaluate` of its model."""
    from mmrec.export import evaluate_run
    from tests.clcrec_fixture import make_genre_dataset
    from tests.test_cmclrec import synthetic_world
    world = synthetic_world(tmp_path / "world", n_users=120)
    seq = ["--config", "configs/cmclrec_ml100k.yaml", "data.source=processed", f"data.path={world}",
           "user_split.features=[occupation,age]", "sasrec.max_len=20", "sasrec.hidden=16",
           "sasrec.dropout=0.0", "cmclrec.dropout=0.0", "cmclrec.latent_dim=8", "cmclrec.ae_hidden=32",
           "cmclrec.feature_mask=0.0", "cmclrec.item_mask=0.0",   # masks, like dropout, are drawn per rank
           "train.epochs=2", "cmclrec.pretrain_epochs=1", "train.max_steps_per_epoch=3", "eval.every_epochs=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    mmrec_here("train", *seq, "train.batch_size=32", f"run_dir={one}")
    launch(CPU2, "-m", "mmrec", "train", *seq, "train.batch_size=16", f"run_dir={two}")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert a["resources"]["processes"] == 1 and b["resources"]["processes"] == 2
    assert [h["step"] for h in b["history"]] == [h["step"] for h in a["history"]] == [2, 4]
    assert b["best_epoch"] == a["best_epoch"]
    for part in ("val", "test"):
        assert b[part] == pytest.approx(a[part], abs=1e-6), part
        assert b[part]["cold/users"] > 0 and b[part]["warm/users"] > 0
    assert b["baselines"] == a["baselines"]                    # sharded ranking, gathered: exactly
    _same_weights(one, two)

    genre = make_genre_dataset(tmp_path / "genre", n_items=120, n_users=80)
    clc = tmp_path / "clcrec"
    launch(CPU2, "-m", "mmrec", "train", "--config", "configs/tiny.yaml", "data.source=processed",
           f"data.path={genre}", f"data.cache_dir={cache_dir}", "data.min_user_ratings=5",
           "split.ratios=[0.6,0.2,0.2]", "head=clcrec", "model.dim=16", "clcrec.hidden_dim=32",
           "clcrec.num_neg=8", "clcrec.encoder=gcn", "fields.text=null", "fields.g.modality=features",
           "fields.g.source=multihot", "fields.g.column=genres", "train.epochs=2",
           "train.max_steps_per_epoch=4", "train.batch_size=32", "eval.baselines=[random]", f"run_dir={clc}")
    m = json.loads((clc / "metrics.json").read_text())
    assert m["resources"]["processes"] == 2 and [h["step"] for h in m["history"]] == [4, 8]
    again = evaluate_run(clc)
    for part in ("val", "test"):
        assert again[part] == pytest.approx(m[part], abs=1e-9), part




def test_weight_average_on_two_processes_equals_one_process_with_the_global_batch(tmp_path, cache_dir):
    """`train.ema_decay` under DDP: every rank averages the same synchronised weights, so two
    processes x batch 32 save the average one process x batch 64 saves. The item tower agrees to
    1e-6 while its average and its last weights are 1e-4 apart, so a skipped or unsynchronised
    average fails; the user table only to 1e-4 (Adam turns the order of the sums of its tiny
    gradients into steps of up to lr, with or without the average)."""
    import torch
    from safetensors.torch import load_file
    args = ["train.epochs=1", "train.max_steps_per_epoch=6", "train.ema_decay=0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    mmrec_here("train", *_tiny(one, cache_dir, *args, "train.batch_size=64"))
    launch(CPU2, "-m", "mmrec", "train", *_tiny(two, cache_dir, *args, "train.batch_size=32"))
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (one, two))
    last = sorted((two / "checkpoints").iterdir())[-1]
    live = load_file(str(last / "model.safetensors"))
    shadow = next(s for s in (torch.load(p, weights_only=False) for p in last.glob("custom_checkpoint_*.pkl"))
                  if isinstance(s, dict) and "shadow" in s)
    assert shadow["updates"] == 6 and a.keys() == b.keys()
    tower = [n for n in a if n.startswith("item_encoder.")]
    assert len(tower) > 20
    assert max(float((b[n] - live[n]).abs().max()) for n in tower) > 5e-5      # the average was saved
    for name in a:
        assert torch.equal(b[name], shadow["shadow"][name].to(b[name].dtype)), name
        tol = dict(rtol=1e-4, atol=1e-4) if name.startswith("user_embedding") else dict(rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(b[name], a[name], msg=name, **tol)
