"""Launching several CPU processes (gloo) as users do, for the multi-process tests
(tests/test_distributed*.py, tests/test_multinode.py). One thread per process
(OMP_NUM_THREADS=1), so results can be compared bit for bit."""
import os
import subprocess
import sys
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# accelerate's own `accelerate-launch` script: the same `launch_command` as `accelerate launch`,
# without the `accelerate` CLI's import of every other subcommand (its `estimate` imports timm and
# transformers: 7-10 s of each launch on 2 cores; docs/distributed.md). The multi-node
# test keeps the `accelerate launch` spelling users type.
ACCELERATE_LAUNCH = str(Path(sys.executable).parent / "accelerate-launch")
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
    return run([ACCELERATE_LAUNCH, "--config_file", config, "--num_processes", str(procs),
                "--main_process_port", str(free_port()), "--mixed_precision", "no", *args])


def mmrec(*args):
    return run([sys.executable, "-m", "mmrec", *args])


def mmrec_here(*args):
    """`mmrec ARGS` in this process, at one thread like `mmrec()`'s subprocess: the one-process
    side of a comparison, without an interpreter start and its imports (~8 s a call on 2 cores)."""
    from mmrec.cli import main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(list(args)) == 0, f"mmrec {' '.join(args)} failed"
    finally:
        torch.set_num_threads(threads)


TWO_FIELDS = ["fields.genres.modality=text", "fields.genres.template={genres}",
              "loss.alignment_weight=0.5"]


# The sampling pieces of issue 16: logQ with global frequencies, mixed negatives gathered across
# ranks (K per process, so the one-process run draws 2K), the distillation term (rho = 0: the
# hybrid's draw is per process and could not match; the ID table scores every item).
SAMPLING = ["loss.logq_correction=true", "distill.id_embedding=true", "distill.rho=0.0", "distill.weight=0.5"]


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


