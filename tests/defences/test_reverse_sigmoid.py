"""Reverse sigmoid: the answers move from the posteriors by an amount that grows with beta
(none at beta = 0), exactly as Lee et al.'s formula says, and the top-1 label never changes."""

import math

import pytest
import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import QueryBatch, ReverseSigmoid


def answer(defence: ReverseSigmoid, posteriors: torch.Tensor) -> torch.Tensor:
    batch = QueryBatch.arriving(torch.zeros(len(posteriors), 3, 2, 2), posteriors, "c")
    defence.apply(batch)
    return batch.answers


def posteriors(n: int = 2000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, classes, generator=g)).softmax(-1)


def by_hand(p: list[float], beta: float, gamma: float) -> list[float]:
    moved = []
    for q in p:
        s = 1 / (1 + math.exp(-gamma * math.log(q / (1 - q))))
        moved.append(q - beta * (s - 0.5))
    return [m / sum(moved) for m in moved]


def test_matches_the_formula_by_hand():
    # p = (0.8, 0.2), gamma = 1.5: logit(0.8) = ln 4, 4^1.5 = 8, sigmoid = 8/9, r = 0.6 * 7/18
    # = 7/30; 0.8 - 7/30 = 17/30, 0.2 + 7/30 = 13/30, already summing to 1.
    got = answer(ReverseSigmoid(beta=0.6, gamma=1.5), torch.tensor([[0.8, 0.2]]))
    assert torch.allclose(got, torch.tensor([[17 / 30, 13 / 30]]), atol=1e-6)
    p = [0.7, 0.2, 0.1]
    got = answer(ReverseSigmoid(beta=0.3, gamma=2.0), torch.tensor([p]))
    assert torch.allclose(got, torch.tensor([by_hand(p, 0.3, 2.0)]), atol=1e-6)


def test_beta_sets_the_size_of_the_change_and_zero_is_the_identity():
    p = posteriors()
    assert torch.equal(answer(ReverseSigmoid(beta=0.0), p), p)
    changes = [
        (answer(ReverseSigmoid(beta=b), p) - p).abs().sum(-1).mean() for b in (0.2, 0.4, 0.8)
    ]
    assert 0.05 < changes[0] < changes[1] < changes[2]


@pytest.mark.parametrize("beta, gamma", [(0.6, 1.5), (0.9, 0.2), (2.0, 0.5)])
def test_the_top1_label_is_kept(beta, gamma):
    p = posteriors()
    got = answer(ReverseSigmoid(beta=beta, gamma=gamma), p)
    assert torch.equal(got.argmax(-1), p.argmax(-1))
    assert (got >= 0).all() and torch.allclose(got.sum(-1), torch.ones(len(p)), atol=1e-5)
    assert not torch.allclose(got, p, atol=1e-2)


def test_deceptive_settings_reorder_classes_without_the_swap():
    p = posteriors()
    raw = answer(ReverseSigmoid(beta=0.9, gamma=0.2, preserve_top1=False), p)
    assert (raw.argmax(-1) != p.argmax(-1)).any()  # what preserve_top1 repairs


@pytest.mark.parametrize(
    "options, message",
    [({"beta": -0.1}, "beta must be >= 0"), ({"gamma": 0.0}, "gamma must be > 0")],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        ReverseSigmoid(**options).check(10)
