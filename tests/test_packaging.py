"""A non-editable install into a fresh virtual environment works from any directory: the wheel
carries the configs (package data) and the plug-in entry point, and its `mmrec train` on the tiny
config completes from a folder that is not the checkout."""
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

    # a fresh virtual environment with the wheel installed (not editable) and its console script;
    # the dependencies (torch & co.) are this environment's, made visible by a .pth file (a path
    # line: the .pth files inside it, e.g. this checkout's editable install, are not processed)
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    py = venv / "bin" / "python"
    inst = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1")
    where = subprocess.run([str(py), "-c", "import mmrec, configs; print(mmrec.__file__, configs.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    mmrec_file, configs_file = where.stdout.split()
    assert mmrec_file.startswith(str(site)) and configs_file.startswith(str(site)), where.stdout
    run = subprocess.run([str(venv / "bin" / "mmrec"), "train", "--config", "tiny", f"data.cache_dir={cache_dir}",
                          "run_dir=run", "train.epochs=1", "train.max_steps_per_epoch=2"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert metrics["history"][0]["step"] == 2
