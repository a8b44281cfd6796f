"""Multi-node, proven on one host: two `accelerate launch` commands with --num_machines 2 and
machine ranks 0 and 1 (one CPU process each, gloo) train the tiny config to the same metrics as
one launcher with 2 processes."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.launching import ACCELERATE, CPU2, ROOT, _tiny, env, free_port, launch

pytestmark = pytest.mark.slow
TWO_MACHINES = str(ROOT / "configs" / "accelerate" / "cpu_2machines_localhost.yaml")


def _metrics(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for h in m["history"]:
        h.pop("time_s", None)
    return {k: m[k] for k in ("val", "test", "best_epoch", "history", "split")}, m["resources"]


def test_two_launchers_on_two_machine_ranks_equal_one_launcher_with_two_processes(tmp_path, cache_dir):
    launch(CPU2, "-m", "mmrec", "train", *_tiny(tmp_path / "one-launcher", cache_dir))
    port = str(free_port())
    args = ["-m", "mmrec", "train", *_tiny(tmp_path / "two-machines", cache_dir)]
    procs = [subprocess.Popen([ACCELERATE, "launch", "--config_file", TWO_MACHINES, "--machine_rank", str(rank),
                               "--main_process_port", port, *args], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    one, res_one = _metrics(tmp_path / "one-launcher")
    two, res_two = _metrics(tmp_path / "two-machines")
    assert res_one["processes"] == res_two["processes"] == 2
    assert two == one
