"""Knockoff's adaptive bandit: on a pool of two clearly separated clusters where one yields the
higher reward, the policy concentrates on that cluster; an exhausted arm is masked and every
available arm keeps the exploration floor; a resumed attack continues exactly."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from knockoff_lab.attacks import KnockoffAdaptive, Seen

HALF = 50  # images [0, 50) form cluster A (dark), [50, 100) cluster B (bright)


def pool(half: int = HALF) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.full((3, 4, 4), -1.0 if i < half else 1.0)
        + 0.05 * torch.randn(3, 4, 4, generator=gen)
        for i in range(2 * half)
    ]


def surrogate() -> nn.Module:
    """Sure of class 0 everywhere: an answer of class 1 is a high loss, of class 0 a low one."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    nn.init.zeros_(net[1].weight)
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))
    return net.eval()


def api(indices: np.ndarray, reward: str) -> torch.Tensor:
    """Cluster A earns the higher reward: for certainty a one-hot answer against B's uniform
    one; for loss (and all) a class-1 answer, which the surrogate gets wrong, against class 0."""
    in_a = torch.from_numpy(indices < HALF)
    if reward == "certainty":
        sure, unsure = torch.eye(5)[1], torch.full((5,), 0.2)
    else:
        sure, unsure = torch.eye(5)[1], torch.eye(5)[0]
    return torch.where(in_a[:, None], sure, unsure)


def seen(images, indices, answers, r: int) -> Seen:
    return Seen(images, indices, None, answers, surrogate(), torch.device("cpu"), r, seed=0)


def run(strategy: KnockoffAdaptive, reward: str, rounds: int, count: int, start=None, images=None):
    images = images or pool()
    indices, answers, picked = start or (np.empty(0, np.int64), torch.empty(0, 5), [])
    for r in range(len(picked), rounds):
        queries = strategy.propose(seen(images, indices, answers, r), count).indices
        picked.append(queries)
        indices = np.concatenate([indices, queries])
        answers = torch.cat([answers, api(queries, reward)])
    return indices, answers, picked


@pytest.mark.parametrize("reward", ["certainty", "loss", "all"])
def test_bandit_concentrates_on_the_rewarding_cluster(reward):
    strategy = KnockoffAdaptive(arms=2, reward=reward, lr=2.0, explore=0.1)
    _, _, picked = run(strategy, reward, rounds=10, count=5)
    share_a = [float((p < HALF).mean()) for p in picked]
    assert np.mean(share_a[-3:]) >= 0.8, share_a  # late rounds mostly ask cluster A
    arm_a = int(strategy.clusters(seen(pool(), np.empty(0), torch.empty(0, 5), 0))[0])
    assert strategy.h[arm_a] > strategy.h[1 - arm_a]
    assert strategy.counts[arm_a] > strategy.counts[1 - arm_a]
    assert sum(strategy.counts) == 50
    assert strategy.entropy[-1] < strategy.entropy[0] == pytest.approx(np.log(2))


