"""`mmrec plot`: the pictures exist and the numbers behind the user-similarity plot are right."""
import json

import numpy as np
import pandas as pd

from mmrec.cli import main


def test_plot_run_writes_pngs_and_correct_user_groups(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "plots"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    report = json.loads((out / "plots.json").read_text())
    for key in ("curves", "tsne", "user"):
        data = open(report["files"][key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # history.jsonl now carries the epoch-mean training loss the curves are drawn from
    hist = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all(h["train"]["loss"] > 0 for h in hist)

    # The user's groups, recomputed from the raw ratings of the split's items.
    from mmrec.config import load_config
    from mmrec.data.pipeline import prepare
    from mmrec.data.split import Split
    cfg = load_config(run_dir / "config.yaml")
    split = Split.load(run_dir / "split.npz")
    prepared = prepare(cfg, split)
    sim = report["user_similarity"]
    inter = prepared.dataset.interactions
    mine = inter[(inter["user_id"].astype(str) == sim["user"])
                 & inter["item_id"].astype(str).isin(set(split.item_ids.astype(str)))]
    part = pd.Series(split.item_part, index=split.item_ids.astype(str))[mine["item_id"].astype(str)].to_numpy()
    liked = mine["rating"].to_numpy() >= cfg["data"]["positive_threshold"]
    assert sim["group_sizes"] == {"liked (train)": int((liked & (part == 0)).sum()),
                                  "liked (cold)": int((liked & (part != 0)).sum()),
                                  "disliked": int((~liked).sum())}
    # the default user is the test user with the most cold-test positives
    n = split.positives["test"].row_lengths()
    users = split.eval_users("test")
    assert sim["user"] == str(split.user_ids[users[np.argmax(n[users])]])
    assert -1 <= sim["mean_cosine"]["liked (train) vs disliked"] <= 1
