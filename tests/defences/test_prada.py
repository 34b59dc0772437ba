"""PRADA: a client asking natural images (the digits) is not flagged; one asking tiny
perturbations of a few seeds (synthetic, Jacobian-augmentation-like queries) is, within a few
hundred queries, and from then on; each client has its own history, kept in the API's books;
the flags do not depend on how the queries are split into batches or API calls."""

import pytest
import torch
from torch import nn

from datamodules.digits import digits_images
from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import PRADA
from tests.conftest import CONFIGS


class NearestMean(nn.Module):
    """A digits victim in an instant: the class of the nearest class-mean image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        self.means = torch.stack([images[labels == c].flatten(1).mean(0) for c in range(10)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.flatten(1), self.means)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, NearestMean]:
    images, labels = digits_images(32)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], NearestMean(images, labels)


def synthetic(seeds: torch.Tensor, count: int, step: float = 0.1) -> torch.Tensor:
    """Papernot-style augmentation: every round doubles the set by x + step * sign(noise)."""
    g, queries = torch.Generator().manual_seed(1), seeds
    while len(queries) < count:
        queries = torch.cat(
            [queries, queries + step * torch.randn(queries.shape, generator=g).sign()]
        )
    return queries[:count]


def api(victim: nn.Module, batch_size: int = 256, **options) -> PredictionAPI:
    return PredictionAPI.around(victim, 10, defences=[PRADA(**options)], batch_size=batch_size)


def test_natural_queries_pass_synthetic_ones_are_caught_per_client(digits):
    images, victim = digits
    door = api(victim)
    assert not door.answer(images[:700], "benign").isnan().any()
    attack = door.answer(synthetic(images[1000:1010], 600), "attacker")
    caught = attack.isnan().any(-1)
    first = int(caught.float().argmax())
    assert 100 <= first < 300 and caught[first:].all() and not caught[:first].any()
    record = door.record("attacker")
    assert record.flagged == record.refused == 600 - first
    assert not door.answer(images[700:1000], "benign").isnan().any()  # unaffected by the attack
    assert door.record("benign").flagged == 0
    assert door.answer(images[:5], "attacker").isnan().all()  # once caught, always refused


def test_the_flags_do_not_depend_on_batch_splitting(digits):
    images, victim = digits
    stream = torch.cat([images[:150], synthetic(images[1000:1005], 250)])
    whole = api(victim).answer(stream, "c").isnan().any(-1)
    assert whole.any() and not whole[:150].any()
    small = api(victim, batch_size=7)
    calls = [small.answer(part, "c") for part in stream.split([1, 40, 99, 13, 97, 150])]
    assert torch.equal(torch.cat(calls).isnan().any(-1), whole)


def test_flag_only_answers_and_the_state_survives_a_new_api(digits, tmp_path):
    images, victim = digits
    ledger = str(tmp_path / "ledger.sqlite")
    first = PredictionAPI.around(victim, 10, defences=[PRADA(on_flag="flag")], ledger=ledger)
    assert not first.answer(synthetic(images[1000:1010], 300), "c").isnan().any()
    flagged = first.record("c").flagged
    assert flagged > 0 and first.record("c").refused == 0
    again = PredictionAPI.around(victim, 10, defences=[PRADA(on_flag="flag")], ledger=ledger)
    again.answer(images[:10], "c")  # natural, but this client was caught in another process
    assert again.record("c").flagged == flagged + 10


@pytest.mark.parametrize(
    "options, message",
    [
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"min_queries": 2}, "min_queries must be"),
        ({"on_flag": "ignore"}, "on_flag must be refuse or flag"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        PRADA(**options).check(10)


def attack_through_prada(victim_ckpt, *overrides: str):
    """The embedded Knockoff config behind PRADA: 600 queries, 3 rounds."""
    from knockoff_lab.pipeline.cli import cli_main

    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
            "--config",
            str(CONFIGS / "defences/prada.yaml"),
            *overrides,
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.budget",
            "600",
            "--data.init_args.epochs_per_round",
            "1",
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "0",
        ]
    )
    data = cli.datamodule
    return [data.api.record(client) for client in data.clients]


JBDA = (
    "--config",
    str(CONFIGS / "attacks/jbda.yaml"),
    "--data.init_args.attack.init_args.rounds",
    "3",
)


def test_on_the_embedded_default_prada_catches_jbda_not_knockoff_nor_a_sybil_split(victim_ckpt):
    """The paper's claim, measured: PRADA flags Jacobian augmentation (a 150-image seed set and
    its near-copies) within a few hundred queries, not Knockoff's natural pool queries; split
    over 6 accounts of 100 queries, each under min_queries, the same JBDA is never tested."""
    (jbda,) = attack_through_prada(victim_ckpt, *JBDA)
    assert jbda.first_flagged is not None and 100 < jbda.first_flagged < 400
    assert jbda.flagged == 600 - jbda.first_flagged + 1  # flagged from then on
    (knockoff,) = attack_through_prada(victim_ckpt, "--data.init_args.attack.init_args.rounds", "3")
    assert knockoff.asked == 600 and knockoff.flagged == 0
    sybils = attack_through_prada(victim_ckpt, *JBDA, "--data.init_args.sybils", "6")
    assert [r.asked for r in sybils] == [100] * 6 and sum(r.flagged for r in sybils) == 0
