"""Several processes on the CPU (gloo): N processes x batch B equal 1 process x N*B, and
DeepSpeed ZeRO-2/3 train, resume and match one process with the global batch (the rest: test_distributed_runs.py).
Multi-process runs are launched as users launch them (`accelerate-launch`: tests/launching.py)."""
import json
import shutil
import sys

import pytest
import torch


from tests.launching import CPU2, ROOT, SAMPLING, TWO_FIELDS, _test_item_vectors, _tiny, launch, mmrec_here, run

pytestmark = pytest.mark.slow



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



def test_deepspeed_zero2_zero3_train_resume_and_match_one_process(tmp_path, cache_dir):
    ref, z2, z3 = tmp_path / "ddp", tmp_path / "zero2", tmp_path / "zero3"
    # the reference: one process with the global batch (== plain DDP, test_two_processes_equal_...)
    mmrec_here("train", *_tiny(ref, cache_dir, "train.batch_size=64"))
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


