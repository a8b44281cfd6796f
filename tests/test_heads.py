"""The head contract (`mmrec.models.base.Head`), checked for every registered head the way timm
checks every model of `list_models()`: train 2 steps, evaluate, export, reload, compare scores.

A head registered without a recipe here fails `test_every_head_has_a_recipe`: a new head must
pass the same contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrec.models import HEADS, ItemColdStartHead, UserColdStartHead, head_class
from tests.clcrec_fixture import make_genre_dataset, tiny_overrides as genre_overrides
from tests.sequence_fixture import synthetic_world

TWO_STEPS = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.warmup_epochs=0", "eval.every_epochs=1",
             "eval.baselines=[random]"]
SEQUENTIAL = ["user_split.features=[occupation,age]", "sasrec.max_len=12", "sasrec.hidden=16",
              "train.batch_size=16"]

# head -> (config file, overrides given the data folders)
RECIPES = {
    "mmrec": ("configs/tiny.yaml", lambda d: genre_overrides(d["genre"], d["cache"]) + ["train.batch_size=16"]),
    "clcrec": ("configs/tiny.yaml", lambda d: genre_overrides(d["genre"], d["cache"]) + [
        "head=clcrec", "fields.text=null", "fields.g.modality=features", "fields.g.source=multihot",
        "fields.g.column=genres", "model.dim=8", "clcrec.hidden_dim=16", "clcrec.num_neg=4",
        "train.batch_size=16"]),
    "sasrec": ("configs/cmclrec_ml100k.yaml", lambda d: [
        "head=sasrec", "data.source=processed", f"data.path={d['groups']}", f"data.cache_dir={d['cache']}"]
        + SEQUENTIAL),
    "cmclrec": ("configs/cmclrec_ml100k.yaml", lambda d: [
        "head=cmclrec", "data.source=processed", f"data.path={d['groups']}", f"data.cache_dir={d['cache']}",
        "cmclrec.latent_dim=8", "cmclrec.ae_hidden=16", "cmclrec.pretrain_epochs=0"] + SEQUENTIAL),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("heads")
    return {"genre": make_genre_dataset(root, n_items=60, n_users=40), "groups": synthetic_world(root / "groups", n_users=80),
            "cache": cache_dir}


def test_every_head_has_a_recipe():
    assert set(HEADS) == set(RECIPES), "add a RECIPES entry for every registered head"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_head_contract(name, data, tmp_path):
    from mmrec.config import load_config
    from mmrec.export import export
    from mmrec.training.trainer import train
    cls = head_class(name)
    assert issubclass(cls, (ItemColdStartHead, UserColdStartHead)) and cls.name == name
    config, overrides = RECIPES[name]
    cfg = load_config(config, overrides(data) + TWO_STEPS + [f"run_dir={tmp_path / 'run'}"])
    run_dir, metrics = train(cfg)
    assert metrics["history"][0]["step"] == 2 and np.isfinite(metrics["history"][0]["train"]["loss"])
    assert set(metrics["baselines"]) == {"random"}
    select = cfg["eval"]["select_metric"]

    # reload: the class of the config's head, in eval mode, with the saved best weights
    rcfg, split, model = cls.load_run(run_dir)
    assert type(model) is cls and not model.training
    from safetensors.torch import load_file
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k

    # evaluate: the reloaded model on the saved split gives the trainer's test numbers
    again = cls.evaluate_run(run_dir, ("test",))
    assert again["test"][select] == pytest.approx(metrics["test"][select], abs=1e-9)
    assert json.loads((run_dir / "evaluation.json").read_text())["test"] == again["test"]

    # export: user . item from the exported files equals the reloaded model's own scores
    if issubclass(cls, ItemColdStartHead):
        out = export(run_dir, data["genre"], tmp_path / "export")
        prepared = cls.load_data(rcfg, split)
        from mmrec.evaluation.ranking import encode_items, user_vectors
        ids = (out / "item_ids.txt").read_text().split()
        index = {str(i): j for j, i in enumerate(split.item_ids)}
        known = [r for r, i in enumerate(ids) if i in index]   # the dataset's items that are in the split
        assert len(known) == split.n_items
        want_items = encode_items(model, prepared, np.array([index[ids[r]] for r in known]), 7)
        want_users = user_vectors(model, split.n_users)
    else:
        out = export(run_dir, None, tmp_path / "export")
        want_items = model.item_table()
        want_users = model.user_states(np.arange(split.n_users))
    U, V = np.load(out / "user_embeddings.npy"), np.load(out / "item_embeddings.npy")
    np.testing.assert_allclose(U[:split.n_users], want_users.detach().numpy(), rtol=1e-5, atol=1e-6)
    if issubclass(cls, ItemColdStartHead):
        V = V[known]
    np.testing.assert_allclose(V, want_items.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_trainer_takes_a_built_head_and_its_data(tiny_overrides, tmp_path):
    """RecBole's `Trainer(config, model)`: a head and data built by the caller train exactly as
    the ones `train(cfg)` builds from the config (same seed: the same metrics, bit for bit)."""
    from accelerate.utils import set_seed

    from mmrec.config import load_config
    from mmrec.training.trainer import Trainer, train
    over = tiny_overrides + ["train.epochs=1", "train.max_steps_per_epoch=3"]
    _, want = train(load_config("configs/tiny.yaml", over + [f"run_dir={tmp_path / 'a'}"]))
    cfg = load_config("configs/tiny.yaml", over + [f"run_dir={tmp_path / 'b'}"])
    set_seed(cfg["seed"])
    cls = head_class(cfg["head"])
    prepared = cls.load_data(cfg)
    model = cls.build(cfg, prepared)
    trainer = Trainer(cfg, model=model, prepared=prepared)
    assert trainer.model is not None and (tmp_path / "b" / "split.npz").exists()
    got = trainer.fit()
    assert got["history"][0]["train"] == want["history"][0]["train"]
    assert got["test"] == want["test"]