def test_two_levels_a_node_learns_from_every_arm_under_it():
    """Four clusters (two dark, two bright) under two nodes; every dark image earns the higher
    reward: the dark node's preference rises, late rounds ask the dark node, and each arm's
    probability is its node's times its own within the node."""
    gen = torch.Generator().manual_seed(0)
    levels = (-2.0, -1.2, 1.2, 2.0)  # 25 images each: arms of shades, nodes dark / bright
    images = [
        torch.full((3, 4, 4), levels[i // 25]) + 0.05 * torch.randn(3, 4, 4, generator=gen)
        for i in range(100)
    ]
    strategy = KnockoffAdaptive(arms=4, groups=2, reward="certainty", lr=2.0, explore=0.1)
    indices, answers, picked = np.empty(0, np.int64), torch.empty(0, 5), []
    for r in range(8):
        queries = strategy.propose(seen(images, indices, answers, r), 5).indices
        picked.append(queries)
        indices = np.concatenate([indices, queries])
        sure = torch.from_numpy(queries < HALF)[:, None]  # the dark half earns the reward
        answers = torch.cat([answers, torch.where(sure, torch.eye(5)[1], torch.full((5,), 0.2))])
    arm = strategy.clusters(seen(images, np.empty(0), torch.empty(0, 5), 0))
    node_of_image = strategy.nodes[arm]
    assert len(set(node_of_image[:HALF])) == len(set(node_of_image[HALF:])) == 1  # two nodes
    dark = int(node_of_image[0])
    assert dark != node_of_image[-1] and strategy.h_nodes[dark] > strategy.h_nodes[1 - dark]
    assert np.mean([float((p < HALF).mean()) for p in picked[-3:]]) >= 0.8
    every = np.ones(4, bool)
    node_pi, arm_pi = strategy.levels(every)
    expected = 0.9 * node_pi[strategy.nodes] * arm_pi + 0.1 / 4
    assert np.allclose(strategy.policy(every), expected / expected.sum())
    assert all(np.isclose(arm_pi[strategy.nodes == g].sum(), 1) for g in (0, 1))


def test_one_step_per_query_with_the_reward_in_the_baseline_by_hand():
    """Sutton & Barto's gradient bandit, two arms, lr 1: the first reward is its own baseline
    (no step); the second, 0 after a mean of 1, has advantage -0.5 and moves H by
    -0.5 * (1[b = 1] - 0.5): to [0.25, -0.25]."""
    strategy = KnockoffAdaptive(arms=2, lr=1.0)
    every = np.ones(2, bool)
    strategy.step(0, 1.0, every)
    assert strategy.h == [0.0, 0.0] and strategy.baseline == 1.0
    strategy.step(1, 0.0, every)
    assert np.allclose(strategy.h, [0.25, -0.25]) and strategy.baseline == 0.5


def test_a_round_of_many_queries_moves_the_policy_at_the_default_rate():
    """Rounds of 40 queries at the default lr (0.5): the policy puts most of the third round on
    the arm that earns more (one step per query, as the paper; a step averaged over the round
    left the policy near uniform)."""
    strategy = KnockoffAdaptive(arms=2, reward="certainty")
    _, _, picked = run(strategy, "certainty", rounds=3, count=40, images=pool(150))
    assert float((picked[-1] < 150).mean()) >= 0.75, [float((p < 150).mean()) for p in picked]


def test_an_arm_unasked_in_round_0_with_the_best_reward_still_rises():
    """Three arms, a first round too small to ask the third: round 0's queries earn the same, so
    with the baseline holding their own rewards the policy does not move (a baseline of 0 would
    push the unasked arm down); since that arm earns the most, its probability then rises."""
    images = [torch.full((3, 4, 4), float(level)) for level in (-2, 0, 2) for _ in range(60)]
    strategy = KnockoffAdaptive(arms=3, reward="certainty", lr=0.5, explore=0.1)
    labels = strategy.clusters(seen(images, np.empty(0), torch.empty(0, 5), 0))
    indices, answers = np.empty(0, np.int64), torch.empty(0, 5)
    first = strategy.policy(np.ones(3, bool))
    for r in range(6):
        queries = strategy.propose(seen(images, indices, answers, r), 2 if r == 0 else 20).indices
        if r == 0:  # the arm round 0 did not ask earns the most: certain answers, others half
            (best,) = sorted(set(range(3)) - set(labels[queries].tolist()))[:1]
        if r == 1:
            assert np.allclose(strategy.policy(np.ones(3, bool)), first)
        indices = np.concatenate([indices, queries])
        sure = torch.from_numpy(labels[queries] == best)[:, None]
        half = torch.tensor([0.6, 0.4, 0.0, 0.0, 0.0])
        answers = torch.cat([answers, torch.where(sure, torch.eye(5)[1], half)])
    assert strategy.policy(np.ones(3, bool))[best] > first[best]


def test_the_loss_reward_is_the_surrogates_loss_when_the_query_was_picked():
    """A surrogate that learns every answer before the next round (as training does) would
    give every query a loss near 0: the reward is the loss of the surrogate at pick time."""
    strategy = KnockoffAdaptive(arms=2, reward="loss", lr=1.0)
    images = pool()
    queries = strategy.propose(seen(images, np.empty(0, np.int64), torch.empty(0, 5), 0), 10)
    answers = api(queries.indices, "loss")
    expected = -(
        answers * surrogate()(torch.stack([images[i] for i in queries.indices])).log_softmax(-1)
    ).sum(-1)
    learnt = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))  # another surrogate at reward time
    later = Seen(images, queries.indices, None, answers, learnt, torch.device("cpu"), 1, seed=0)
    log_probs = torch.tensor(strategy.last_log_probs)
    rewards = strategy.rewards(later, np.arange(10), log_probs)
    assert np.allclose(rewards, expected.detach().numpy(), atol=1e-5)


