"""A non-editable install works from any directory: the wheel carries the configs (package data)
and the plug-in entry point, and `mmrec train` on the tiny config completes from a folder that
is not the checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_trains_from_another_directory(tmp_path, cache_dir):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("mmrec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "configs/base.yaml" in names and "configs/defaults/heads/mmrec.yaml" in names
    assert "configs/tiny.yaml" in names and "mmrec/synthetic/world.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "synthetic = mmrec.synthetic" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # installed into a folder of its own, in front of the checkout on the path; the
    # dependencies come from this environment
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    code = ("import sys, mmrec, configs; from mmrec.cli import main; "
            "print(mmrec.__file__, configs.__file__, flush=True); sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code, "train", "--config", "tiny", f"data.cache_dir={cache_dir}",
                          "run_dir=run", "train.epochs=1", "train.max_steps_per_epoch=2"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    mmrec_file, configs_file = run.stdout.splitlines()[0].split()
    assert mmrec_file.startswith(str(site)) and configs_file.startswith(str(site))
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert metrics["history"][0]["step"] == 2
