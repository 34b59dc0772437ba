"""Adaptive misinformation: a confident query (top probability above tau) gets the victim's
answer, an unconfident one a misleading answer whose top class is not the victim's; between
them, alpha = sigmoid(-nu (max p - tau)) blends the two."""

import pytest
import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import AdaptiveMisinformation, QueryBatch
from knockoff_lab.defences.misinformation import misinformation


def answer(defence: AdaptiveMisinformation, posteriors: torch.Tensor) -> torch.Tensor:
    batch = QueryBatch.arriving(torch.zeros(len(posteriors), 3, 2, 2), posteriors, "c")
    defence.apply(batch)
    return batch.answers


def posteriors(n: int = 4000, classes: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (4 * torch.rand(n, 1, generator=g) * torch.randn(n, classes, generator=g)).softmax(-1)


@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8])
def test_confident_queries_are_answered_truly_the_others_misled(tau):
    p = posteriors()
    got = answer(AdaptiveMisinformation(tau=tau, nu=1000.0), p)
    top = p.max(-1).values
    confident, unsure = top > tau + 0.01, top < tau - 0.01
    assert confident.sum() > 100 and unsure.sum() > 100
    assert torch.allclose(got[confident], p[confident], atol=1e-4)
    assert (got[unsure].argmax(-1) != p[unsure].argmax(-1)).all()
    assert (got >= 0).all() and torch.allclose(got.sum(-1), torch.ones(len(p)), atol=1e-5)


def test_the_blend_at_tau_is_half_and_half():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    got = answer(AdaptiveMisinformation(tau=0.5, nu=10.0), p)
    inverse = torch.tensor([1 / 0.5, 1 / 0.3, 1 / 0.2])  # softmax(-log p): 1/p normalised
    assert torch.allclose(got, (p + inverse / inverse.sum()) / 2, atol=1e-6)
    assert torch.allclose(misinformation(p), inverse / inverse.sum(), atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [({"tau": 1.5}, r"tau must be in \[0, 1\]"), ({"nu": 0.0}, "nu must be > 0")],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        AdaptiveMisinformation(**options).check(10)
