"""The epoch order of training pairs, plain and grouped by item (`train.pairs_per_item`)."""
import numpy as np
import pytest

from mmrec.config import ConfigError
from mmrec.data.batches import EpochSampler, PairCollator, PairDataset
from mmrec.training.trainer import make_sampler


def _pairs(n_pairs=500, n_items=37, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.zipf(1.5, size=n_pairs) % n_items        # skewed: some items have many pairs
    return np.stack([rng.integers(0, 50, n_pairs), items], 1)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_grouped_order_is_a_permutation_of_item_runs(k):
    pairs = _pairs()
    items = pairs[:, 1]
    order, seeds = EpochSampler(len(pairs), 3, groups=items, group_size=k).order()
    assert sorted(order.tolist()) == list(range(len(pairs)))      # every pair once per epoch
    assert len(seeds) == len(pairs)
    # Cut the order where the item changes. An item has ceil(count / k) runs of <= k; two of
    # them may land side by side, so a maximal run can be longer than k, but rarely: nearly all
    # runs stay separate, which an order not cut at k (one run per item) could not reach.
    it = items[order]
    runs = np.split(it, np.flatnonzero(it[1:] != it[:-1]) + 1)
    counts = np.bincount(items)
    expected = int(np.sum(-(-counts // k)))
    per_item = np.bincount([r[0] for r in runs], weights=[len(r) for r in runs], minlength=len(counts))
    assert np.array_equal(per_item, counts)
    assert 0.85 * expected <= len(runs) <= expected
    # batches of 8k pairs hold at most ~8 + boundary distinct items, far fewer than 8k
    B = 8 * k
    distinct = [len(np.unique(it[s:s + B])) for s in range(0, len(it) - B + 1, B)]
    assert np.mean(distinct) < 0.6 * B


def test_grouped_order_depends_on_seed_and_epoch_only():
    pairs = _pairs()
    a = EpochSampler(len(pairs), 5, groups=pairs[:, 1], group_size=4)
    b = EpochSampler(len(pairs), 5, groups=pairs[:, 1], group_size=4)
    a.set_epoch(2), b.set_epoch(2)
    assert np.array_equal(a.order()[0], b.order()[0]) and np.array_equal(a.order()[1], b.order()[1])
    b.set_epoch(3)
    assert not np.array_equal(a.order()[0], b.order()[0])


def test_group_size_one_keeps_the_plain_order():
    pairs = _pairs()
    plain = EpochSampler(len(pairs), 9).order()[0]
    rng = np.random.default_rng([9, 0])
    assert np.array_equal(plain, rng.permutation(len(pairs)))
    assert np.array_equal(EpochSampler(len(pairs), 9, groups=pairs[:, 1], group_size=1).order()[0], plain)


def test_grouped_batch_encodes_each_item_once():
    pairs = _pairs()
    ds = PairDataset(pairs)
    sampler = make_sampler(ds, {"pairs_per_item": 4, "batch_size": 32}, 0, "mmrec")
    keys = list(sampler)[:32]
    collate = PairCollator(lambda items, part, seeds: {"items": items, "seeds": seeds})
    batch = collate([ds[k] for k in keys])
    unique = batch["content"]["items"]
    assert len(unique) < 32 and np.array_equal(unique[batch["item_slot"].numpy()], batch["item_idx"].numpy())


def test_make_sampler_rejects_bad_group_size():
    ds = PairDataset(_pairs())
    with pytest.raises(ConfigError, match="divide train.batch_size=30"):
        make_sampler(ds, {"pairs_per_item": 4, "batch_size": 30}, 0, "mmrec")
    with pytest.raises(ConfigError, match="must be >= 1"):
        make_sampler(ds, {"pairs_per_item": 0, "batch_size": 30}, 0, "mmrec")

    class NoItems(list):
        pass
    with pytest.raises(ConfigError, match="head 'clcrec' trains on NoItems"):
        make_sampler(NoItems([1, 2]), {"pairs_per_item": 2, "batch_size": 2}, 0, "clcrec")
