"""Sampling-bias (logQ) correction, mixed negatives and collaborative distillation (issue 16).

The losses are checked against plain per-example references; the negatives' draw against the
properties that make runs exact (partition-invariant, a function of the pairs' seeds); the
distillation against its promise that nothing but training reads an ID embedding.
"""
import shutil

import numpy as np
import pytest
import torch

from mmrec.data.batches import PairCollator, draw_negatives, negatives_per_pair
from mmrec.losses import DistillationLoss, PositiveLookup, RatingRankingLoss, SamplingFrequencies
from tests.resuming import interrupted_copy

# the training pairs the frequencies come from (user, item): user 1 and item 10 are popular
TRAIN = np.array([(0, 10), (1, 10), (1, 11), (2, 12), (1, 13), (3, 10), (4, 14), (0, 12), (2, 14),
                  (4, 11), (1, 15), (5, 10), (5, 16)])
KNOWN = {tuple(p) for p in TRAIN.tolist()}
POOL = np.unique(TRAIN[:, 1])


def expected_item(j, N, M):
    return N * (TRAIN[:, 1] == j).sum() / len(TRAIN) + (M / len(POOL) if j in POOL else 0.0)


def expected_user(u, N):
    return N * (TRAIN[:, 0] == u).sum() / len(TRAIN)


def reference(U, V, Vn, users, items, negs, temperature, dup, filt, logq, in_batch=True, i2u=True):
    """Per-example Eq. 1 with the optional corrections, written as plainly as possible."""
    B, M = len(users), len(negs)
    total = 0.0
    for p in range(B):
        def score(u_vec, v_vec, item=None, user=None):
            s = u_vec @ v_vec / temperature
            if logq and item is not None:
                s = s - np.log(expected_item(item, B, M))
            if logq and user is not None:
                s = s - np.log(expected_user(user, B))
            return s

        def dropped(q, row):
            if q == p:
                return False
            same = items[q] == items[p] or users[q] == users[p]
            known = (users[p], items[q]) in KNOWN if row else (users[q], items[p]) in KNOWN
            return (dup and same) or (filt and known)

        if in_batch:
            row = [score(U[p], V[q], item=items[q]) for q in range(B) if not dropped(q, True)]
            row += [score(U[p], Vn[m], item=negs[m]) for m in range(M)
                    if negs[m] != items[p] and not (filt and (users[p], negs[m]) in KNOWN)]
            pos_row = score(U[p], V[p], item=items[p])
        else:   # the positive against the uniform draws alone: no sampling bias, no shift
            row = [score(U[p], V[p])] + [score(U[p], Vn[m]) for m in range(M)
                                         if negs[m] != items[p] and not (filt and (users[p], negs[m]) in KNOWN)]
            pos_row = score(U[p], V[p])
        total = total - (pos_row - torch.logsumexp(torch.stack(row), 0))
        if i2u:
            col = [score(U[q], V[p], user=users[q]) for q in range(B) if not dropped(q, False)]
            pos_col = score(U[p], V[p], user=users[p])
            total = total - (pos_col - torch.logsumexp(torch.stack(col), 0))
    return total / B


@pytest.mark.parametrize("dup,filt,logq,n_neg,temperature,in_batch,i2u", [
    (False, False, True, 0, 1.0, True, True), (True, False, True, 0, 0.5, True, True),
    (True, True, True, 0, 1.0, True, True), (True, False, False, 5, 1.0, True, True),
    (False, True, False, 5, 2.0, True, True), (True, True, True, 5, 0.5, True, True),
    (True, False, True, 5, 1.0, True, True), (True, False, True, 0, 1.0, True, False),
    (True, True, True, 5, 1.0, False, True), (False, False, True, 5, 0.5, False, False)])
