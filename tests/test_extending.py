"""docs/extending.md's worked example runs: its code blocks are copied into a plug-in module, and a
fresh process trains, evaluates and exports with the page's config (a reader, a modality, an
encoder, a fusion and a head that mmrec does not ship)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clcrec_fixture import make_genre_dataset

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "extending.md"


def blocks(lang: str, first_line: str) -> list[str]:
    """The page's ```lang blocks whose first line starts with `first_line`, in order."""
    found = re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [b for b in found if b.startswith(first_line)]


def write_tsv_dataset(genre_dir: Path, out: Path) -> Path:
    import pandas as pd
    items = pd.read_parquet(genre_dir / "items.parquet")
    inter = pd.read_parquet(genre_dir / "interactions.parquet")
    out.mkdir(parents=True)
    pd.DataFrame({"item_id": items["item_id"], "title": items["title"],
                  "tags": ["|".join(g) for g in items["genres"]]}).to_csv(out / "items.tsv", sep="\t", index=False)
    inter.to_csv(out / "ratings.tsv", sep="\t", index=False)
    return out


RUN = r"""
import json, sys
import numpy as np
from mmrec.config import load_config
from mmrec.data.tables import DataError
from mmrec.export import export
from mmrec.models import head_class
from mmrec.training.trainer import train
config, new_items, bad_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cfg = load_config(config, overrides)
run_dir, m = train(cfg)
cls = head_class("bpr")
again = cls.evaluate_run(run_dir, ("test",))
out = export(run_dir, new_items, run_dir / "export")
_, split, model = cls.load_run(run_dir)
import torch
with torch.no_grad():
    U = model.user_vectors(torch.arange(split.n_users)).numpy()
same_users = bool(np.allclose(np.load(out / "user_embeddings.npy"), U, atol=1e-6))
try:
    bad = load_config(config, overrides + ["data.path=" + bad_dir])
    from mmrec.data.pipeline import load_source
    load_source(bad["data"], use_cache=False)
    error = None
except DataError as e:
    error = str(e)
print(json.dumps({"test": m["test"], "random": m["baselines"]["random"]["test"], "again": again["test"],
                  "exported": json.loads((out / "export_report.json").read_text())["items_exported"],
                  "same_users": same_users, "error": error}))
"""


@pytest.mark.slow
def test_the_worked_example_trains_evaluates_and_exports(tmp_path, cache_dir):
    module = blocks("python", "# my_mmrec_plugin.py")
    assert len(module) == 5, "the page has one block per part: reader, modality, encoder, fusion, head"
    (tmp_path / "my_mmrec_plugin.py").write_text("\n".join(module))
    config = blocks("yaml", "# my_plugin.yaml")[0]
    (tmp_path / "my_plugin.yaml").write_text(config)
    genre = make_genre_dataset(tmp_path / "genre", n_items=90, n_users=60)
    data = write_tsv_dataset(genre, tmp_path / "data" / "my_tsv")
    # brand-new items for the export: the catalogue's tags under new ids
    import shutil
    import pandas as pd
    items = pd.read_csv(data / "items.tsv", sep="\t", dtype=str, keep_default_na=False)
    new = pd.DataFrame({"item_id": "new-" + items["item_id"], "tags": [t.split("|") for t in items["tags"]]})
    new.to_parquet(tmp_path / "new_items.parquet", index=False)
    bad = tmp_path / "data" / "bad"
    shutil.copytree(data, bad)
    with open(bad / "ratings.tsv", "a") as f:
        f.write("u1\tnot-an-item\t5.0\t7\n")
    n_lines = len((bad / "ratings.tsv").read_text().splitlines())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "my_plugin.yaml"),
                          str(tmp_path / "new_items.parquet"), str(bad), f"data.cache_dir={cache_dir}", f"run_dir={tmp_path / 'run'}", "train.progress=false"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # the tags carry the taste of this (SYNTHETIC) world: the plug-in model learns it
    assert r["test"]["ndcg@10"] > r["random"]["ndcg@10"] + 0.1, r
    assert r["again"]["ndcg@10"] == pytest.approx(r["test"]["ndcg@10"], abs=1e-9)
    assert r["exported"] == 90 and r["same_users"]
    assert r["error"] == f"{bad / 'ratings.tsv'} line {n_lines}: unknown item 'not-an-item'"
