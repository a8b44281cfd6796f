"""User cold-start heads: CMCLRec's losses against plain references, the user split and the
time-ordered sequences of MovieLens-100k, and tiny end-to-end runs on a SYNTHETIC world whose
cold users' features determine their items."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.data.sequences import (TEST_COLD, TEST_WARM, TRAIN, VAL_COLD, VAL_WARM, UserSplit,
                                  encode_user_features, prepare_sequences)
from mmrec.data.tables import DataError
from mmrec.models.cmclrec import (SelfAttention, disjoint_masks, gaussian_kernel, info_nce, mmd,
                                  reconstruction)
from tests.sequence_fixture import synthetic_world


# --------------------------------------------------------------------------------------------
# losses against plain loops

def test_info_nce_matches_eq3():
    g = torch.Generator().manual_seed(0)
    a, b, tau = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), 0.3
    cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))   # noqa: E731
    ref = 0.0
    for k in range(6):
        num = math.exp(cos(a[k], b[k]) / tau)
        den = sum(math.exp(cos(a[k], b[t]) / tau) for t in range(6))
        ref -= math.log(num / den) / 6
    assert float(info_nce(a, b, tau)) == pytest.approx(ref, rel=1e-5)
    # aligned views score lower than shuffled ones
    assert float(info_nce(a, a, tau)) < float(info_nce(a, a[torch.randperm(6, generator=g)], tau))


def test_mmd_matches_eq9_and_eq10():
    g = torch.Generator().manual_seed(1)
    ps, pf, sigma = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g) + 0.5, 1.3
    k = lambda x, y: math.exp(-float(((x - y) ** 2).sum()) / (2 * sigma ** 2))   # noqa: E731
    kss = sum(k(x, y) for x in ps for y in ps) / 25
    ksf = sum(k(x, y) for x in ps for y in pf) / 20
    kff = sum(k(x, y) for x in pf for y in pf) / 16
    assert float(mmd(ps, pf, sigma)) == pytest.approx(kss - 2 * ksf + kff, rel=1e-5)
    assert float(gaussian_kernel(ps[:1], pf[:1], sigma)) == pytest.approx(k(ps[0], pf[0]), rel=1e-5)
    assert float(mmd(ps, ps.clone(), None)) == pytest.approx(0.0, abs=1e-6)   # median-width path
    assert float(mmd(ps, ps + 3.0, None)) > 0.1


def test_reconstruction_matches_eq8():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    ref = sum(float(((x[u] - y[u]) ** 2).sum()) for u in range(4)) / 4
    assert float(reconstruction(x, y)) == pytest.approx(ref, rel=1e-6)


def test_self_attention_matches_eq5_to_7():
    torch.manual_seed(0)
    att = SelfAttention(4)
    a = torch.randn(1, 3, 4)
    with torch.no_grad():
        s1, s2, s3 = att.m1(a[0]), att.m2(a[0]), att.m3(a[0])
    ref = torch.zeros(3, 4)
    for i in range(3):
        w = torch.tensor([math.exp(float(s1[i] @ s2[j]) / 2.0) for j in range(3)])
        w = w / w.sum()
        ref[i] = sum(w[j] * s3[j] for j in range(3))
    assert torch.allclose(att(a)[0].detach(), ref, atol=1e-5)


def test_augmentation_masks_are_disjoint():
    valid = torch.ones(200, 30, dtype=torch.bool)
    valid[:, :10] = False
    m1, m2 = disjoint_masks((200, 30), 0.2, valid, torch.Generator().manual_seed(0))
    assert not (m1 & m2).any() and not (m1 & ~valid).any() and not (m2 & ~valid).any()
    assert 0.17 < m1[:, 10:].float().mean() < 0.23 and 0.17 < m2[:, 10:].float().mean() < 0.23


# --------------------------------------------------------------------------------------------
# the MovieLens-100k user split and sequences

@pytest.fixture(scope="module")
def ml100k_seq(cache_dir):
    from mmrec.config import load_config
    cfg = load_config("configs/cmclrec_ml100k.yaml", [f"data.cache_dir={cache_dir}"])
    return cfg, prepare_sequences(cfg)


def test_user_split_sizes_disjoint_and_seeded(ml100k_seq):
    cfg, data = ml100k_seq
    s = data.split
    n = s.n_users
    assert n == 943 and s.n_items == 1682
    counts = {c: int((s.user_part == c).sum()) for c in (TRAIN, VAL_WARM, VAL_COLD, TEST_WARM, TEST_COLD)}
    assert counts[TEST_COLD] == counts[TEST_WARM] == round(0.15 * n) == 141
    assert counts[VAL_COLD] + counts[VAL_WARM] == round(0.2 * (n - 282))
    assert sum(counts.values()) == n   # every user in exactly one part
    cold, warm = s.users_of("test", "cold"), s.users_of("test", "warm")
    assert not set(cold) & set(warm) and not set(cold) & set(s.users_of("val"))
    assert set(s.users_of("test")) == set(cold) | set(warm)
    # cold users are never trained on; warm users are, without their held-out targets
    trained = set(s.train_users())
    assert not trained & set(cold) and not trained & set(s.users_of("val", "cold"))
    u = int(warm[0])
    assert np.array_equal(s.history(u), s.seq.row(u)[:-10])
    assert set(s.targets(warm).row(u)) == set(s.seq.row(u)[-10:])
    assert len(s.history(int(cold[0]))) == 0 and len(s.known(cold).indices) == 0
    # the same seed gives the same split; another seed another one
    from mmrec.data.sequences import make_user_split
    same = make_user_split(data.dataset, cfg)
    assert np.array_equal(same.user_part, s.user_part)
    other = make_user_split(data.dataset, {**cfg, "split": {**cfg["split"], "seed": 1}})
    assert not np.array_equal(other.user_part, s.user_part)
    assert sorted(np.bincount(other.user_part)) == sorted(np.bincount(s.user_part))


def test_sequences_are_time_ordered(ml100k_seq, tmp_path):
    _, data = ml100k_seq
    s = data.split
    inter = data.dataset.interactions
    ts = {(u, i): t for u, i, t in zip(inter["user_id"], inter["item_id"], inter["timestamp"])}
    assert len(s.seq.indices) == len(inter) == 100000
    for u in (0, 5, 100, 942):
        items = s.item_ids[s.seq.row(u)]
        times = [ts[(s.user_ids[u], i)] for i in items]
        assert times == sorted(times) and len(set(items)) == len(items)
    # the split round-trips through split.npz
    s.save(tmp_path / "split.npz")
    back = UserSplit.load(tmp_path / "split.npz")
    assert np.array_equal(back.seq.indices, s.seq.indices) and back.feature_sizes == s.feature_sizes


def test_user_features(ml100k_seq):
    _, data = ml100k_seq
    s = data.split
    assert s.feature_names == ["age", "gender", "occupation", "zip"]
    users = data.dataset.users.set_index("user_id")
    # user 1: 24, M, technician, 85711 -> age bucket "1" (18 <= 24 < 25), the 2nd value -> code 3
    row = s.features[list(s.user_ids).index("1")]
    assert row[0] == 3 and row.min() >= 2
    assert s.feature_sizes[1] == 2 + 2 and s.feature_sizes[2] == users["occupation"].nunique() + 2
    assert s.feature_sizes[3] == 2 + 11   # zip first digit 0-9, plus "other" (Canadian zips)


def test_bad_user_features_are_named():
    users = pd.DataFrame({"user_id": ["1", "2"], "age": ["30", "old"], "gender": ["M", "F"]})
    with pytest.raises(DataError, match="field 'age' of user '2'"):
        encode_user_features(users, np.array(["1", "2"]), ["age"], 1, "users.parquet")
    with pytest.raises(DataError, match=r"users.parquet: missing column\(s\) \['zip'\]"):
        encode_user_features(users, np.array(["1", "2"]), ["zip"], 1, "users.parquet")
    codes, sizes, _ = encode_user_features(users, np.array(["1", "3"]), ["gender"], 1, "u")
    assert codes[:, 0].tolist() == [2, 1] and sizes == [3]   # user 3 has no row: missing (1)


# --------------------------------------------------------------------------------------------
# SYNTHETIC end-to-end: a user's occupation (its group) decides which items it watches
# (tests/sequence_fixture.py)

@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cmcl")
    data = synthetic_world(root / "world")
    out = {}
    for head in ("sasrec", "cmclrec"):
        cfg = load_config("configs/cmclrec_ml100k.yaml", [
            f"head={head}", f"run_dir={root / head}", "data.source=processed", f"data.path={data}",
            "user_split.features=[occupation,age]", "sasrec.max_len=20", "sasrec.hidden=32",
            "sasrec.dropout=0.0", "cmclrec.latent_dim=16", "cmclrec.ae_hidden=64", "cmclrec.dropout=0.0",
            "train.epochs=24", "train.batch_size=32", "train.lr=3e-3", "cmclrec.pretrain_epochs=4",
            "eval.every_epochs=4"])
        out[head] = train(cfg)
    return out


def test_end_to_end_run_directory(synthetic_runs):
    run_dir, metrics = synthetic_runs["cmclrec"]
    for name in ("config.yaml", "split.npz", "metrics.json", "history.jsonl", "model/model.safetensors",
                 "data_report.json", "train.log"):
        assert (run_dir / name).exists(), name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    t = on_disk["test"]
    assert t["users"] == t["cold/users"] + t["warm/users"] == 72
    for k in ("recall@20", "ndcg@20", "cold/recall@20", "cold/ndcg@20", "warm/recall@20", "warm/ndcg@20"):
        assert 0.0 <= t[k] <= 1.0
    assert set(on_disk["baselines"]) == {"random", "popularity"}
    hist = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines()]
    assert on_disk["best_epoch"] == max((r for r in hist if "val" in r), key=lambda r: r["val"]["ndcg@20"])["epoch"]
    # `mmrec evaluate` reloads the best model and the saved split and gets the same numbers
    from mmrec.export import evaluate_run
    again = evaluate_run(run_dir, ("test",))
    assert again["test"]["cold/ndcg@20"] == pytest.approx(t["cold/ndcg@20"], abs=1e-9)
    assert again["test"]["warm/recall@20"] == pytest.approx(t["warm/recall@20"], abs=1e-9)


def test_cmclrec_learns_cold_users_from_features(synthetic_runs):
    """Only features can place a cold user in its block of 40 of the 160 items; ranking the block
    first gives a recall@20 of about 0.5, a block-blind ranking about 0.125."""
    sas = synthetic_runs["sasrec"][1]["test"]
    cm = synthetic_runs["cmclrec"][1]["test"]
    assert cm["cold/recall@20"] > 0.35, cm["cold/recall@20"]
    assert cm["cold/recall@20"] > sas["cold/recall@20"] + 0.15, (cm["cold/recall@20"], sas["cold/recall@20"])
    # warm users: the next items follow the cycle, which both heads learn from the sequence
    assert sas["warm/recall@20"] > 0.5 and cm["warm/recall@20"] > 0.5


@pytest.mark.parametrize("head", ["sasrec", "cmclrec"])
def test_export_reproduces_the_heads_evaluation_scores(synthetic_runs, tmp_path, monkeypatch, head):
    """`mmrec export RUN`: user . item from the exported files equals the score function the head's
    evaluation ranks with; top-K lists exclude each user's known items as evaluation does; a
    brand-new user with a cold test user's features gets that user's vector."""
    from types import SimpleNamespace

    from mmrec.evaluation.evaluator import DotScorer
    from mmrec.export import export
    from mmrec.models import head_class, sasrec
    run_dir, metrics = synthetic_runs[head]
    cfg, split, model = head_class(head).load_run(run_dir)
    captured = {}
    original = sasrec.evaluate_scores

    def spy(score_fn, *args, **kwargs):
        captured["fn"] = score_fn
        return original(score_fn, *args, **kwargs)
    monkeypatch.setattr(sasrec, "evaluate_scores", spy)
    evaluated = model.evaluate_part(SimpleNamespace(split=split), "test", cfg["eval"])
    assert evaluated["ndcg@20"] == pytest.approx(metrics["test"]["ndcg@20"], abs=1e-9)

    # brand-new users: one with a cold test user's raw features, one with an occupation the run
    # never saw, one without any feature, and one whose id is already a run user's
    cold_u, warm_u = int(split.users_of("test", "cold")[0]), int(split.users_of("test", "warm")[0])
    world = pd.read_parquet(cfg["data"]["path"] + "/users.parquet").set_index("user_id")
    raw = world.loc[str(split.user_ids[cold_u])]
    new = pd.DataFrame({"user_id": ["twin", "astronaut", "blank", str(split.user_ids[3])],
                        "occupation": [raw["occupation"], "astronaut", "", "job0"],
                        "age": [str(raw["age"]), "30", "", "30"]})
    new.to_csv(tmp_path / "new_users.csv", index=False)
    out = export(run_dir, None, tmp_path / "exp", top_k=5, user_table=tmp_path / "new_users.csv")

    U, V = np.load(out / "user_embeddings.npy"), np.load(out / "item_embeddings.npy")
    user_ids = (out / "user_ids.txt").read_text().split()
    item_ids = (out / "item_ids.txt").read_text().split()
    report = json.loads((out / "export_report.json").read_text())
    users = pd.read_csv(out / "users.csv", dtype={"user_id": str})
    n = split.n_users
    assert item_ids == list(split.item_ids) and V.shape == (split.n_items, 32)
    np.testing.assert_array_equal(V, model.item_table().numpy())
    assert user_ids[:n] == list(split.user_ids) and users["user_id"].tolist() == user_ids
    # the evaluation's own scores, for cold, warm and training users
    some = np.array([cold_u, warm_u, int(split.users_of("test", "cold")[1]), int(split.train_users()[0])])
    want = captured["fn"](torch.from_numpy(some)).numpy()
    np.testing.assert_allclose(U[some] @ V.T, want, rtol=1e-5, atol=1e-5)
    # ... and the test metrics, re-ranked from the files alone
    res = original(DotScorer(torch.from_numpy(U[:n]), torch.from_numpy(V)), split, "test", cfg["eval"])
    for k in ("recall@20", "ndcg@20", "cold/ndcg@20", "warm/ndcg@20"):
        assert res[k] == pytest.approx(metrics["test"][k], abs=1e-6), k

    # users in = exported + skipped, with reasons
    u = report["users"]
    skipped_blank = head == "cmclrec"               # plain SASRec ignores features: nobody to skip
    assert u["in"] == n + 4 and u["exported"] == n + (2 if skipped_blank else 3) == len(user_ids)
    assert u["in"] == u["exported"] + sum(u["skipped"].values())
    assert u["skipped_user_ids"]["already_a_run_user"] == [str(split.user_ids[3])]
    assert u["skipped_user_ids"].get("no_feature_values", []) == (["blank"] if skipped_blank else [])
    twin = user_ids.index("twin")
    np.testing.assert_allclose(U[twin], U[cold_u], rtol=1e-5, atol=1e-6)
    if head == "cmclrec":
        assert u["unseen_feature_values"] == {"occupation": 1, "age": 0}
        assert not np.allclose(U[cold_u], U[split.users_of("test", "cold")[1]])   # features matter
    row = users.set_index("user_id")
    assert row.loc["twin", "part"] == "new" and row.loc[str(split.user_ids[cold_u]), "part"] == "test_cold"
    assert row.loc[str(split.user_ids[warm_u]), "known_items"] == len(split.history(warm_u)) == 20
    assert row.loc[str(split.user_ids[warm_u]), "state"] == "sequence"
    assert row.loc["twin", "state"] == ("features" if head == "cmclrec" else "padding")

    # top-K: known items are never recommended; otherwise the order of u . v
    top = pd.read_parquet(out / "topk.parquet")
    assert report["topk"] == {"users": len(user_ids), "k": 5, "excluded": "each user's known items (as evaluation)"}
    for u_idx in (warm_u, int(split.train_users()[0]), cold_u):
        scores = U[u_idx] @ V.T
        known = split.history(u_idx)
        scores[known] = -np.inf
        got = top[top["user_id"] == str(split.user_ids[u_idx])]
        assert got["rank"].tolist() == [1, 2, 3, 4, 5]
        assert got["item_id"].tolist() == [str(split.item_ids[j]) for j in np.argsort(-scores, kind="stable")[:5]]
        assert not set(got["item_id"]) & set(split.item_ids[known].tolist())