def test_rating_loss_with_logq_and_mixed_negatives_matches_reference(dup, filt, logq, n_neg, temperature,
                                                                     in_batch, i2u):
    torch.manual_seed(0)
    users = [0, 1, 2, 1, 3, 4]          # user 1 twice
    items = [10, 11, 12, 13, 10, 14]    # item 10 twice
    negs = [10, 15, 16, 12, 15][:n_neg]   # 10 and 12 are some rows' positives; 15 drawn twice
    U = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    V = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    Vn = torch.randn(max(n_neg, 1), 5, dtype=torch.float64, requires_grad=True)[:n_neg]
    freq = SamplingFrequencies(TRAIN, n_users=8, n_items=20, negative_pool=POOL) if logq else None
    loss_fn = RatingRankingLoss(temperature, mask_duplicates=dup, false_negative_filter=filt,
                                positives=PositiveLookup(TRAIN, 20), frequencies=freq,
                                in_batch_negatives=in_batch, item_to_user=i2u)
    got = loss_fn(U, V, torch.tensor(users), torch.tensor(items),
                  Vn if n_neg else None, torch.tensor(negs) if n_neg else None)
    want = reference(U, V, Vn, users, items, negs, temperature, dup, filt, logq, in_batch, i2u)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    inputs = (U, V, Vn) if n_neg else (U, V)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_logq_shifts_against_popular_items():
    """Equal scores: without the correction the popular item's pair and the rare one's lose the
    same; with it, a popular in-batch negative weighs less, so the rare item's pair loses less."""
    U = torch.ones(2, 1, dtype=torch.float64)
    V = torch.ones(2, 1, dtype=torch.float64)
    users, items = torch.tensor([0, 2]), torch.tensor([10, 16])   # item 10: 4 pairs; item 16: 1
    freq = SamplingFrequencies(TRAIN, 8, 20)
    plain = RatingRankingLoss(mask_duplicates=False)
    fixed = RatingRankingLoss(mask_duplicates=False, frequencies=freq)
    per_pair = []
    for fn in (plain, fixed):
        per_pair.append([fn(U[[p, 1 - p]], V[[p, 1 - p]], users[[p, 1 - p]], items[[p, 1 - p]]).item()
                         for p in (0, 1)])
    assert per_pair[0][0] == pytest.approx(per_pair[0][1])
    # the rare item's row has the popular item as its negative, which the correction discounts
    row = lambda fn, p: torch.nn.functional.cross_entropy(   # noqa: E731
        (U[[p]] @ V.T - (freq.log_items(items, 2) if fn is fixed else 0)), torch.tensor([p])).item()
    assert row(fixed, 1) < row(plain, 1) and row(fixed, 0) > row(plain, 0)


def test_frequencies_are_expected_column_counts():
    freq = SamplingFrequencies(TRAIN, 8, 20, negative_pool=POOL)
    N, M = 64, 32
    got = freq.log_items(torch.tensor([10, 16]), N, M).exp()
    assert got[0].item() == pytest.approx(N * 4 / 13 + M / 7)
    assert got[1].item() == pytest.approx(N * 1 / 13 + M / 7)
    assert freq.log_users(torch.tensor([1]), N).exp().item() == pytest.approx(N * 4 / 13)


def test_negative_counts_are_partition_invariant():
    for B, K, N in [(6, 4, 2), (48, 128, 4), (128, 128, 2), (5, 3, 3), (64, 0, 2)]:
        one = negatives_per_pair(N * B, N * K)
        parts = np.concatenate([negatives_per_pair(B, K) for _ in range(N)])
        assert one.sum() == N * K and negatives_per_pair(B, K).sum() == K
        assert np.array_equal(one, parts), (B, K, N)


def _fake_collate(items, mode, seeds):
    return {"f": {"item": torch.from_numpy(np.asarray(items)), "seed": torch.from_numpy(np.asarray(seeds))}}


