"""The CLCRec head: its losses against plain loops, LightGCN against dense algebra, negative
sampling, and extract -> head -> evaluate on a tiny dataset (mmrec's own layout and the official one)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.clcrec_fixture import make_genre_dataset, tiny_overrides

torch.set_num_threads(1)

HEAD = ["head=clcrec", "model.dim=16", "clcrec.hidden_dim=32", "clcrec.num_neg=8",
        "train.epochs=6", "train.batch_size=32", "train.lr=0.01", "train.warmup_epochs=0",
        "train.decay_factor=1.0", "train.max_steps_per_epoch=null", "eval.baselines=[random]"]


def _cfg(extra=()):
    from mmrec.config import load_config
    return load_config(None, ["head=clcrec", "fields.f.modality=features", "fields.f.source=multihot",
                              "model.dim=4", "clcrec.hidden_dim=6"] + list(extra))


def test_contrastive_loss_matches_a_plain_loop():
    from mmrec.models.clcrec import contrastive_loss
    g = torch.Generator().manual_seed(0)
    a, c, tau = torch.randn(3, 5, generator=g), torch.randn(3, 4, 5, generator=g), 0.7
    for cosine in (False, True):
        total = 0.0
        for b in range(3):
            def sim(x, y):
                return float(x @ y / (x.norm() * y.norm())) if cosine else float(x @ y)
            scores = [math.exp(sim(a[b], c[b, k]) / tau) for k in range(4)]
            total += -math.log(scores[0] / sum(scores))
        assert contrastive_loss(a, c, tau, cosine) == pytest.approx(total / 3, rel=1e-5)


@pytest.mark.parametrize("encoder,reg", [("mf", "official"), ("gcn", "l2")])
def test_forward_equals_eq13_row_by_row(monkeypatch, encoder, reg):
    """L = lam L_RE + (1 - lam) L_UI + eta reg, with the hybrid mask's items swapped to f."""
    from mmrec.models import clcrec
    cfg = _cfg([f"clcrec.encoder={encoder}", f"clcrec.reg={reg}", "clcrec.lam=0.3",
                "clcrec.temperature=0.5", "clcrec.reg_weight=0.2"])
    torch.manual_seed(0)
    pairs = np.array([[0, 0], [0, 1], [1, 1], [2, 3], [3, 4], [2, 5]])
    model = clcrec.CLCRecModel(cfg, 4, 7, pairs, feature_dim=3)
    with torch.no_grad():   # larger embeddings than the init, so every term matters
        model.user_embedding.weight.normal_()
        model.item_embedding.weight.normal_()
    x = torch.randn(7, 3)
    items = torch.tensor([[0, 2, 3], [1, 4, 6], [3, 0, 5]])
    users = torch.tensor([0, 1, 2])
    uniq, slot = torch.unique(items, return_inverse=True)
    mask = torch.tensor([[True, False, True], [False, False, True], [True, True, False]])
    monkeypatch.setattr(clcrec, "hybrid_mask", lambda *a, **k: mask)
    batch = {"user_idx": users, "items": items, "unique_items": uniq, "slot": slot,
             "content": {"f": {"x": x[uniq]}}}
    out = model(batch)

    zu_all, zi_all = model.collab()
    f_all = model.feature_encoder(x)
    tau, re, ui, reg_sum = 0.5, 0.0, 0.0, 0.0
    for b in range(3):
        zi_pos = zi_all[items[b, 0]]
        h = [math.exp(float(F.cosine_similarity(zi_pos, f_all[j], dim=0)) / tau) for j in items[b]]
        re += -math.log(h[0] / sum(h))
        g = [math.exp(float(zu_all[users[b]] @ (f_all[j] if mask[b, k] else zi_all[j])) / tau)
             for k, j in enumerate(items[b])]
        ui += -math.log(g[0] / sum(g))
    eu, ei = model.user_embedding.weight[users], model.item_embedding.weight[items]
    if reg == "official":
        reg_v = (float(eu.norm(dim=1).mean()) + float(ei.norm(dim=-1).mean())) / 2
    else:
        reg_v = (float((eu ** 2).sum(1).mean()) + float((ei ** 2).sum((1, 2)).mean())) / 2
    want = 0.3 * re / 3 + 0.7 * ui / 3 + 0.2 * reg_v
    assert float(out["loss_re"]) == pytest.approx(re / 3, rel=1e-5)
    assert float(out["loss_ui"]) == pytest.approx(ui / 3, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(want, rel=1e-5)


def test_lightgcn_is_the_layer_mean_of_normalised_propagation():
    from mmrec.models.clcrec import CLCRecModel
    cfg = _cfg(["clcrec.encoder=gcn", "clcrec.gcn_layers=3"])
    pairs = np.array([[0, 0], [0, 2], [1, 2], [2, 1], [2, 2]])
    model = CLCRecModel(cfg, 3, 4, pairs, feature_dim=2)     # item 3: no edges (cold)
    A = torch.zeros(7, 7)
    for u, i in pairs:
        A[u, 3 + i] = A[3 + i, u] = 1.0
    d = A.sum(1)
    dinv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    norm = dinv[:, None] * A * dinv[None, :]
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    layers, h = [E], E
    for _ in range(3):
        h = norm @ h
        layers.append(h)
    want = torch.stack(layers).mean(0)
    zu, zi = model.collab()
    torch.testing.assert_close(torch.cat([zu, zi]).detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zi[3].detach(), E[6] / 4)             # an isolated item only keeps e_i/(L+1)


def test_hybrid_mask_rates():
    from mmrec.models.clcrec import hybrid_mask
    torch.manual_seed(0)
    assert float(hybrid_mask((400, 100), 0.3).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert float(hybrid_mask((400, 100), 0.5, "official").float().mean()) == pytest.approx(
        1 - math.exp(-0.5), abs=0.01)
    assert not hybrid_mask((10, 10), 0.0).any() and hybrid_mask((10, 10), 1.0).all()


def test_negative_sampler():
    from mmrec.data.split import CSR
    from mmrec.data.tables import DataError
    from mmrec.models.clcrec import NegativeSampler
    train = CSR.from_pairs(np.array([0, 0, 0, 1]), np.array([1, 2, 3, 5]), 2)
    warm = np.array([0, 1, 2, 3, 4, 5, 6, 7])                         # 8, 9 are cold items
    s = NegativeSampler(train, warm, 5, n_items=10)
    negs = s(np.array([0, 1, 0]), np.array([11, 12, 11]))
    assert negs.shape == (3, 5)
    for row, u in zip(negs, (0, 1, 0)):
        assert len(set(row.tolist())) == 5                           # without replacement
        assert not set(row.tolist()) & set(train.row(u).tolist())   # never a positive
        assert set(row.tolist()) <= set(warm.tolist())              # never a cold item
    np.testing.assert_array_equal(negs, s(np.array([0, 1, 0]), np.array([11, 12, 11])))  # seeded
    assert sorted(negs[0].tolist()) == [0, 4, 5, 6, 7]              # user 0 has exactly 5 left
    with pytest.raises(DataError, match="num_neg=6"):
        NegativeSampler(train, warm, 6, n_items=10)


@pytest.fixture(scope="module")
def genre_dir(tmp_path_factory):
    return make_genre_dataset(tmp_path_factory.mktemp("genre"), n_items=120, n_users=80)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_extract_train_evaluate_export(genre_dir, cache_dir, tmp_path):
    """Multi-hot genres extracted to files, read by a `features` field, CLCRec trained by the shared
    trainer: cold items ranked from content clearly beat random; export embeds brand-new items."""
    from mmrec.config import load_config
    from mmrec.export import export
    from mmrec.extract_features import extract_features
    from mmrec.training.trainer import train
    base = tiny_overrides(genre_dir, cache_dir)
    feats = tmp_path / "feats"
    extract_features(load_config("configs/tiny.yaml", base), feats, multihot=["genres"])
    cfg = load_config("configs/tiny.yaml", base + HEAD + [
        "fields.text=null", "fields.g.modality=features", "fields.g.source=file",
        f"fields.g.path={feats}", "fields.g.name=genres", f"run_dir={tmp_path / 'run'}"])
    run_dir, m = train(cfg)
    assert set(m["history"][-1]["train"]) >= {"loss", "loss_re", "loss_ui", "loss_reg"}
    ndcg, rnd = m["test"]["ndcg@10"], m["baselines"]["random"]["test"]["ndcg@10"]
    assert ndcg > rnd + 0.15, (ndcg, rnd)
    # export: the run loads without its data and scores new items from their features alone
    import pandas as pd
    new = pd.DataFrame({"item_id": ["m3", "m5", "nope"]})
    new.to_csv(tmp_path / "new.csv", index=False)
    out = export(run_dir, tmp_path / "new.csv", tmp_path / "exp")
    V = np.load(out / "item_embeddings.npy")
    rep = json.loads((out / "export_report.json").read_text())
    assert V.shape == (2, 16) and rep["skipped_item_ids"] == ["nope"]
    from mmrec.models import load_run
    from mmrec.features import read_feature_file
    _, _, model = load_run(run_dir)
    ids, x, _ = read_feature_file(feats, "genres")
    xs = torch.from_numpy(x[[list(ids).index("m3"), list(ids).index("m5")]])
    with torch.no_grad():
        want = model.feature_encoder(F.normalize(xs, dim=1)).numpy()
    np.testing.assert_allclose(V, want, atol=1e-5)
    # the cold test items exported by id alone and scored with the exported users give back the
    # trainer's cold test metrics, and so does `mmrec evaluate` (the head's own evaluation)
    from mmrec.data.split import Split
    from mmrec.evaluation.evaluator import DotScorer, RankingEvaluator
    from mmrec.export import evaluate_run
    split = Split.load(run_dir / "split.npz")
    cold = split.items_of("test")
    pd.DataFrame({"item_id": split.item_ids[cold]}).to_csv(tmp_path / "cold.csv", index=False)
    out = export(run_dir, tmp_path / "cold.csv", tmp_path / "exp_cold")
    U, V = np.load(out / "user_embeddings.npy"), np.load(out / "item_embeddings.npy")
    assert (out / "item_ids.txt").read_text().split() == list(split.item_ids[cold])
    res = RankingEvaluator(cfg["eval"]["ks"]).evaluate(
        DotScorer(torch.from_numpy(U), torch.from_numpy(V)), split.eval_users("test"), cold,
        split.positives["test"], n_items=split.n_items).means()
    again = evaluate_run(run_dir, ("test",))["test"]
    for k in ("ndcg@10", "recall@10", "precision@10"):
        assert res[k] == pytest.approx(m["test"][k], abs=1e-6), k
        assert again[k] == pytest.approx(m["test"][k], abs=1e-9), k


def test_official_layout_through_the_trainer(genre_dir, cache_dir, tmp_path):
    """extract-features writes the official layout (with warm held-out interactions); `data.source:
    clcrec` trains on it as it is and reports cold, warm and all-item metrics."""
    from mmrec.cli import main
    from mmrec.config import load_config
    from mmrec.data.clcrec_format import read_official
    from mmrec.training.trainer import train
    base = tiny_overrides(genre_dir, cache_dir)
    out = tmp_path / "x"
    assert main(["extract-features", "--config", "configs/tiny.yaml", "--out", str(out), "--multihot",
                 "genres", "--clcrec-layout", "--feat", "t=genres", "--warm-holdout", "0.2"] + base) == 0
    cfg = load_config(None, HEAD + [f"data.cache_dir={cache_dir}", "data.source=clcrec",
                                    f"data.path={out / 'clcrec'}", "fields.g.modality=features",
                                    "fields.g.name=feat_t", f"run_dir={tmp_path / 'run'}",
                                    "train.progress=false"])
    run_dir, m = train(cfg)
    official = read_official(out / "clcrec").split
    from mmrec.data.split import Split
    saved = Split.load(run_dir / "split.npz")
    np.testing.assert_array_equal(saved.item_part, official.item_part)
    test = m["test"]
    assert {"warm", "all"} <= set(test) and test["warm"]["users"] > 0
    assert test["ndcg@10"] > m["baselines"]["random"]["test"]["ndcg@10"] + 0.1
    # warm items are ranked by collaborative embeddings, with the training positives masked
    assert test["warm"]["ndcg@10"] > 0.1
