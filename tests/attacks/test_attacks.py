"""Every registered query strategy keeps the transfer set's contract; random sampling is one
seeded order; the toy adaptive strategy (tests/toy_strategy.py) runs in rounds from its YAML,
asks no query twice, and a rerun asks nothing."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import tests.toy_strategy  # noqa: F401  (a user's strategy: registered when imported)
from knockoff_lab.attacks import ATTACKS, QueryStrategy, RandomSampling, Seen, list_attacks
from knockoff_lab.core.errors import ConfigError
from tests.conftest import CONFIGS
from tests.toy_strategy import LeastConfident

POOL = [torch.full((3, 4, 4), i / 40) + 0.1 * torch.randn(3, 4, 4) for i in range(40)]


def surrogate() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()


def seen(indices, r: int, seed: int = 0, images: torch.Tensor | None = None) -> Seen:
    answers = torch.full((len(indices), 5), 0.2)
    return Seen(
        POOL,
        np.asarray(indices, np.int64),
        images,
        answers,
        surrogate(),
        torch.device("cpu"),
        r,
        seed,
    )


def test_registry_lists_random_sampling_and_a_users_own():
    assert {"LeastConfident", "RandomSampling"} <= set(list_attacks())


@pytest.mark.parametrize("name", list_attacks())
def test_strategy_contract(name):
    """Rounds of the promised sizes summing to the budget (a step-round attack: as many as it
    plans), fresh in-pool queries or images of the pool's shape, and a state to resume from
    (JSON-able, or tensors, as the transfer set stores it)."""
    strategy: QueryStrategy = ATTACKS[name]()  # every strategy has defaults that run
    budget = 24 if strategy.round_unit == "epoch" else 2000
    sizes = strategy.round_sizes(budget)
    assert sum(sizes) == budget and (strategy.round_unit == "step" or len(sizes) == strategy.rounds)
    asked, images = np.empty(0, np.int64), None
    for r, size in enumerate(sizes[:8]):
        queries = strategy.propose(seen(asked, r, images=images), size)
        state = strategy.state_dict()
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        again = ATTACKS[name]()
        again.round_sizes(budget)
        again.load_state_dict(
            {**json.loads(json.dumps({**state, **dict.fromkeys(tensors)})), **tensors}
        )
        assert len(queries) == size
        if queries.images is not None:
            assert strategy.synthetic and queries.images.shape[1:] == POOL[0].shape
            images = queries.images if images is None else torch.cat([images, queries.images])
            asked = np.concatenate([asked, np.full(size, -1)])
        else:
            assert len(set(queries.indices.tolist())) == size
            assert ((0 <= queries.indices) & (queries.indices < len(POOL))).all()
            assert not np.isin(queries.indices, asked).any()
            asked = np.concatenate([asked, queries.indices])
    assert name in strategy.describe()


def test_random_sampling_is_one_seeded_order_any_budget_a_prefix():
    order = np.random.default_rng(3).permutation(40)
    assert np.array_equal(RandomSampling().propose(seen([], 0, seed=3), 10).indices, order[:10])
    rest = RandomSampling().propose(seen(order[:10], 0, seed=3), 30).indices
    assert np.array_equal(rest, order[10:])
    assert not np.array_equal(RandomSampling().propose(seen([], 0, seed=4), 10).indices, order[:10])


def test_least_confident_asks_what_the_surrogate_is_least_sure_of():
    asked = np.arange(0, 40, 2)
    chosen = LeastConfident().propose(seen(asked, 1), 5).indices
    unasked = np.arange(1, 40, 2)
    with torch.no_grad():
        confidence = surrogate()(torch.stack([POOL[i] for i in unasked])).softmax(-1).max(-1).values
    assert np.array_equal(chosen, unasked[confidence.argsort()[:5].numpy()])


def test_bad_rounds():
    with pytest.raises(ConfigError, match="attack rounds must be >= 1, got 0"):
        LeastConfident(rounds=0)
    with pytest.raises(ConfigError, match="data.budget 2 is smaller than the attack's 3 rounds"):
        LeastConfident(rounds=3).round_sizes(2)


def test_toy_strategy_runs_in_rounds_from_yaml(victim_ckpt, tmp_path):
    from pathlib import Path

    from knockoff_lab.pipeline.cli import cli_main

    args = [
        "fit",
        "--config",
        str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
        "--config",
        str(Path(tests.toy_strategy.__file__).with_suffix(".yaml")),
        "--data.init_args.api.init_args.victim",
        str(victim_ckpt),
        "--data.init_args.budget",
        "150",
        "--data.init_args.pool.init_args.size",
        "300",
        "--trainer.max_epochs",
        "6",
        "--model.init_args.lr_scheduler.init_args.T_max",
        "6",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "2",
    ]
    cli = cli_main(args)
    data = cli.datamodule
    assert data.rounds_done == 3 and data.sizes == [50, 50, 50]
    rounds = sorted(data.folder.glob("round-*"))
    assert [p.name for p in rounds] == ["round-000", "round-001", "round-002"]
    asked = np.concatenate([np.load(p / "queries.npy") for p in rounds])
    assert len(asked) == len(set(asked.tolist())) == 150  # no query asked twice
    random_order = np.random.default_rng(0).permutation(300)
    assert np.array_equal(asked[:50], random_order[:50])
    assert not np.array_equal(asked[50:100], random_order[50:100])  # round 1 is adaptive
    assert len(data.split("train")) + len(data.split("val")) == 150  # trained on every round
    record = data.api.record(data.client)
    assert (record.asked, record.answered) == (150, 150)  # the API's books: exact budget
    answers = data.answers.clone()
    rerun = cli_main(args).datamodule  # everything from the attacker's cache: nothing asked
    assert data.api.record(data.client).asked == 150 == rerun.api.record(rerun.client).asked
    assert torch.equal(rerun.answers, answers)


def test_a_strategy_whose_rounds_are_training_steps_runs_from_yaml(victim_ckpt, monkeypatch):
    """Each round is one optimiser step on exactly the queries asked for it, asked after the
    previous step (so each round sees a surrogate one step further on), and the API is asked
    exactly the budget, the last round the remainder."""
    from pathlib import Path

    import tests.toy_step_strategy
    from knockoff_lab.pipeline.cli import cli_main
    from lightning_modules import Surrogate

    trained_on = []
    step = Surrogate.training_step
    monkeypatch.setattr(
        Surrogate,
        "training_step",
        lambda self, batch, i: (
            trained_on.append(batch[0].detach().cpu().clone()),
            step(self, batch, i),
        )[1],
    )
    args = [
        "fit",
        "--config",
        str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
        "--config",
        str(Path(tests.toy_step_strategy.__file__).with_suffix(".yaml")),
        "--data.init_args.api.init_args.victim",
        str(victim_ckpt),
        "--data.init_args.budget",
        "100",
        "--trainer.limit_val_batches",
        "1",
        "--test_after_fit",
        "false",
    ]
    cli = cli_main(args)
    data = cli.datamodule
    assert data.sizes == [16] * 6 + [4]
    assert cli.trainer.global_step == 7 == data.rounds_done == data.steps_served
    record = data.api.record(data.client)
    assert (record.asked, record.answered) == (100, 100)  # the books: the budget, exactly
    assert [len(x) for x in trained_on] == data.sizes  # one step per round, all of it
    starts = np.cumsum([0, *data.sizes])
    for r, images in enumerate(trained_on):  # step r trained on round r's own queries
        assert torch.equal(images, data.images[starts[r] : starts[r + 1]])
    assert len(set(data.attack._seen_surrogates)) == 7  # each round saw a newer surrogate
