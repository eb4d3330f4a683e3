"""Hand-computed masks, scores, OWL ratios and Wanda statistics."""

from __future__ import annotations

import pytest
import torch

from lm_eval_prune.engine import allocation
from lm_eval_prune.engine.masks import (
    apply_mask_,
    n_m_mask,
    outlier_percent,
    per_matrix_mask,
    per_row_mask,
    wanda_scores,
)
from lm_eval_prune.engine.stats import ColumnSqNorm

W = torch.tensor([[1.0, -2.0, 3.0, -4.0], [10.0, 20.0, -30.0, 40.0]])


def test_per_row_prunes_the_lowest_half_of_each_row():
    expected = torch.tensor([[True, True, False, False], [True, True, False, False]])
    assert torch.equal(per_row_mask(W.abs(), 0.5), expected)


def test_per_matrix_prunes_the_lowest_half_of_the_whole_matrix():
    expected = torch.tensor([[True, True, True, True], [False, False, False, False]])
    assert torch.equal(per_matrix_mask(W.abs(), 0.5), expected)


def test_wanda_uses_the_square_root_of_the_column_norm():
    # |w| = [1, 3], scaler = [4, 1]: with sqrt the scores are [2, 3] (prune column 0);
    # without sqrt they would be [4, 3] (prune column 1). So the sqrt changes per-row ranking too.
    weight = torch.tensor([[1.0, -3.0]])
    scores = wanda_scores(weight, torch.tensor([4.0, 1.0]))
    assert torch.equal(scores, torch.tensor([[2.0, 3.0]]))
    assert torch.equal(per_row_mask(scores, 0.5), torch.tensor([[True, False]]))


def test_exact_counts_and_stable_order_with_ties():
    ties = torch.ones(3, 10)
    row = per_row_mask(ties, 0.35)  # int(10 * 0.35) = 3 per row: the first three columns (stable)
    assert row.sum(dim=1).tolist() == [3, 3, 3]
    assert row[:, :3].all() and not row[:, 3:].any()
    matrix = per_matrix_mask(ties, 0.35)  # int(30 * 0.35) = 10 in flat order
    assert int(matrix.sum()) == 10
    assert matrix.flatten()[:10].all() and not matrix.flatten()[10:].any()


def test_zero_sparsity_prunes_nothing():
    assert not per_row_mask(W.abs(), 0.0).any()
    assert not per_matrix_mask(W.abs(), 0.0).any()


def test_n_m_groups():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 9.0, 8.0]])
    expected = torch.tensor([[False, True, False, True, True, True, False, False]])
    assert torch.equal(n_m_mask(scores, 2, 4), expected)
    four_eight = n_m_mask(torch.arange(16.0).flip(0).reshape(2, 8), 4, 8)
    assert four_eight.sum(dim=1).tolist() == [4, 4]
    assert torch.equal(four_eight[0], torch.tensor([False] * 4 + [True] * 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        n_m_mask(torch.ones(2, 6), 2, 4)


def test_apply_mask_leaves_no_negative_zero():
    weight = W.clone()
    apply_mask_(weight, per_row_mask(weight.abs(), 0.5))
    zeros = weight[weight == 0]
    assert zeros.numel() == 4
    assert not torch.signbit(zeros).any()


def test_outlier_percent_by_hand():
    # scores 1,1,1,1,1,1,1,1,1,11 : mean 2, M=5 -> threshold 10 -> one outlier of ten = 10 %
    scores = [torch.ones(1, 6), torch.tensor([[1.0, 1.0, 1.0, 11.0]])]
    assert outlier_percent(scores, 5.0) == pytest.approx(10.0)
    assert outlier_percent(scores, 6.0) == 0.0


def test_owl_ratios_by_hand():
    ratios = allocation.owl([1.0, 2.0, 3.0], sparsity=0.5, lam=0.1)
    assert ratios == pytest.approx([0.6, 0.5, 0.4])  # scaled [0, .1, .2], mean .1
    assert sum(ratios) / 3 == pytest.approx(0.5)
    assert max(ratios) - min(ratios) == pytest.approx(0.2)  # spread 2 * lambda
    assert allocation.owl([5.0, 5.0], 0.3, 0.08) == [0.3, 0.3]  # no spread: uniform, not NaN


def test_owl_clamps_non_positive_like_the_reference():
    ratios = allocation.owl([0.0, 10.0], sparsity=0.05, lam=0.2)  # 0.05 + 0.2 and 0.05 - 0.2 -> clamp
    assert ratios == pytest.approx([0.25, 0.01])


def test_column_norm_is_a_running_mean_over_sequences():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 3)  # 6 sequences of 5 tokens, 3 columns
    one_by_one, batched = ColumnSqNorm(3, torch.device("cpu")), ColumnSqNorm(3, torch.device("cpu"))
    for seq in x:
        one_by_one.add_batch(seq.unsqueeze(0))
    for chunk in x.split(4):
        batched.add_batch(chunk)
    expected = (x**2).sum(dim=(0, 1)) / 6
    assert torch.allclose(one_by_one.scaler, expected, rtol=1e-6)
    assert torch.allclose(batched.scaler, expected, rtol=1e-6)
    assert one_by_one.nsamples == batched.nsamples == 6
