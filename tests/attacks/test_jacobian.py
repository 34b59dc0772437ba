"""Jacobian-based augmentation: a synthetic query is its source moved by exactly
lambda * sign(d logit_answered / dx) (checked on a linear surrogate, where that gradient is a row
of the weight matrix), clipped to the pool normalisation's range, with lambda's sign flipping
every tau rounds; run through the transfer set, every synthetic image is an API query and the
budget is exact."""

import numpy as np
import pytest
import torch
from torch import nn

from knockoff_lab.attacks import JacobianAugmentation, Seen
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import CONFIGS

POOL = [0.3 * torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(20)]
CLASSES = torch.arange(10) % 5


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()


def seen(r: int, net: nn.Module, indices=None, images=None) -> Seen:
    indices = np.arange(10) if indices is None else indices
    return Seen(POOL, indices, images, torch.eye(5)[CLASSES], net, torch.device("cpu"), r, 0)


def test_queries_move_by_lambda_times_the_sign_of_the_answered_logits_gradient():
    net = linear()
    strategy = JacobianAugmentation(step=0.1, tau=3)
    moved = strategy.propose(seen(1, net), 10).images  # all 10 answered queries are sources
    sources = torch.stack(POOL[:10])
    gradient_sign = net[1].weight[CLASSES].sign().view(10, 3, 4, 4)  # d(Wx + b)_c / dx = W_c
    assert torch.allclose(moved - sources, 0.1 * gradient_sign, atol=1e-6)
    assert ((moved - sources).abs() > 0.09).all()  # every pixel moved (no zero gradient here)
    flipped = strategy.propose(seen(4, net), 10).images  # augmentation round 4 > tau: -lambda
    assert torch.allclose(flipped - sources, -0.1 * gradient_sign, atol=1e-6)
    assert [strategy.lam(r) for r in range(1, 8)] == [0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]


def test_t_rnd_climbs_the_logit_of_a_random_other_class_without_flipping():
    net = linear()
    strategy = JacobianAugmentation(step=0.1, tau=3, target="random")
    sources, rows = torch.stack(POOL[:10]), net[1].weight.view(5, 3, 4, 4).sign()
    targets = []
    for r in (1, 4):  # round 4 would flip JbDA's step; T-RND's stays +lambda
        moved = strategy.propose(seen(r, net), 10).images
        steps = ((moved - sources) / 0.1).round()
        # each query's step is the gradient sign of exactly one class's logit (a row of W)
        match = (steps[:, None] == rows[None]).flatten(2).all(-1)
        assert (match.sum(-1) == 1).all()
        targets.append(match.float().argmax(-1))
    assert all((t != CLASSES).all() for t in targets)  # never the answered class
    assert len(torch.cat(targets).unique()) == 5  # every other class gets drawn


def test_synthetic_sources_and_clipping_to_the_normalised_range():
    net = linear()
    high = ((1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    images = high.expand(10, 3, 4, 4).clone()  # synthetic queries at the top of the range
    moved = JacobianAugmentation(step=0.5).propose(seen(2, net, np.full(10, -1), images), 10).images
    up = (net[1].weight[CLASSES].view(10, 3, 4, 4) > 0).expand_as(moved)
    assert torch.allclose(moved[up], images[up])  # a step up is clipped at 1 in pixel space
    assert torch.allclose(moved[~up], images[~up] - 0.5)


def test_round_zero_is_a_seed_set_of_pool_indices():
    queries = JacobianAugmentation().propose(seen(0, linear(), np.empty(0, np.int64)), 8)
    assert queries.images is None and len(set(queries.indices.tolist())) == 8


def test_every_synthetic_image_is_a_query_and_the_budget_is_exact(victim_ckpt, tmp_path):
    from knockoff_lab.pipeline.cli import cli_main

    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
            "--config",
            str(CONFIGS / "attacks/jbda.yaml"),
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.attack.init_args.rounds",
            "3",
            "--data.init_args.attack.init_args.seed_fraction",
            "0.3334",
            "--data.init_args.epochs_per_round",
            "1",
            "--data.init_args.budget",
            "90",
            "--data.init_args.pool.init_args.size",
            "200",
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
        ]
    )
    data = cli.datamodule
    assert data.sizes == [30, 30, 30] and data.rounds_done == 3
    assert (data.indices[:30] >= 0).all() and (data.indices[30:] == -1).all()
    assert data.images.shape == (60, 3, 16, 16)
    assert np.load(data.round(2).folder / "images.npy").shape == (30, 3, 16, 16)
    record = data.api.record(data.client)
    assert (record.asked, record.answered) == (90, 90)
    assert len(data.split("train")) + len(data.split("val")) == 90


def test_a_small_seed_set_then_the_rest_of_the_budget_in_even_rounds():
    assert JacobianAugmentation(rounds=6).round_sizes(3000) == [150] + [570] * 5
    assert JacobianAugmentation(rounds=3, seed_fraction=0.3334).round_sizes(90) == [30, 30, 30]
    with pytest.raises(ConfigError, match=r"seed_fraction must be in \(0, 1\]"):
        JacobianAugmentation(seed_fraction=0)
