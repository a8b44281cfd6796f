"""Several processes on the CPU (gloo), DeepSpeed ZeRO, exact resume and distributed evaluation.

Multi-process runs are launched with `accelerate launch` exactly as users launch them. Every run
uses one thread per process (OMP_NUM_THREADS=1), so results can be compared bit for bit.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
CPU2 = str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(cmd, timeout=600):
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, *args, procs=2):
    # A fresh port per launch: a fixed one (29500) clashes with any other launch on the machine.
    return run([ACCELERATE, "launch", "--config_file", config, "--num_processes", str(procs),
                "--main_process_port", str(free_port()), "--mixed_precision", "no", *args])


def mmrec(*args):
    return run([sys.executable, "-m", "mmrec", *args])


TWO_FIELDS = ["fields.genres.modality=text", "fields.genres.template={genres}",
              "loss.alignment_weight=0.5"]


# The sampling pieces of issue 16: logQ with global frequencies, mixed negatives gathered across
# ranks (K per process, so the one-process run draws 2K), the distillation term (rho = 0: the
# hybrid's draw is per process and could not match; the ID table scores every item).
SAMPLING = ["loss.logq_correction=true", "distill.id_embedding=true", "distill.rho=0.0", "distill.weight=0.5"]


@pytest.mark.parametrize("extra,one_only,two_only", [
    ([], [], []),
    (SAMPLING, ["loss.mixed_negatives=24"], ["loss.mixed_negatives=12"])], ids=["paper", "sampling"])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, cache_dir, extra, one_only, two_only):
    """N processes x batch B == 1 process x batch N*B: same loss and same gradients, with
    duplicate masking, false-negative filtering and the alignment loss all crossing ranks (and
    the logQ correction, mixed negatives and distillation)."""
    common = [f"data.cache_dir={cache_dir}", "loss.false_negative_filter=true", *TWO_FIELDS, *extra]
    run([sys.executable, "tests/dist/one_step.py", str(tmp_path / "one.pt"), "64", *common, *one_only])
    launch(CPU2, "tests/dist/one_step.py", str(tmp_path / "two.pt"), "64", *common, *two_only)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert one["duplicate_users"]          # the global batch really exercises duplicate masking
    for k in one["parts"]:
        if k.endswith("items_encoded"):   # per-process counts of distinct items, not a loss
            continue
        assert float(two["parts"][k]) == pytest.approx(float(one["parts"][k]), rel=1e-5), k
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 10
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    # Exactly one data-parallel wrapper, around the user table and the item tower only.
    assert two["ddp_wrappers"] == 1
    want = {"user_embedding", "item_encoder"} | ({"item_id_embedding"} if extra else set())
    assert {n.split(".")[0] for n in two["params"]} == want
    if extra:
        assert one["parts"]["extra_items_encoded"] > 0 and "loss_distill" in one["parts"]


def _tiny(run_dir, cache_dir, *extra):
    return ["--config", "configs/tiny.yaml", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}",
            "train.epochs=1", "train.max_steps_per_epoch=8", "train.batch_size=32", *extra]


def _test_item_vectors(run_dir):
    from mmrec.data.pipeline import prepare
    from mmrec.data.split import Split
    from mmrec.evaluation.ranking import encode_items
    from mmrec.models import load_run
    cfg, split, model = load_run(run_dir)
    prepared = prepare(cfg, Split.load(Path(run_dir) / "split.npz"))
    with torch.no_grad():
        return encode_items(model, prepared, split.items_of("test"), 64)


def test_deepspeed_zero2_zero3_train_resume_and_match_plain_ddp(tmp_path, cache_dir):
    ref, z2, z3 = tmp_path / "ddp", tmp_path / "zero2", tmp_path / "zero3"
    launch(CPU2, "-m", "mmrec", "train", *_tiny(ref, cache_dir))
    launch(str(ROOT / "configs/accelerate/deepspeed_zero2.yaml"), "-m", "mmrec", "train",
           *_tiny(z2, cache_dir, "train.checkpoint_every_steps=4", "train.keep_checkpoints=10"))
    launch(str(ROOT / "configs/accelerate/deepspeed_zero3.yaml"), "-m", "mmrec", "train",
           *_tiny(z3, cache_dir))
    for d in (ref, z2, z3):
        assert (d / "metrics.json").exists() and (d / "model" / "model.safetensors").exists()
    v_ref, v2, v3 = _test_item_vectors(ref), _test_item_vectors(z2), _test_item_vectors(z3)
    torch.testing.assert_close(v2, v_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v3, v_ref, rtol=1e-4, atol=1e-5)

    # Checkpoints load under ZeRO: resume the ZeRO-2 run from its mid-epoch step-4 checkpoint.
    resumed = tmp_path / "zero2_resumed"
    shutil.copytree(z2, resumed)
    for name in ("metrics.json", "model"):
        p = resumed / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for ck in (resumed / "checkpoints").iterdir():
        if ck.name != "step-00000004":
            shutil.rmtree(ck)
    state = json.loads((resumed / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["batch"] == 4 and state["epoch"] == 0          # mid-epoch
    launch(str(ROOT / "configs/accelerate/deepspeed_zero2.yaml"), "-m", "mmrec", "train",
           "--resume", str(resumed))
    a = json.loads((z2 / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["test"] == pytest.approx(a["test"], abs=1e-6) and b["val"] == pytest.approx(a["val"], abs=1e-6)
    torch.testing.assert_close(_test_item_vectors(resumed), v2, rtol=1e-5, atol=1e-6)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, cache_dir):
    args = ["train.epochs=2", "train.max_steps_per_epoch=40", "train.batch_size=128",
            "train.checkpoint_every_steps=5", "train.keep_checkpoints=100"]
    whole = tmp_path / "whole"
    mmrec("train", *_tiny(whole, cache_dir, *args))
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
    mmrec("train", "--resume", str(killed))
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["val"] == a["val"] and b["test"] == a["test"] and b["best_epoch"] == a["best_epoch"]
    assert [h["val"] for h in b["history"]] == [h["val"] for h in a["history"]]
    lines = (killed / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_distributed_evaluation_and_export_equal_single_process(trained_run, tmp_path):
    run_dir, _ = trained_run
    small = ["eval.item_batch_size=16", "eval.user_chunk=64"]      # many units to share out
    mmrec("evaluate", str(run_dir), *small)
    one = json.loads((run_dir / "evaluation.json").read_text())
    launch(CPU2, "-m", "mmrec", "evaluate", str(run_dir), *small)
    two = json.loads((run_dir / "evaluation.json").read_text())
    assert one == two                                              # exactly, every metric
    items = tmp_path / "items.parquet"
    from mmrec.data.readers import read_ml100k
    read_ml100k({}).items.iloc[:150].to_parquet(items, index=False)
    mmrec("export", str(run_dir), "--items", str(items), "--out", str(tmp_path / "e1"))
    launch(CPU2, "-m", "mmrec", "export", str(run_dir), "--items", str(items), "--out", str(tmp_path / "e2"))
    np.testing.assert_array_equal(np.load(tmp_path / "e1" / "item_embeddings.npy"),
                                  np.load(tmp_path / "e2" / "item_embeddings.npy"))
    assert (tmp_path / "e1" / "item_ids.txt").read_text() == (tmp_path / "e2" / "item_ids.txt").read_text()


def _same_weights(a_dir, b_dir):
    """The saved best models agree, except the attention key biases: their gradient is zero in
    exact arithmetic (a softmax ignores a per-query constant), so Adam turns rounding noise into
    arbitrary steps there, which change nothing downstream."""
    from safetensors.torch import load_file
    a, b = load_file(str(a_dir / "model" / "model.safetensors")), load_file(str(b_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 20
    for name, x in a.items():
        y = b[name]
        if name.endswith("in_proj_bias"):
            d = len(x) // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(y, x, rtol=1e-4, atol=2e-5, msg=name)


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
    mmrec("train", *seq, "train.batch_size=32", f"run_dir={one}")
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