def test_mixed_negatives_n_processes_equal_one_with_the_global_batch():
    """The negatives of N collators of B pairs (K each) are those of one collator of N*B (N*K)."""
    rng = np.random.default_rng(0)
    samples = [(int(u), int(i), int(s)) for u, i, s in
               zip(rng.integers(0, 50, 24), rng.integers(0, 30, 24), rng.integers(0, 2 ** 62, 24))]
    pool = np.arange(100, 160)
    one = PairCollator(_fake_collate, negatives=20, pool=pool)(samples)
    parts = [PairCollator(_fake_collate, negatives=5, pool=pool)(samples[r * 6:(r + 1) * 6]) for r in range(4)]
    assert torch.equal(one["neg_idx"], torch.cat([p["neg_idx"] for p in parts]))
    assert len(one["neg_idx"]) == 20 and set(one["neg_idx"].tolist()) <= set(pool.tolist())
    # each negative's content is fetched through its slot, with a clip seed of its own
    enc = one["content"]["f"]["item"]
    assert torch.equal(enc[one["neg_slot"]], one["neg_idx"])
    assert torch.equal(enc[one["item_slot"]], one["item_idx"])
    # the same pairs draw the same negatives again (resume); other seeds draw others
    again = PairCollator(_fake_collate, negatives=20, pool=pool)(samples)
    assert torch.equal(again["neg_idx"], one["neg_idx"])
    other = PairCollator(_fake_collate, negatives=20, pool=pool)([(u, i, s + 1) for u, i, s in samples])
    assert not torch.equal(other["neg_idx"], one["neg_idx"])


