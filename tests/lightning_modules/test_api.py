"""The prediction API: granularities on hand-computed cases, counting, budget, bad options."""

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from lightning_modules.api import PredictionAPI, degrade

P = torch.tensor([[0.52, 0.31, 0.12, 0.05], [0.05, 0.10, 0.25, 0.60]])


def test_probs_are_the_posterior():
    assert torch.equal(degrade(P, "probs"), P)


def test_top_k_keeps_the_k_highest_and_zeroes_the_rest():
    expected = torch.tensor([[0.52, 0.31, 0.0, 0.0], [0.0, 0.0, 0.25, 0.60]])
    assert torch.equal(degrade(P, "top_k", top_k=2), expected)


def test_rounded_to_decimals():
    expected = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    assert torch.allclose(degrade(P, "rounded", decimals=1), expected)
    assert torch.equal(
        degrade(P, "rounded", decimals=0), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]])
    )


def test_label_is_one_hot_of_the_argmax():
    assert torch.equal(degrade(P, "label"), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))


class Recorder(nn.Module):
    """A 4-class 'victim' that records its mode and whether autograd was on."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        return self.linear(x.flatten(1)[:, :3])


def test_api_counts_batches_runs_eval_inference_and_enforces_budget():
    victim = Recorder().train()
    api = PredictionAPI(victim, num_classes=4, granularity="label", budget=10, batch_size=4)
    answers = api(torch.randn(6, 3))
    assert answers.shape == (6, 4) and torch.equal(answers.sum(-1), torch.ones(6))
    assert api.queries_answered == 6
    assert victim.calls == [(False, True), (False, True)]  # two batches, eval, inference mode
    api(torch.randn(4, 3))
    with pytest.raises(ConfigError, match="budget exhausted: 10 answered, 1 more asked"):
        api(torch.randn(1, 3))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"granularity": "top_k", "top_k": 0}, "top_k must be in 1..4"),
        ({"granularity": "top_k", "top_k": 5}, "top_k must be in 1..4"),
        ({"granularity": "rounded", "decimals": -1}, "decimals must be an integer >= 0"),
        ({"granularity": "logits"}, "granularity must be one of probs, top_k, rounded, label"),
        ({"budget": 0}, "budget must be >= 1"),
    ],
)
def test_bad_options_fail_before_any_query(options, message):
    victim = Recorder()
    with pytest.raises(ConfigError, match=message):
        PredictionAPI(victim, num_classes=4, **options)
    assert victim.calls == []


def test_from_checkpoint(victim_ckpt, tmp_path):
    api = PredictionAPI.from_checkpoint(victim_ckpt)
    assert api.num_classes == 10
    assert torch.allclose(api(torch.zeros(2, 3, 32, 32)).sum(-1), torch.ones(2))
    with pytest.raises(ConfigError, match="victim checkpoint .*none.ckpt does not exist"):
        PredictionAPI.from_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(victim_ckpt.read_bytes()[:1000])
    with pytest.raises(
        ConfigError, match="bad.ckpt is not a readable checkpoint: PytorchStreamReader"
    ):
        PredictionAPI.from_checkpoint(tmp_path / "bad.ckpt")
