"""Feature extraction (`mmrec extract-features`), the `features` modality and the official CLCRec
file layout (writer and reader)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.clcrec_fixture import GENRES, make_genre_dataset, tiny_overrides

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def genre_dir(tmp_path_factory):
    return make_genre_dataset(tmp_path_factory.mktemp("genre"))


def _cfg(genre_dir, cache_dir, extra=()):
    from mmrec.config import load_config
    return load_config("configs/tiny.yaml", tiny_overrides(genre_dir, cache_dir) + list(extra))


def test_multihot_extract_and_file_source(genre_dir, cache_dir, tmp_path):
    from mmrec.data.tables import MultiModalDataset
    from mmrec.extract_features import extract_features
    from mmrec.features import build_feature_content
    cfg = _cfg(genre_dir, cache_dir)
    out = tmp_path / "feats"
    report = extract_features(cfg, out, multihot=["genres"])
    ds = MultiModalDataset.load(genre_dir)
    ids = (out / "item_ids.txt").read_text().split()
    assert ids == ds.items["item_id"].tolist()
    x = np.load(out / "genres.npy")
    assert (out / "genres.vocab.txt").read_text().split() == GENRES     # every genre occurs, sorted
    for r in (0, 7, 33):
        want = np.zeros(len(GENRES), np.float32)
        want[[GENRES.index(g) for g in ds.items["genres"][r]]] = 1.0
        np.testing.assert_array_equal(x[r], want)
    assert report["features"]["genres"]["dim"] == len(GENRES)

    # A dataset in another order, with an item the file does not have, reads rows by id.
    items = ds.items.iloc[::-1].reset_index(drop=True).copy()
    items.loc[0, "item_id"] = "brand-new"
    ds2 = MultiModalDataset("other", items, ds.interactions.iloc[:0])
    spec = {"source": "file", "path": str(out), "name": "genres", "normalize": False}
    c = build_feature_content("g", spec, ds2, cfg)
    assert not c.present[0] and c.x[0].sum() == 0
    assert c.report["items_not_in_file"] == 1
    r_src = ids.index(items["item_id"][5])
    np.testing.assert_array_equal(c.collate(np.array([5]))["x"][0].numpy(), x[r_src])
    cn = build_feature_content("g", {**spec, "normalize": True}, ds2, cfg)
    np.testing.assert_allclose(np.linalg.norm(cn.x[1:], axis=1), 1.0, rtol=1e-6)


def test_feature_file_errors_name_the_file(tmp_path, genre_dir, cache_dir):
    from mmrec.data.tables import DataError, MultiModalDataset
    from mmrec.features import build_feature_content
    cfg = _cfg(genre_dir, cache_dir)
    ds = MultiModalDataset.load(genre_dir)
    (tmp_path / "item_ids.txt").write_text("m0\nm1\n")
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), np.float32))
    spec = {"source": "file", "path": str(tmp_path), "normalize": True}
    with pytest.raises(DataError, match=r"bad\.npy: shape \(3, 4\) does not match the 2 ids"):
        build_feature_content("x", {**spec, "name": "bad"}, ds, cfg)
    with pytest.raises(DataError, match=r"missing\.npy: file not found \(feature sets in .*: \['bad'\]\)"):
        build_feature_content("x", {**spec, "name": "missing"}, ds, cfg)
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan], [1.0, 1.0]], np.float32))
    with pytest.raises(DataError, match=r"nan\.npy: non-finite values in rows of items \['m0'\]"):
        build_feature_content("x", {**spec, "name": "nan"}, ds, cfg)


def test_frozen_text_features_mean_and_cls(genre_dir, cache_dir):
    from transformers import BertModel
    from mmrec import assets
    from mmrec.data.tables import MultiModalDataset
    from mmrec.features import frozen_text_features
    from preprocessing.text import load_tokenizer
    items = MultiModalDataset.load(genre_dir).items.iloc[:3].copy()
    items.loc[1, "title"] = ""
    xm, present = frozen_text_features(items, "{title}", "minilm", "mean", 16, cache_dir)
    xc, _ = frozen_text_features(items, "{title}", "minilm", "cls", 16, cache_dir)
    assert present.tolist() == [True, False, True] and not xm[1].any()
    ckpt = str(assets.minilm_dir())
    enc = load_tokenizer(ckpt)(["Movie 0"], return_tensors="pt")
    with torch.no_grad():
        h = BertModel.from_pretrained(ckpt, add_pooling_layer=False)(**enc).last_hidden_state[0]
    np.testing.assert_allclose(xm[0], h.mean(0).numpy(), atol=1e-4)
    np.testing.assert_allclose(xc[0], h[0].numpy(), atol=1e-4)
    again, _ = frozen_text_features(items, "{title}", "minilm", "mean", 16, cache_dir)   # cached
    np.testing.assert_array_equal(again, xm)


def test_timm_features_from_local_weights(tmp_path, cache_dir):
    import timm
    from PIL import Image
    from safetensors.torch import save_file
    from mmrec.data.tables import DataError, MultiModalDataset
    from mmrec.extract_features import extract_features
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        p = tmp_path / f"still{k}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    import pandas as pd
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "images": [[paths[0], paths[1]], [paths[2]], []]})
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "rating": [5.0], "timestamp": [0]})
    MultiModalDataset("stills", items, inter).save(tmp_path / "ds")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    from mmrec.config import load_config
    cfg = load_config(None, ["data.source=processed", f"data.path={tmp_path / 'ds'}",
                             f"data.cache_dir={cache_dir}", "fields.still.modality=image",
                             "fields.still.size=32"])
    out = tmp_path / "f"
    extract_features(cfg, out, timm_model="test_vit", timm_weights=str(tmp_path / "w.safetensors"))
    x = np.load(out / "timm_test_vit.npy")
    assert np.load(out / "timm_test_vit.present.npy").tolist() == [True, True, False]
    assert x.shape == (3, model.num_features) and not x[2].any()
    # item a: the mean over its two stills of the model's pooled features, by hand
    from mmrec.data.visual import load_image
    cfgm = model.pretrained_cfg
    size = cfgm["input_size"][1:]
    pics = torch.stack([torch.from_numpy(load_image(p, 32)) for p in paths[:2]]).permute(0, 3, 1, 2) / 255.0
    pics = torch.nn.functional.interpolate(pics, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(cfgm["mean"]).view(1, 3, 1, 1), torch.tensor(cfgm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model((pics - mean) / std).mean(0).numpy()
    np.testing.assert_allclose(x[0], want, atol=1e-4)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(DataError, match="missing, e.g."):
        extract_features(cfg, out, timm_model="test_vit", timm_weights=str(tmp_path / "other.pth"))


def _toy_split():
    from mmrec.data.split import CSR, Split
    rng = np.random.default_rng(1)
    U, I = 12, 20
    part = np.array([0] * 12 + [1] * 4 + [2] * 4, dtype=np.int8)
    rng.shuffle(part)
    pos = {}
    for k, p in enumerate(("train", "val", "test")):
        items = np.flatnonzero(part == k)
        us, its = [], []
        for u in range(U):
            chosen = rng.choice(items, size=rng.integers(0 if p != "train" else 2, 4), replace=False)
            us += [u] * len(chosen)
            its += list(chosen)
        pos[p] = CSR.from_pairs(np.array(us, np.int64), np.array(its, np.int64), U)
    return Split(np.array([f"user{u}" for u in range(U)]), np.array([f"it{i}" for i in range(I)]), part, pos)


def _pairs(csr):
    r, c = csr.pairs()
    return set(zip(r.tolist(), c.tolist()))


def test_official_layout_round_trip(tmp_path):
    from mmrec.data.clcrec_format import read_official, write_official
    split = _toy_split()
    feats = {"t": np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)}
    write_official(split, tmp_path, feats, warm_holdout=0.3, seed=0)
    # the files as the official scripts read them: items numbered after users, warm ones first
    train = np.load(tmp_path / "train.npy")
    assert train.shape[1] == 2 and train[:, 1].min() >= 12 and train[:, 0].max() < 12
    warm_set = np.load(tmp_path / "warm_set.npy")
    assert sorted(warm_set.tolist()) == list(range(12, 24))
    rows = np.load(tmp_path / "val_cold.npy", allow_pickle=True)
    assert all(r[0] < 12 and min(r[1:]) >= 24 for r in rows)
    full = np.load(tmp_path / "val_full.npy", allow_pickle=True)
    assert sum(len(r) - 1 for r in full) == sum(len(r) - 1 for r in rows) + sum(
        len(r) - 1 for r in np.load(tmp_path / "val_warm.npy", allow_pickle=True))
    d = np.load(tmp_path / "user_item_dict.npy", allow_pickle=True).item()
    assert sum(len(v) for v in d.values()) == sum(split.positives[p].indices.size for p in split.positives)

    back = read_official(tmp_path)
    s2 = back.split
    np.testing.assert_array_equal(s2.item_ids, split.item_ids)
    np.testing.assert_array_equal(s2.user_ids, split.user_ids)
    np.testing.assert_array_equal(s2.item_part, split.item_part)
    for p in ("val", "test"):
        assert _pairs(s2.positives[p]) == _pairs(split.positives[p])
    held = _pairs(back.warm["val"]) | _pairs(back.warm["test"])
    assert held and not (held & _pairs(s2.positives["train"]))
    assert held | _pairs(s2.positives["train"]) == _pairs(split.positives["train"])
    np.testing.assert_array_equal(back.features["t"], feats["t"])

    # A published folder has no ids.json: parts come from the files, items keep official numbers.
    (tmp_path / "ids.json").unlink()
    bare = read_official(tmp_path).split
    assert (bare.item_part == 0).sum() == 12 and bare.item_ids[0] == "12"
    assert len(_pairs(bare.positives["val"])) == len(_pairs(split.positives["val"]))


def test_official_reader_errors(tmp_path):
    from mmrec.data.clcrec_format import read_official, write_official
    from mmrec.data.tables import DataError
    write_official(_toy_split(), tmp_path)
    rows = np.empty(1, dtype=object)
    rows[:] = [[0, 999]]
    np.save(tmp_path / "test_cold.npy", rows, allow_pickle=True)
    with pytest.raises(DataError, match=r"test_cold\.npy row 0: item 999 outside the item numbers 12\.\.31"):
        read_official(tmp_path)
    rows[:] = [[0, 12]]     # a warm item among the cold test rows
    np.save(tmp_path / "test_cold.npy", rows, allow_pickle=True)
    with pytest.raises(DataError, match=r"test_cold\.npy: item 12 of user 0 is not a test cold item"):
        read_official(tmp_path)
    with pytest.raises(DataError, match="no train.npy"):
        read_official(tmp_path / "nowhere")


def test_extract_cli_writes_official_layout(genre_dir, cache_dir, tmp_path):
    from mmrec.cli import main
    from mmrec.data.clcrec_format import read_official
    from mmrec.data.pipeline import prepare
    out = tmp_path / "x"
    args = ["extract-features", "--config", "configs/tiny.yaml", "--out", str(out), "--multihot", "genres",
            "--clcrec-layout", "--feat", "t=genres"] + tiny_overrides(genre_dir, cache_dir)
    assert main(args) == 0
    meta = json.loads((out / "features.json").read_text())
    assert meta["clcrec_layout"]["features"] == {"feat_t": ["genres"]}
    back = read_official(out / "clcrec")
    want = prepare(_cfg(genre_dir, cache_dir)).split    # the split `mmrec train` makes with this config
    np.testing.assert_array_equal(back.split.item_ids, want.item_ids)
    np.testing.assert_array_equal(back.split.item_part, want.item_part)
    x = np.load(out / "genres.npy")
    ids = (out / "item_ids.txt").read_text().split()
    np.testing.assert_array_equal(back.features["t"], x[[ids.index(i) for i in want.item_ids]])
    assert main(["extract-features", "--config", "configs/tiny.yaml", "--out", str(out), "--timm-model",
                 "test_vit"] + tiny_overrides(genre_dir, cache_dir)) == 2      # no weights: a clear error


def test_run_encoder_features(genre_dir, cache_dir, tmp_path):
    """A trained mmrec run's per-field encodings z, item by item, as the run's own encoder gives them."""
    from mmrec.data.content import collate_items
    from mmrec.data.pipeline import build_content
    from mmrec.data.tables import DataError, MultiModalDataset
    from mmrec.models import load_run
    from mmrec.extract_features import extract_features
    from mmrec.training.trainer import train
    cfg = _cfg(genre_dir, cache_dir, ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16",
                                      "eval.baselines=[]", f"run_dir={tmp_path / 'run'}"])
    run_dir, _ = train(cfg)
    out = tmp_path / "f"
    extract_features(cfg, out, run=str(run_dir))
    x = np.load(out / "run_text.npy")
    rcfg, _, model = load_run(run_dir)
    ds = MultiModalDataset.load(genre_dir)
    content = build_content(rcfg, ds)
    with torch.no_grad():
        want = model.item_encoder(collate_items(content, np.array([4, 9]), "eval")).z["text"].numpy()
    np.testing.assert_allclose(x[[4, 9]], want, atol=1e-5)
    assert x.shape == (len(ds.items), rcfg["model"]["token_dim"])
    with pytest.raises(DataError, match="are not fields of"):
        extract_features(cfg, out, run=str(run_dir), run_fields=["trailer"])