def test_negatives_are_uniform_over_the_pool():
    pool = np.arange(10) * 3
    counts = np.full(4000, 5)
    items, _ = draw_negatives(np.arange(4000), counts, pool)
    hist = np.bincount(items // 3, minlength=10)
    expected = 20000 / 10
    assert hist.sum() == 20000 and set(np.unique(items)) == set(pool.tolist())
    assert np.all(np.abs(hist - expected) < 5 * np.sqrt(expected))   # 5 sigma of a binomial


def test_an_item_both_positive_and_negative_is_encoded_once():
    samples = [(0, 5, 11), (1, 6, 12)]
    batch = PairCollator(_fake_collate, negatives=40, pool=np.array([5, 6, 7]))(samples)
    enc = batch["content"]["f"]["item"]
    assert sorted(enc.tolist()) == [5, 6, 7]                  # 42 slots, 3 encodings
    # a positive's content keeps the positive's own sample seed (as without negatives)
    assert batch["content"]["f"]["seed"][enc == 5].item() == 11


@pytest.mark.parametrize("cosine", [False, True])
def test_distillation_loss_matches_reference(cosine):
    torch.manual_seed(1)
    C = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    E = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    items = [3, 7, 3, 9, 1]            # item 3 twice: not its own negative
    got = DistillationLoss(temperature=0.5, cosine=cosine)(C, E, torch.tensor(items))

    def sim(a, b):
        return (a @ b / (a.norm() * b.norm()) if cosine else a @ b) / 0.5
    total = 0.0
    for p in range(5):
        keep = [q for q in range(5) if q == p or items[q] != items[p]]
        c2e = torch.stack([sim(C[p], E[q]) for q in keep])
        e2c = torch.stack([sim(E[p], C[q]) for q in keep])
        total = total - (sim(C[p], E[p]) - torch.logsumexp(c2e, 0)) / 2 \
            - (sim(E[p], C[p]) - torch.logsumexp(e2c, 0)) / 2
    want = total / 5
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for g, w in zip(torch.autograd.grad(got, (C, E)), torch.autograd.grad(want, (C, E))):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------- end to end (tiny)
SAMPLING = ["loss.logq_correction=true", "loss.mixed_negatives=32", "distill.id_embedding=true",
            "distill.rho=0.5", "distill.weight=0.5", "train.epochs=2", "train.max_steps_per_epoch=6",
            "train.checkpoint_every_steps=3", "train.keep_checkpoints=100"]


@pytest.fixture(scope="module")
def sampling_run(tmp_path_factory, tiny_overrides):
    from mmrec.config import load_config
    from mmrec.training.trainer import train
    run_dir = tmp_path_factory.mktemp("sampling") / "run"
    cfg = load_config("configs/tiny.yaml", tiny_overrides + SAMPLING + [f"run_dir={run_dir}"])
    return train(cfg)


def test_a_run_with_every_piece_learns_and_reports_extra_items(sampling_run):
    run_dir, metrics = sampling_run
    train = metrics["history"][0]["train"]
    assert {"loss_rating", "loss_distill", "items_encoded", "extra_items_encoded"} <= set(train)
    # 32 uniform draws from ~1400 training items: nearly all are items the batch lacked
    assert 20 < train["extra_items_encoded"] <= 32
    # the positives' distinct items (at most the 64 pairs) plus those
    assert train["extra_items_encoded"] + 32 < train["items_encoded"] <= 64 + train["extra_items_encoded"]
    assert metrics["history"][1]["train"]["loss_distill"] < train["loss_distill"]


def test_resume_mid_epoch_with_mixed_negatives_and_distillation_is_exact(sampling_run, tmp_path):
    from mmrec.training.trainer import train
    from mmrec.config import load_config
    run_dir, metrics = sampling_run
    resumed = tmp_path / "resumed"
    state = interrupted_copy(run_dir, resumed, step=3)
    assert state["epoch"] == 0 and state["batch"] == 3              # in the middle of epoch 1
    _, again = train(load_config(resumed / "config.yaml"), resume_dir=resumed)
    assert again["val"] == metrics["val"] and again["test"] == metrics["test"]
    assert [h["train"] for h in again["history"]][1] == [h["train"] for h in metrics["history"]][1]


def test_evaluation_and_export_never_read_the_id_embedding(sampling_run, tmp_path):
    """The run's ID table replaced by NaN: evaluation and export give the very same numbers."""
    from safetensors.torch import load_file, save_file
    from mmrec.data.readers import read_ml100k
    from mmrec.export import evaluate_run, export
    run_dir, _ = sampling_run
    poisoned = tmp_path / "poisoned"
    shutil.copytree(run_dir, poisoned)
    weights = load_file(str(run_dir / "model/model.safetensors"))
    assert "item_id_embedding.weight" in weights
    weights["item_id_embedding.weight"] = torch.full_like(weights["item_id_embedding.weight"], float("nan"))
    save_file(weights, str(poisoned / "model/model.safetensors"))
    shutil.rmtree(poisoned / "checkpoints")
    assert evaluate_run(poisoned) == evaluate_run(run_dir)
    items = tmp_path / "items.parquet"
    read_ml100k({}).items.iloc[:80].to_parquet(items, index=False)
    a = np.load(export(run_dir, items, tmp_path / "a") / "item_embeddings.npy")
    b = np.load(export(poisoned, items, tmp_path / "b") / "item_embeddings.npy")
    assert np.isfinite(b).all() and np.array_equal(a, b)
    # ... while training does read it: the loss of a poisoned model is NaN
    from mmrec.models import load_run
    from mmrec.data.pipeline import prepare
    from mmrec.data.split import Split
    cfg, split, model = load_run(poisoned)
    model.train()
    prepared = prepare(cfg, Split.load(poisoned / "split.npz"))
    from mmrec.data.batches import PairDataset
    ds = PairDataset(split.train_pairs())
    collate = PairCollator(prepared.collate, 8, np.unique(split.train_pairs()[:, 1]))
    batch = collate([ds[(i, i)] for i in range(32)])
    model.distill_rho = 0.0
    assert torch.isnan(model(batch)["loss"])


def test_in_batch_negatives_off_needs_uniform_negatives():
    from mmrec.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"loss.in_batch_negatives=false .*loss.mixed_negatives > 0"):
        load_config("configs/tiny.yaml", ["loss.in_batch_negatives=false"])
    cfg = load_config("configs/tiny.yaml", ["loss.in_batch_negatives=false", "loss.mixed_negatives=8"])
    assert cfg["loss"]["in_batch_negatives"] is False