def test_diversity_is_against_the_last_window_answers():
    strategy = KnockoffAdaptive(arms=2, reward="diversity", window=2)
    answers = torch.eye(5)[[0, 0, 0, 1, 1, 1]]
    reward = strategy.diversity(
        Seen(pool(), np.arange(6), None, answers, None, torch.device("cpu"), 1, seed=0),
        np.arange(6),
    )
    # row 3 (class 1) after two class-0 answers: 1; row 5 after two class-1 answers: 0
    assert reward.tolist() == [0.0, 0.0, 0.0, 1.0, 0.5, 0.0]


def test_no_query_twice_exhausted_arm_masked_and_exploration_floor():
    strategy = KnockoffAdaptive(arms=2, reward="certainty", lr=5.0, explore=0.2)
    indices, _, picked = run(strategy, "certainty", rounds=4, count=20)
    assert len(set(indices.tolist())) == 80  # without replacement, across and within rounds
    assert np.isin(np.arange(HALF), indices).all()  # A is exhausted (50 images of 80 asked)
    strategy.h = [100.0, 0.0]
    pi = strategy.policy(np.array([True, True]))
    assert pi[1] == pytest.approx(0.1)  # the floor: explore / K
    assert np.array_equal(strategy.policy(np.array([False, True])), [0.0, 1.0])


def test_state_dict_round_trips_and_a_resumed_attack_continues():
    whole = KnockoffAdaptive(arms=2, reward="all", lr=2.0)
    full = run(whole, "all", rounds=6, count=5)
    first = KnockoffAdaptive(arms=2, reward="all", lr=2.0)
    indices, answers, picked = run(first, "all", rounds=3, count=5)
    resumed = KnockoffAdaptive(arms=2, reward="all", lr=2.0)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.state_dict() == first.state_dict()
    rest = run(resumed, "all", rounds=6, count=5, start=(indices, answers, picked))
    assert np.array_equal(rest[0], full[0])
    assert resumed.state_dict() == whole.state_dict()
    assert len(whole.entropy) == 6 and "h" not in whole.describe()  # policy is state only


def test_a_run_logs_the_policy_entropy_and_arm_counts_of_every_round(victim_ckpt, tmp_path):
    """configs/attacks/knockoff_adaptive.yaml through the CLI, 3 rounds of 50 queries: one
    logged row per round, entropy at most log K and falling from uniform, arm counts summing
    to the queries asked so far."""
    import csv

    from knockoff_lab.pipeline.cli import cli_main
    from tests.conftest import CONFIGS

    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
            "--config",
            str(CONFIGS / "attacks/knockoff_adaptive.yaml"),
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.pool.init_args.size",
            "400",
            "--data.init_args.budget",
            "150",
            "--data.init_args.attack.init_args.rounds",
            "3",
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--test_after_fit",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
        ]
    )
    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("attack/policy_entropy")]
    assert [float(r["attack/round"]) for r in rows] == [0, 1, 2]
    entropy = [float(r["attack/policy_entropy"]) for r in rows]
    assert entropy[0] == pytest.approx(np.log(10))  # round 0: the uniform policy over 10 arms
    assert all(e <= np.log(10) + 1e-9 for e in entropy) and entropy[-1] < entropy[0]
    arms = [[float(r[f"attack/arm_queries/{a}"]) for a in range(10)] for r in rows]
    assert [sum(a) for a in arms] == [50, 100, 150]
