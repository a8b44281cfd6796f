"""The rating-ranking (Eq. 1) and alignment (Eq. 2) losses against plain per-example references."""
import math

import numpy as np
import pytest
import torch

from mmrec.losses import AlignmentLoss, PositiveLookup, RatingRankingLoss


def reference_rating_loss(U, V, users, items, known, temperature, dup, filt):
    B = len(users)
    total = 0.0
    for p in range(B):
        def drop_row(q):
            if q == p:
                return False
            same = items[q] == items[p] or users[q] == users[p]
            return (dup and same) or (filt and (users[p], items[q]) in known)

        def drop_col(q):
            if q == p:
                return False
            same = items[q] == items[p] or users[q] == users[p]
            return (dup and same) or (filt and (users[q], items[p]) in known)

        row = [U[p] @ V[q] / temperature for q in range(B) if not drop_row(q)]
        col = [U[q] @ V[p] / temperature for q in range(B) if not drop_col(q)]
        pos = U[p] @ V[p] / temperature
        total = total - (pos - torch.logsumexp(torch.stack(row), 0)) - (pos - torch.logsumexp(torch.stack(col), 0))
    return total / B


@pytest.mark.parametrize("dup,filt,temperature", [(False, False, 1.0), (True, False, 1.0),
                                                  (True, True, 0.5), (False, True, 2.0)])
def test_rating_loss_and_gradients_match_reference(dup, filt, temperature):
    torch.manual_seed(0)
    users = [0, 1, 2, 1, 3, 4]          # user 1 twice
    items = [10, 11, 12, 13, 10, 14]    # item 10 twice
    known = {(0, 10), (1, 11), (2, 12), (1, 13), (3, 10), (4, 14), (0, 12), (2, 14), (4, 11)}
    U = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    V = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    lookup = PositiveLookup(np.array(sorted(known)), n_items=20)
    loss_fn = RatingRankingLoss(temperature, mask_duplicates=dup, false_negative_filter=filt,
                                positives=lookup)
    got = loss_fn(U, V, torch.tensor(users), torch.tensor(items))
    gu, gv = torch.autograd.grad(got, (U, V))
    want = reference_rating_loss(U, V, users, items, known, temperature, dup, filt)
    wu, wv = torch.autograd.grad(want, (U, V))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert torch.allclose(gu, wu, atol=1e-10) and torch.allclose(gv, wv, atol=1e-10)


def test_plain_loss_is_symmetric_cross_entropy():
    # No masking: Eq. 1 equals CE over rows plus CE over columns of U V^T.
    torch.manual_seed(1)
    U, V = torch.randn(8, 4), torch.randn(8, 4)
    S = U @ V.T
    want = torch.nn.functional.cross_entropy(S, torch.arange(8)) + torch.nn.functional.cross_entropy(S.T, torch.arange(8))
    got = RatingRankingLoss(1.0, mask_duplicates=False)(U, V, torch.arange(8), torch.arange(8) + 100)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_filtering_changes_the_loss_only_where_known_positives_are_in_batch():
    torch.manual_seed(2)
    U, V = torch.randn(4, 3), torch.randn(4, 3)
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    none = PositiveLookup(np.array([[0, 5], [1, 6], [2, 7], [3, 8]]), 10)
    extra = PositiveLookup(np.array([[0, 5], [1, 6], [2, 7], [3, 8], [0, 7]]), 10)
    base = RatingRankingLoss(1.0, True, False)(U, V, users, items)
    f_none = RatingRankingLoss(1.0, True, True, none)(U, V, users, items)
    f_extra = RatingRankingLoss(1.0, True, True, extra)(U, V, users, items)
    assert float(f_none) == pytest.approx(float(base))
    assert float(f_extra) < float(base)   # a removed negative can only lower the loss


def reference_alignment(z, present, items):
    B, C, _ = z.shape
    losses = []
    for j in range(B):
        pos = [z[j, c] @ z[j, c2] for c in range(C) for c2 in range(c + 1, C) if present[j, c] and present[j, c2]]
        if not pos:
            continue
        den = [z[j, c] @ z[k, c2] for k in range(B) for c in range(C) for c2 in range(C)
               if present[j, c] and present[k, c2] and (k == j or items[k] != items[j])]
        losses.append(torch.logsumexp(torch.stack(den), 0) - torch.logsumexp(torch.stack(pos), 0))
    return torch.stack(losses).mean()


def test_alignment_loss_matches_reference_with_missing_fields_and_duplicates():
    torch.manual_seed(3)
    z = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    items = torch.tensor([1, 2, 3, 4, 1])      # item 1 twice
    got = AlignmentLoss()(z, present, items)
    want = reference_alignment(z, present, items.tolist())
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    g1, = torch.autograd.grad(got, z)
    g2, = torch.autograd.grad(want, z)
    assert torch.allclose(g1, g2, atol=1e-10)


def test_alignment_loss_is_log_ratio_for_two_fields_two_items():
    # Hand check of Eq. 2 with C=2, B=2 (no duplicates, all present).
    z = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[0.0, 1.0], [0.0, 2.0]]])
    e = math.exp
    # item 0: numerator e^{z0^1.z0^2} = e^0.5; Z = sum over j' in {0,1}, c, c' of e^{z0^c . z_j'^c'}
    Z0 = e(1.0) + e(0.5) + e(0.5) + e(0.25) + 4 * e(0.0)
    Z1 = e(1.0) + e(2.0) + e(2.0) + e(4.0) + 4 * e(0.0)
    want = 0.5 * ((math.log(Z0) - 0.5) + (math.log(Z1) - 2.0))
    got = AlignmentLoss()(z, torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 1]))
    assert float(got) == pytest.approx(want, rel=1e-6)
