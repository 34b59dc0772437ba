"""Detection metrics on hand-computed cases; OOD is the positive class, flagged = score > t."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.evaluation.ood_metrics import (
    ScoresBySet,
    threshold_at_tnr,
    tpr_at_tnr,
    tpr_tnr_at_threshold,
)

IN = torch.arange(1, 21) / 10  # 0.1, 0.2, ..., 2.0
OUT = torch.tensor([0.5, 1.85, 1.95, 2.5, 3.0])


def test_tpr_tnr_at_a_threshold_by_hand():
    # flagged: in-scores above 1.5 are 1.6..2.0 (5 of 20); out-scores above 1.5: 4 of 5
    assert tpr_tnr_at_threshold(IN, OUT, 1.5) == pytest.approx((4 / 5, 15 / 20))
    # a score equal to the threshold passes: P(OOD) = 0.5 is not flagged at 0.5
    assert tpr_tnr_at_threshold(torch.tensor([0.5]), torch.tensor([0.5, 0.6]), 0.5) == (0.5, 1.0)


def test_tpr_at_tnr95_by_hand():
    # 19 of 20 in-scores must pass: threshold = the 19th smallest, 1.9; out above 1.9: 3 of 5
    tpr, tnr, threshold = tpr_at_tnr(IN, OUT, 0.95)
    assert threshold == pytest.approx(1.9)
    assert (tpr, tnr) == pytest.approx((3 / 5, 19 / 20))


def test_ties_and_extremes():
    scores_in = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # TNR 50% asks 2 passes; the tie at 0 lets 3 pass: reached TNR 75%, out 0 is not flagged
    assert tpr_at_tnr(scores_in, torch.tensor([0.0, 0.5]), 0.5) == (0.5, 0.75, 0.0)
    assert tpr_at_tnr(scores_in, torch.tensor([0.0, 0.5]), 0.0)[:2] == (1.0, 0.0)  # flag all
    assert tpr_at_tnr(scores_in, torch.tensor([1.0, 2.0]), 1.0) == (0.5, 1.0, 1.0)
    assert threshold_at_tnr(torch.arange(100.0), 0.07) == 6.0  # 0.07 * 100 is 7.000000000000001


def test_matches_sklearn_roc_on_continuous_scores():
    gen = torch.Generator().manual_seed(0)
    scores_in, scores_out = torch.randn(997, generator=gen), torch.randn(501, generator=gen) + 1
    labels = np.r_[np.zeros(997), np.ones(501)]
    fpr, tpr, _ = roc_curve(labels, np.r_[scores_in, scores_out], drop_intermediate=False)
    for tnr in (0.5, 0.9, 0.95, 0.99):
        expected = tpr[fpr <= 1 - tnr + 1e-12].max()
        assert tpr_at_tnr(scores_in, scores_out, tnr)[0] == pytest.approx(expected)


def test_empty_sets_and_bad_targets_are_one_line_errors():
    with pytest.raises(ConfigError, match="an out-of-distribution test set is empty"):
        tpr_tnr_at_threshold(IN, torch.tensor([]), 0.5)
    with pytest.raises(ConfigError, match="the in-distribution test set is empty"):
        tpr_at_tnr(torch.tensor([]), OUT, 0.95)
    with pytest.raises(ConfigError, match=r"target TNR must be in \[0, 1\]"):
        tpr_at_tnr(IN, OUT, 95)


def test_scores_by_set_splits_mixed_batches():
    scores = ScoresBySet()
    scores.add(torch.tensor([0, 1, 0, 2]), torch.tensor([0.1, 0.9, 0.2, 0.8]))
    scores.add(torch.tensor([1]), torch.tensor([0.7]))
    got = scores.pop()
    assert torch.equal(got["in"], torch.tensor([0.1, 0.2]))
    assert torch.equal(got["out"], torch.tensor([0.9, 0.7]))
    assert torch.equal(got["out_test"], torch.tensor([0.8]))
    scores.add(torch.tensor([0]), torch.tensor([0.1]))
    with pytest.raises(ConfigError, match="at least one out-of-distribution test set"):
        scores.pop()
